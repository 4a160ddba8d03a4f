# Exercise 1 of 13: attention. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/01_self_attention.ipynb. Needs rope (exercises/rope.py): finish it first.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise attention` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: scaled dot-product attention and multi-head attention (lectures 01 and 02).

Conventions used throughout the course:
- Masks are boolean and ``True`` means "may attend".
- Scores are scaled by ``1 / sqrt(d_k)`` unless a ``scale`` is given.
- Query ``i`` of ``n_q`` queries sits at absolute position ``n_k - n_q + i``, so the same
  causal mask serves a full forward pass (``n_q == n_k``) and decoding with a KV cache
  (``n_q < n_k``).
- Grouped-query attention: query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: softmax and attention of float64 inputs run in float64 (no .float() inside), half inputs may
upcast to float32 internally and come back in their dtype.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim``.

    softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m),   m = max_j x_j

    Subtracting the row maximum ``m`` changes nothing mathematically but keeps ``exp``
    from overflowing (``exp(1000.)`` is ``inf`` in float32).

    x: any shape; the result has the same shape, dtype and device.
    A row that is entirely ``-inf`` (every key masked) must give all zeros, never NaN.
    Do not call ``torch.softmax``, ``Tensor.softmax`` or ``F.softmax``.

    Hint: for an all ``-inf`` row the maximum is ``-inf`` and ``-inf - (-inf)`` is NaN;
    replace such a maximum by 0 first, and divide by a sum that is never 0.
    """
    raise NotImplementedError("softmax: write this part (see the docstring)")


def causal_mask(n_q: int, n_k: int | None = None, *, device=None) -> torch.Tensor:
    """Boolean causal mask of shape ``(n_q, n_k)``; ``True`` means "may attend".

    ``n_k`` defaults to ``n_q``. Query ``i`` sits at absolute position ``n_k - n_q + i``
    and may attend to every key at a position ``<=`` its own: a token never sees later
    tokens. With ``n_q == n_k`` this is the lower triangle including the diagonal;
    with ``n_q < n_k`` (decoding with a cache) the last query sees every key.

    Example, n_q=2, n_k=4:   [[T, T, T, F],
                              [T, T, T, T]]
    Hint: ``torch.tril`` has a ``diagonal`` argument; or compare two ``arange``s.
    """
    raise NotImplementedError("causal_mask: write this part (see the docstring)")


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention(Q, K, V) = softmax(Q K^T * scale + masking) V.

    q: (..., n_q, d_k)   k: (..., n_k, d_k)   v: (..., n_k, d_v)
    mask: bool, broadcastable to (..., n_q, n_k), True = may attend (for example a
          padding mask of shape (b, 1, 1, n_k)).
    is_causal: also apply ``causal_mask(n_q, n_k)``; combined with ``mask`` by AND.
    scale: defaults to 1 / sqrt(d_k).
    Returns (..., n_q, d_v) in q's dtype. A query row whose keys are all masked
    returns zeros, never NaN.

    Hint: set disallowed scores to -inf before the softmax (``masked_fill``) and use
    your own ``softmax`` from this file.
    """
    raise NotImplementedError("scaled_dot_product_attention: write this part (see the docstring)")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each key/value head ``n_rep`` times for grouped-query attention.

    x: (b, n_kv, s, d) -> (b, n_kv * n_rep, s, d), where output head ``h`` is input head
    ``h // n_rep`` (heads are repeated in place, [k0, k0, k1, k1], not tiled
    [k0, k1, k0, k1]).
    Hint: ``torch.repeat_interleave`` or ``expand`` + ``reshape``.
    """
    raise NotImplementedError("repeat_kv: write this part (see the docstring)")


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional grouped-query heads, RoPE and a KV cache.

    n_heads query heads of size head_dim = d_model // n_heads; n_kv_heads key/value heads
    (None -> n_heads: MHA; 1: MQA; a divisor of n_heads: GQA).

    Submodules (names are part of the API: weights are loaded by name):
        q_proj: Linear(d_model, n_heads * head_dim)
        k_proj: Linear(d_model, n_kv_heads * head_dim)
        v_proj: Linear(d_model, n_kv_heads * head_dim)
        o_proj: Linear(n_heads * head_dim, d_model)
    each with ``bias=bias``. ``rope_theta=None`` means no rotary embedding.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 bias: bool = False, rope_theta: float | None = None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // n_heads
        self.rope_theta = rope_theta
        raise NotImplementedError("MultiHeadAttention.__init__: write this part (see the docstring)")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, is_causal: bool = False,
                positions: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """x: (b, n_q, d_model) -> (b, n_q, d_model).

        context: (b, n_k, d_model) for cross-attention (keys and values come from it,
            and no RoPE is applied); None for self-attention.
        mask: bool, broadcastable to (b, n_heads, n_q, n_k), True = may attend.
        is_causal: causal self-attention (see ``causal_mask``).
        positions: (n_q,) or (b, n_q) absolute positions for RoPE; default
            ``arange(n_q)`` offset by the cache length.
        cache: a ``LayerKVCache`` (exercise kv_cache): the new keys/values (after RoPE)
            are appended with ``cache.update(k, v)`` and attention runs over all of them.

        Steps: project; split heads (b, s, h*hd) -> (b, s, h, hd) -> (b, h, s, hd);
        RoPE on q and k; cache; repeat_kv; attention; merge heads back
        (b, h, n_q, hd) -> (b, n_q, h*hd); o_proj.
        """
        raise NotImplementedError("MultiHeadAttention.forward: write this part (see the docstring)")
