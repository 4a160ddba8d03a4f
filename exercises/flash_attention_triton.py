# Exercise 10 of 13: flash_attention_triton. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/06_flash_attention.ipynb. Needs no other exercise.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise flash_attention_triton` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: FlashAttention-2 as Triton kernels, forward and backward (lecture 06).

Forward: one program computes a block of BLOCK_M query rows of one (batch, head): it loads
its queries once, walks over the keys and values in blocks of BLOCK_N with the online
softmax of flash_attention.py, and writes its rows of the output and their logsumexp
lse = m + log(l), which is all the backward needs to recompute the probabilities.

Backward (FlashAttention-2), three kernels, none of which holds an n_q x n_k matrix:
  1. preprocess, by query block:   D = rowsum(dO * O)
  2. dK and dV, by key block: each program keeps its K_j, V_j and walks over the query
     blocks that may see them: P = exp(S - lse), dV_j += P^T dO_i, dP = dO_i V_j^T,
     dS = P * (dP - D_i), dK_j += dS^T Q_i * scale
  3. dQ, by query block, over the key blocks it may see: dQ_i += dS K_j * scale
Splitting dK/dV from dQ lets every program own the rows it writes: no atomics.

On a machine without a GPU the kernels run in Triton's interpreter (set TRITON_INTERPRET=1
before importing triton); the grader runs them that way at small sizes, in float32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _flash_forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, n_q, n_k, scale,
                          stride_qh, stride_qm, stride_kh, stride_kn, stride_vh, stride_vn,
                          stride_oh, stride_om, stride_lh,
                          IS_CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid: (cdiv(n_q, BLOCK_M), batch * heads). Rows are contiguous in the last dim.
    Writes o (BLOCK_M rows) and lse = m + log(l) in float32 (-inf for a row with no key)."""
    raise NotImplementedError("_flash_forward_kernel: write this part (see the docstring)")


@triton.jit
def _flash_backward_preprocess(o_ptr, do_ptr, delta_ptr, n_q, stride_oh, stride_om, stride_dh, stride_dm,
                               stride_deltah, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """Grid: (cdiv(n_q, BLOCK_M), batch * heads). delta = rowsum(dO * O) in float32."""
    raise NotImplementedError("_flash_backward_preprocess: write this part (see the docstring)")


@triton.jit
def _flash_backward_dkdv(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, n_q, n_k, scale,
                         stride_qh, stride_qm, stride_kh, stride_kn, stride_vh, stride_vn,
                         stride_dh, stride_dm, stride_lh,
                         IS_CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid: (cdiv(n_k, BLOCK_N), batch * heads). dk and dv are laid out as k and v;
    do as q; lse and delta (batch * heads, n_q) float32."""
    raise NotImplementedError("_flash_backward_dkdv: write this part (see the docstring)")


@triton.jit
def _flash_backward_dq(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, n_q, n_k, scale,
                       stride_qh, stride_qm, stride_kh, stride_kn, stride_vh, stride_vn,
                       stride_dh, stride_dm, stride_lh,
                       IS_CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid: (cdiv(n_q, BLOCK_M), batch * heads). dq is laid out as q."""
    raise NotImplementedError("_flash_backward_dq: write this part (see the docstring)")


def _tiles(device: torch.device) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N). On a GPU 64 x 64 tiles keep tl.dot on the tensor cores and fit the
    backward's five tiles in registers at d <= 128; in the interpreter (CPU) 16 x 16, the
    smallest tl.dot tile, so the grader's small lengths still span several blocks."""
    return (64, 64) if device.type == "cuda" else (16, 16)


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (b, h, n, d); got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"expected q (b, h, n_q, d) and k, v (b, h, n_k, d) with one d; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    d = q.shape[3]
    if d < 16 or d & (d - 1):
        raise ValueError(f"head_dim must be a power of two >= 16 for tl.dot, got {d}")


def triton_flash_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                   is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """q: (b, h, n_q, d), k and v: (b, h, n_k, d) -> (o (b, h, n_q, d), lse (b, h, n_q) float32),
    both written by the kernel.

    Launch one program per (query block, batch * head); d must be a power of two >= 16
    (tl.dot's smallest tile). Causal masking follows causal_mask: query i at n_k - n_q + i.
    Hint: make q, k, v contiguous and view them as (b * h, n, d) before taking strides.
    """
    raise NotImplementedError("triton_flash_attention_forward: write this part (see the docstring)")


class TritonFlashAttention(torch.autograd.Function):
    """``TritonFlashAttention.apply(q, k, v, is_causal=False)``: the forward kernel, and a
    backward by the three kernels above. ``ctx`` saves only q, k, v, o and lse."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal=False):
        raise NotImplementedError("TritonFlashAttention.forward: write this part (see the docstring)")

    @staticmethod
    def backward(ctx, grad_o):
        """Returns (dq, dk, dv, None)."""
        raise NotImplementedError("TritonFlashAttention.backward: write this part (see the docstring)")


def triton_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """q: (b, h, n_q, d), k and v: (b, h, n_k, d) -> (b, h, n_q, d), computed by the kernel
    (differentiable: the backward runs the backward kernels)."""
    raise NotImplementedError("triton_flash_attention: write this part (see the docstring)")
