"""Known mistakes of exercises/flash_attention.py: flash_attention_forward and the FlashAttention
backward.
Each yields (the sentence a student reads, the wrong value for the same inputs)."""
from __future__ import annotations

import math

import torch

from . import causal_allowed, query_key_positions

FA_NO_RESCALE = ("the accumulator is not rescaled when the running maximum changes: "
                 "O = diag(exp(m_old - m_new)) O + P V_j")
FA_L_NO_RESCALE = "the running sum is not rescaled when the maximum changes: l = exp(m_old - m_new) l + rowsum(P)"
FA_LSE_NO_LOG_L = "lse is missing the log(l) term: lse = m + log(l)"
FA_LSE_BASE_2 = ("lse is in base 2 (m and l from exp2): convert it to the natural logarithm, "
                 "lse = (m2 + log2(l)) * ln(2), the units of the scores q k^T / sqrt(d)")
FA_DIAGONAL = ("the diagonal tile is masked wrongly: a query sees keys at positions <= its own "
               "(n_k - n_q + i), including itself")
FA_SCALE_TWICE = "the scale 1/sqrt(d) is applied twice"
FA_NO_SCALE = "the scores are not scaled by 1/sqrt(d)"
FA_D_MISSING = "the backward pass misses D = rowsum(dO * O): dS = P * (dP - D)"


def flash_reference(q, k, v, is_causal=False, block_q=64, block_k=64, rescale_acc=True, rescale_l=True,
                    log_l=True, diagonal="ok", scale_power=1):
    """A float64 tiled forward with the knobs that plausible mistakes turn; (o, lse)."""
    q, k, v = q.double(), k.double(), v.double()
    n_q, d = q.shape[-2:]
    n_k = k.shape[-2]
    scale = (1 / math.sqrt(d)) ** scale_power
    o = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float64)
    for i0 in range(0, n_q, block_q):
        i1 = min(i0 + block_q, n_q)
        m = torch.full(q[..., i0:i1, 0].shape, float("-inf"), dtype=torch.float64)
        l = torch.zeros_like(m)
        acc = torch.zeros(*m.shape, v.shape[-1], dtype=torch.float64)
        for j0 in range(0, n_k, block_k):
            j1 = min(j0 + block_k, n_k)
            s = q[..., i0:i1, :] @ k[..., j0:j1, :].transpose(-1, -2) * scale
            if is_causal:
                query_pos, key_pos = query_key_positions(n_q, n_k)
                query_pos, key_pos = query_pos[i0:i1], key_pos[:, j0:j1]
                allowed = key_pos < query_pos if diagonal == "strict" else key_pos <= query_pos
                s = s.masked_fill(~allowed, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            shift = m_new.clamp_min(-1e308)
            p = torch.exp(s - shift[..., None])
            alpha = torch.exp(m - shift)
            l = (alpha * l if rescale_l else l) + p.sum(-1)
            acc = (alpha[..., None] * acc if rescale_acc else acc) + p @ v[..., j0:j1, :]
            m = m_new
        o[..., i0:i1, :] = acc / l.clamp_min(1e-308)[..., None]
        lse[..., i0:i1] = m + torch.log(l) if log_l else m
    return o, lse


def flash_forward_mistakes(q, k, v, is_causal, block_q, block_k, which):
    """Wrong o (which=0) or lse (which=1) for the same tiles."""
    base = dict(is_causal=is_causal, block_q=block_q, block_k=block_k)
    yield FA_NO_RESCALE, flash_reference(q, k, v, **base, rescale_acc=False)[which]
    yield FA_L_NO_RESCALE, flash_reference(q, k, v, **base, rescale_l=False)[which]
    if which == 1:
        yield FA_LSE_NO_LOG_L, flash_reference(q, k, v, **base, log_l=False)[1]
        yield FA_LSE_BASE_2, flash_reference(q, k, v, **base)[1] / math.log(2)  # exp2 users: lse kept in base 2
    if is_causal:
        yield FA_DIAGONAL, flash_reference(q, k, v, **base, diagonal="strict")[which]
    yield FA_SCALE_TWICE, flash_reference(q, k, v, **base, scale_power=2)[which]
    yield FA_NO_SCALE, flash_reference(q, k, v, **base, scale_power=0)[which]


def flash_backward_mistakes(q, k, v, is_causal, grad_o, which):
    """Gradients (which: 0 dq, 1 dk, 2 dv) of the backward without the D term."""
    q, k, v, grad_o = q.double(), k.double(), v.double(), grad_o.double()
    n_q, d = q.shape[-2:]
    n_k = k.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if is_causal:
        s = s.masked_fill(~causal_allowed(n_q, n_k), float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1))
    dp = grad_o @ v.transpose(-1, -2)
    ds = p * dp  # the mistake: no "- D"
    grads = (ds @ k / math.sqrt(d), ds.transpose(-1, -2) @ q / math.sqrt(d), p.transpose(-1, -2) @ grad_o)
    if which < 2:
        yield FA_D_MISSING, grads[which]
