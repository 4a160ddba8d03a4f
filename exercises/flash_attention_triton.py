# Exercise file: replace each `raise NotImplementedError` with your code.
# Check your work: `pytest exercises/checks` (public) and `python3 course.py grade`.
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
    raise NotImplementedError("_flash_forward_kernel: write this part (see the docstring)")


def triton_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """q: (b, h, n_q, d), k and v: (b, h, n_k, d) -> (b, h, n_q, d), computed by the kernel.

    Launch one program per (query block, batch * head); d must be a power of two >= 16
    (tl.dot's smallest tile). Causal masking follows causal_mask: query i at n_k - n_q + i.
    Hint: make q, k, v contiguous and view them as (b * h, n, d) before taking strides.
    """
    raise NotImplementedError("triton_flash_attention: write this part (see the docstring)")
