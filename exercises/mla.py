# Exercise 12 of 13: mla. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/07_kv_cache.ipynb. Needs rope (exercises/rope.py), layers
# (exercises/layers.py): finish them first.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise mla` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: Multi-head Latent Attention, MLA (DeepSeek-V2; lecture 07).

A KV cache of multi-head attention holds, per token and layer, n_heads keys and values.
MLA caches one small vector instead: the latent ``c = kv_a_layernorm(x W_a)`` of size
``kv_lora_rank``, plus one rotated key of size ``qk_rope_head_dim`` shared by all heads.
The per-head keys and values are linear images of the latent:

    kv_b_proj(c), per head h:  [k_nope_h | v_h] = c W_b_h      (W_b_h: kv_lora_rank -> nope + v)
    q_h = [q_nope_h | q_rope_h];   k_h = [k_nope_h | k_rope]    (k_rope shared by the heads)
    score_h(i, j) = (q_nope_h(i) . k_nope_h(j) + RoPE(q_rope_h)(i) . RoPE(k_rope)(j)) / sqrt(nope + rope)

RoPE rotates only the ``rope`` parts: a rotation depends on the position, so it cannot be
folded into ``kv_b_proj``; the ``nope`` parts carry no position and can. That is the
weight absorption (``absorb=True``): q_nope_h . (c W_k_h) = (q_nope_h W_k_h^T) . c, and
sum_j p_j (c_j W_v_h) = (sum_j p_j c_j) W_v_h, so attention runs over the latent itself and
the keys and values of the past are never formed.

Layouts (Hugging Face's DeepSeek-V3 with ``rope_interleave=False``): output rows of
``kv_a_proj_with_mqa`` are ``[latent | k_rope]``; of ``kv_b_proj`` per head ``[k_nope | v]``;
of ``q_proj`` / ``q_b_proj`` per head ``[nope | rope]``.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: everything runs in the input's dtype except RoPE's float32 angles.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .layers import RMSNorm  # the layers exercise (lecture 04)
from .rope import apply_rope  # the RoPE exercise (lecture 03)


def mla_cache_bytes(n_layers: int, kv_lora_rank: int, qk_rope_head_dim: int, seq_len: int,
                    batch_size: int = 1, bytes_per_elem: int = 2) -> int:
    """Bytes held by an MLA cache: n_layers * batch_size * seq_len * (kv_lora_rank +
    qk_rope_head_dim) * bytes_per_elem (one latent and one shared rotated key per token;
    no factor 2, and no n_heads). Example: DeepSeek-V2 (60 layers, kv_lora_rank 512, rope 64)
    at 2048 tokens in bfloat16 holds 141,557,760 bytes, about 135 MiB.
    """
    raise NotImplementedError("mla_cache_bytes: write this part (see the docstring)")


class LayerMLACache:
    """One layer's view of an ``MLACache``. ``update(latent, k_rope)`` writes the new
    positions in place after the ones stored so far and returns views over everything stored:

        latent: (b, s_new, kv_lora_rank), after kv_a_layernorm
        k_rope: (b, s_new, qk_rope_head_dim), after RoPE
        returns (latent_all, k_rope_all): (b, seq_len, kv_lora_rank), (b, seq_len, qk_rope_head_dim)
    Overflowing the cache's max_seq_len raises ValueError.
    """

    def __init__(self, cache: "MLACache", index: int):
        self.cache = cache
        self.index = index

    @property
    def seq_len(self) -> int:
        """Tokens stored in this layer so far."""
        raise NotImplementedError("LayerMLACache.seq_len: write this part (see the docstring)")

    def update(self, latent: torch.Tensor, k_rope: torch.Tensor):
        raise NotImplementedError("LayerMLACache.update: write this part (see the docstring)")


class MLACache:
    """Preallocated latents and shared rotated keys for every layer of a model.

    Buffers ``latent`` (n_layers, batch_size, max_seq_len, kv_lora_rank) and ``k_rope``
    (n_layers, batch_size, max_seq_len, qk_rope_head_dim), allocated once in ``__init__``:
    nothing per head is stored. ``layer(i)``, ``seq_len`` (the minimum over layers, so that
    mid-step it is still the step's start), ``reset()`` and ``crop(n)`` behave as in KVCache.
    """

    def __init__(self, n_layers: int, batch_size: int, max_seq_len: int, kv_lora_rank: int,
                 qk_rope_head_dim: int, dtype=torch.float32, device=None):
        self.n_layers, self.batch_size, self.max_seq_len = n_layers, batch_size, max_seq_len
        self.kv_lora_rank, self.qk_rope_head_dim = kv_lora_rank, qk_rope_head_dim
        raise NotImplementedError("MLACache.__init__: write this part (see the docstring)")

    def layer(self, i: int) -> LayerMLACache:
        raise NotImplementedError("MLACache.layer: write this part (see the docstring)")

    @property
    def seq_len(self) -> int:
        raise NotImplementedError("MLACache.seq_len: write this part (see the docstring)")

    def reset(self) -> None:
        raise NotImplementedError("MLACache.reset: write this part (see the docstring)")

    def crop(self, n: int) -> None:
        raise NotImplementedError("MLACache.crop: write this part (see the docstring)")


class MultiHeadLatentAttention(nn.Module):
    """Causal self-attention whose keys and values come from a compressed latent (DeepSeek-V2).

    Submodules (names are part of the API: weights are loaded by name), all without bias:
        q_proj: Linear(d_model, n_heads * (nope + rope))            when q_lora_rank is None
        q_a_proj: Linear(d_model, q_lora_rank), q_a_layernorm: RMSNorm(q_lora_rank, norm_eps),
        q_b_proj: Linear(q_lora_rank, n_heads * (nope + rope))      otherwise
        kv_a_proj_with_mqa: Linear(d_model, kv_lora_rank + rope)     rows [latent | k_rope]
        kv_a_layernorm: RMSNorm(kv_lora_rank, norm_eps)
        kv_b_proj: Linear(kv_lora_rank, n_heads * (nope + v_head_dim))  rows per head [k_nope | v]
        o_proj: Linear(n_heads * v_head_dim, d_model)
    with nope = qk_nope_head_dim, rope = qk_rope_head_dim.
    """

    def __init__(self, d_model: int, n_heads: int, kv_lora_rank: int, qk_nope_head_dim: int,
                 qk_rope_head_dim: int, v_head_dim: int, q_lora_rank: int | None = None,
                 rope_theta: float = 10000.0, norm_eps: float = 1e-6):
        super().__init__()
        if qk_rope_head_dim % 2:
            raise ValueError(f"RoPE needs an even qk_rope_head_dim, got {qk_rope_head_dim}")
        self.d_model, self.n_heads, self.kv_lora_rank = d_model, n_heads, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim = qk_nope_head_dim, qk_rope_head_dim
        self.v_head_dim, self.q_lora_rank = v_head_dim, q_lora_rank
        self.rope_theta = rope_theta
        raise NotImplementedError("MultiHeadLatentAttention.__init__: write this part (see the docstring)")

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache=None,
                absorb: bool = False) -> torch.Tensor:
        """x: (b, s, d_model) -> (b, s, d_model), causal self-attention.

        positions: (s,) or (b, s) absolute positions for RoPE; default ``arange(s)`` offset
            by the cache length (as in MultiHeadAttention).
        cache: a layer of an ``MLACache``: the new latent (after kv_a_layernorm) and k_rope
            (after RoPE) are appended with ``cache.update(latent, k_rope)``, and attention runs
            over everything it returns. Query i of s sits at position n_k - s + i (n_k keys).
        absorb: the same result without expanding keys and values: multiply q_nope into
            kv_b_proj's key rows (b, h, s, nope) -> (b, h, s, kv_lora_rank), attend over the
            latent (b, n_k, kv_lora_rank) directly, then map the output through its value rows.

        Steps: queries (b, s, h*(nope+rope)) -> (b, s, h, nope+rope) -> (b, h, s, nope+rope),
        split [nope | rope]; kv_a_proj_with_mqa -> [latent | k_rope], kv_a_layernorm on the
        latent; RoPE on q_rope and on the one k_rope head; cache; scores = nope part + rope
        part, scaled by 1/sqrt(nope + rope); causal softmax; values; merge heads; o_proj.
        Hint: ``kv_b_proj.weight.view(n_heads, nope + v_head_dim, kv_lora_rank)`` holds the
        per-head key and value rows.
        """
        raise NotImplementedError("MultiHeadLatentAttention.forward: write this part (see the docstring)")
