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
    ### BEGIN SOLUTION
    return n_layers * batch_size * seq_len * (kv_lora_rank + qk_rope_head_dim) * bytes_per_elem
    ### END SOLUTION


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
        ### BEGIN SOLUTION
        return self.cache._lengths[self.index]
        ### END SOLUTION

    def update(self, latent: torch.Tensor, k_rope: torch.Tensor):
        ### BEGIN SOLUTION
        cache = self.cache
        start, new = self.seq_len, latent.shape[1]
        want_latent = (cache.batch_size, new, cache.kv_lora_rank)
        want_rope = (cache.batch_size, new, cache.qk_rope_head_dim)
        if tuple(latent.shape) != want_latent or tuple(k_rope.shape) != want_rope:
            raise ValueError(f"latent must be (batch, s_new, kv_lora_rank) = {want_latent} and k_rope "
                             f"(batch, s_new, qk_rope_head_dim) = {want_rope}; got latent "
                             f"{tuple(latent.shape)} and k_rope {tuple(k_rope.shape)}")
        if start + new > cache.max_seq_len:
            raise ValueError(f"the MLA cache holds {cache.max_seq_len} positions; {start} are stored "
                             f"and {new} more do not fit")
        latent_buffer, rope_buffer = cache.latent[self.index], cache.k_rope[self.index]  # (b, max_seq, .)
        latent_buffer[:, start:start + new] = latent  # in place: no reallocation
        rope_buffer[:, start:start + new] = k_rope
        cache._lengths[self.index] = start + new
        return latent_buffer[:, :start + new], rope_buffer[:, :start + new]
        ### END SOLUTION


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
        ### BEGIN SOLUTION
        self.latent = torch.zeros(n_layers, batch_size, max_seq_len, kv_lora_rank, dtype=dtype, device=device)
        self.k_rope = torch.zeros(n_layers, batch_size, max_seq_len, qk_rope_head_dim, dtype=dtype, device=device)
        self._lengths = [0] * n_layers
        self._layers = [LayerMLACache(self, i) for i in range(n_layers)]
        ### END SOLUTION

    def layer(self, i: int) -> LayerMLACache:
        ### BEGIN SOLUTION
        return self._layers[i]
        ### END SOLUTION

    @property
    def seq_len(self) -> int:
        ### BEGIN SOLUTION
        return min(self._lengths)  # mid-step, only some layers have the new token
        ### END SOLUTION

    def reset(self) -> None:
        ### BEGIN SOLUTION
        self._lengths = [0] * self.n_layers
        ### END SOLUTION

    def crop(self, n: int) -> None:
        ### BEGIN SOLUTION
        self._lengths = [min(length, max(n, 0)) for length in self._lengths]
        ### END SOLUTION


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
        ### BEGIN SOLUTION
        q_out = n_heads * (qk_nope_head_dim + qk_rope_head_dim)
        if q_lora_rank is None:
            self.q_proj = nn.Linear(d_model, q_out, bias=False)
        else:
            self.q_a_proj = nn.Linear(d_model, q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(q_lora_rank, norm_eps)
            self.q_b_proj = nn.Linear(q_lora_rank, q_out, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d_model, kv_lora_rank + qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, norm_eps)
        self.kv_b_proj = nn.Linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim), bias=False)
        self.o_proj = nn.Linear(n_heads * v_head_dim, d_model, bias=False)
        ### END SOLUTION

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
        ### BEGIN SOLUTION
        b, s, _ = x.shape
        h, nope, rope, dv = self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        if self.q_lora_rank is None:
            q = self.q_proj(x)  # (b, s, h * (nope + rope))
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))  # low rank: d_model -> q_lora_rank -> ...
        q = q.view(b, s, h, nope + rope).transpose(1, 2)  # (b, h, s, nope + rope)
        q_nope, q_rope = q.split([nope, rope], dim=-1)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, rope], dim=-1)  # (b, s, r), (b, s, rope)
        latent = self.kv_a_layernorm(latent)

        if positions is None:
            past = cache.seq_len if cache is not None else 0
            positions = torch.arange(past, past + s, device=x.device)  # (s,)
        positions = positions.to(x.device)
        head_positions = positions[:, None, :] if positions.dim() == 2 else positions  # (b, 1, s): over heads
        q_rope = apply_rope(q_rope, head_positions, self.rope_theta)  # (b, h, s, rope)
        k_rope = apply_rope(k_rope, positions, self.rope_theta)  # (b, s, rope): one head for all

        if cache is not None:
            latent, k_rope = cache.update(latent, k_rope)  # (b, n_k, r), (b, n_k, rope)

        n_k = latent.shape[1]
        query_position = torch.arange(s, device=x.device)[:, None] + (n_k - s)  # query i at n_k - s + i
        allowed = torch.arange(n_k, device=x.device)[None, :] <= query_position  # (s, n_k)
        scale = 1.0 / math.sqrt(nope + rope)  # q and k are nope + rope wide

        def attend(scores):  # (b, h, s, n_k) -> causal softmax over keys
            return torch.softmax((scores * scale).masked_fill(~allowed, float("-inf")), dim=-1)

        def shared(q_part, k_part):  # (b, h, s, e) against one head (b, n_k, e) -> (b, h, s, n_k)
            # heads fold into the query axis, so the shared head is never copied per head
            return (q_part.reshape(b, h * s, -1) @ k_part.transpose(1, 2)).view(b, h, s, n_k)

        rope_scores = shared(q_rope, k_rope)  # the same on both paths
        w_k, w_v = self.kv_b_proj.weight.view(h, nope + dv, self.kv_lora_rank).split([nope, dv], dim=1)
        if absorb:
            q_latent = q_nope @ w_k  # (b, h, s, nope) @ (h, nope, r) -> (b, h, s, r)
            weights = attend(shared(q_latent, latent) + rope_scores)  # (b, h, s, n_k)
            out_latent = (weights.reshape(b, h * s, n_k) @ latent).view(b, h, s, self.kv_lora_rank)
            out = out_latent @ w_v.transpose(-2, -1)  # (b, h, s, r) @ (h, r, dv) -> (b, h, s, dv)
        else:
            kv = self.kv_b_proj(latent).view(b, n_k, h, nope + dv).transpose(1, 2)  # (b, h, n_k, nope + dv)
            k_nope, v = kv.split([nope, dv], dim=-1)
            weights = attend(q_nope @ k_nope.transpose(-2, -1) + rope_scores)
            out = weights @ v  # (b, h, s, dv)
        out = out.transpose(1, 2).reshape(b, s, h * dv)  # (b, s, h * dv)
        return self.o_proj(out)
        ### END SOLUTION
