"""Exercise: the FlashAttention forward pass as a Triton kernel (lecture 06).

One program computes a block of BLOCK_M query rows of one (batch, head): it loads its
queries once, walks over the keys and values in blocks of BLOCK_N with the online softmax
of flash_attention.py, and writes its rows of the output. On a machine without a GPU the
kernel runs in Triton's interpreter (set TRITON_INTERPRET=1 before importing triton); the
grader runs it that way at small sizes, in float32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _flash_forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, n_q, n_k, scale,
                          stride_qh, stride_qm, stride_kh, stride_kn, stride_vh, stride_vn,
                          stride_oh, stride_om,
                          IS_CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid: (cdiv(n_q, BLOCK_M), batch * heads). Rows are contiguous in the last dim."""
    ### BEGIN SOLUTION
    block_m = tl.program_id(0)
    head = tl.program_id(1)
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query rows of this program
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < n_q
    q = tl.load(q_ptr + head * stride_qh + rows[:, None] * stride_qm + dims[None, :],
                mask=row_ok[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    query_pos = rows + (n_k - n_q)
    end = n_k
    if IS_CAUSAL:  # skip key blocks after this block's last query
        end = tl.minimum(n_k, (block_m + 1) * BLOCK_M + (n_k - n_q))
    for start in range(0, end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < n_k
        k = tl.load(k_ptr + head * stride_kh + cols[:, None] * stride_kn + dims[None, :],
                    mask=col_ok[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
        v = tl.load(v_ptr + head * stride_vh + cols[:, None] * stride_vn + dims[None, :],
                    mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N)
        allowed = col_ok[None, :]
        if IS_CAUSAL:
            allowed = allowed & (cols[None, :] <= query_pos[:, None])
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        p = tl.exp(s - shift[:, None])
        alpha = tl.exp(m - shift)
        l = alpha * l + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v)
        m = m_new
    out = acc / tl.where(l == 0.0, 1.0, l)[:, None]  # rows with no allowed key stay 0
    tl.store(o_ptr + head * stride_oh + rows[:, None] * stride_om + dims[None, :], out, mask=row_ok[:, None])
    ### END SOLUTION


def triton_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """q: (b, h, n_q, d), k and v: (b, h, n_k, d) -> (b, h, n_q, d), computed by the kernel.

    Launch one program per (query block, batch * head); d must be a power of two >= 16
    (tl.dot's smallest tile). Causal masking follows causal_mask: query i at n_k - n_q + i.
    Hint: make q, k, v contiguous and view them as (b * h, n, d) before taking strides.
    """
    ### BEGIN SOLUTION
    b, h, n_q, d = q.shape
    n_k = k.shape[2]
    if d < 16 or d & (d - 1):
        raise ValueError(f"head_dim must be a power of two >= 16 for tl.dot, got {d}")
    q3, k3, v3 = (t.contiguous().view(b * h, t.shape[2], d) for t in (q, k, v))
    o3 = torch.empty_like(q3)
    block_m, block_n = 16, 16
    grid = (triton.cdiv(n_q, block_m), b * h)
    _flash_forward_kernel[grid](q3, k3, v3, o3, n_q, n_k, 1.0 / math.sqrt(d),
                                q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1),
                                v3.stride(0), v3.stride(1), o3.stride(0), o3.stride(1),
                                IS_CAUSAL=is_causal, HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n)
    return o3.view(b, h, n_q, d)
    ### END SOLUTION
