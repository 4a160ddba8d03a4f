"""Known mistakes of the Triton FlashAttention exercise, computed by trusted code in the grader
(float64, from the definition): what each plausible wrong kernel writes for the same inputs,
with the sentence a student reads when their replayed value matches it. Each has a mutant in
tests/fixtures/mutants/flash_attention_triton.py."""
from __future__ import annotations

import math

import torch

LSE_NOT_WRITTEN = ("lse was not written by the forward kernel (the grader's replay left its buffer as it "
                   "gave it): tl.store lse = m + log(l) for every query row")
LSE_NO_LOG_L = "lse is missing the log(l) term: lse = m + log(l), not the running maximum m alone"
LSE_BASE_2 = ("lse is in base 2 (m and l from exp2): convert it to the natural logarithm, "
              "lse = (m2 + log2(l)) * ln(2), the units of the scores s = q k^T / sqrt(d)")
BWD_D_MISSING = "the backward kernels miss D = rowsum(dO * O): dS = P * (dP - D), not P * dP"
BWD_NO_SCALE = ("dq and dk miss the scale: S = Q K^T / sqrt(d), so dQ = dS K / sqrt(d) and "
                "dK = dS^T Q / sqrt(d)")
BWD_DK_DV_SWAPPED = "dk and dv are swapped: dV = P^T dO and dK = dS^T Q * scale (check which pointer each store uses)"
BWD_NO_CAUSAL = ("the backward ignores the causal mask: P is recomputed over every key, so future keys "
                 "receive gradient; mask S (or P) in the backward kernels as in the forward")
NOT_FROM_A_KERNEL = ("NaN everywhere: no replayed kernel wrote it, or it was computed from a value no kernel "
                     "wrote (o, lse, D): the grader gives every new buffer NaN before it replays your launches, "
                     "so each must be stored by a @triton.jit kernel, not computed on the host")


def scores(q, k, v, is_causal, masked=True):
    """The scaled scores in float64, -inf where causal masking forbids a key (if ``masked``)."""
    q, k = q.double(), k.double()
    n_q, n_k = q.shape[-2], k.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if is_causal and masked:
        future = torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q)
        s = s.masked_fill(future, float("-inf"))
    return s


def truth(q, k, v, is_causal):
    """Attention and its logsumexp in float64, from the definition."""
    s = scores(q, k, v, is_causal)
    lse = torch.logsumexp(s, dim=-1)
    return torch.exp(s - lse[..., None]) @ v.double(), lse


def backward(q, k, v, grad_o, is_causal, *, with_d=True, scale_grads=True, causal_in_backward=True):
    """(dq, dk, dv) in float64 from the FlashAttention-2 equations, each switch one mistake:
    P = exp(S - lse), dV = P^T dO, dP = dO V^T, dS = P (dP - D), dQ = dS K scale,
    dK = dS^T Q scale. With every switch on it equals autograd of attention."""
    o, lse = truth(q, k, v, is_causal)
    s = scores(q, k, v, is_causal, masked=causal_in_backward)
    p = torch.exp(s - lse[..., None])
    do = grad_o.double()
    dv = p.transpose(-1, -2) @ do
    dp = do @ v.double().transpose(-1, -2)
    delta = (do * o).sum(-1, keepdim=True) if with_d else 0.0
    ds = p * (dp - delta)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale_grads else 1.0
    return ds @ k.double() * scale, ds.transpose(-1, -2) @ q.double() * scale, dv


def lse_mistakes(q, k, v, is_causal):
    _, lse = truth(q, k, v, is_causal)
    yield LSE_NOT_WRITTEN, torch.full_like(lse, float("nan"))
    yield LSE_NOT_WRITTEN, torch.zeros_like(lse)  # the host made the buffer zero
    yield LSE_NO_LOG_L, scores(q, k, v, is_causal).amax(-1)
    yield LSE_BASE_2, lse / math.log(2)


def backward_mistakes(q, k, v, grad_o, is_causal, which):
    """``which``: 0 dq, 1 dk, 2 dv."""
    yield BWD_D_MISSING, backward(q, k, v, grad_o, is_causal, with_d=False)[which]
    yield BWD_NO_SCALE, backward(q, k, v, grad_o, is_causal, scale_grads=False)[which]
    if which:  # dk where dv belongs and the other way round
        yield BWD_DK_DV_SWAPPED, backward(q, k, v, grad_o, is_causal)[3 - which]
    if is_causal:
        yield BWD_NO_CAUSAL, backward(q, k, v, grad_o, is_causal, causal_in_backward=False)[which]
