"""Exercise: the KV cache and autoregressive generation (lecture 07).

Decoding one token at a time, every step would recompute the keys and values of the whole
prefix. The cache keeps them: after the prompt is run once (prefill), each step feeds the
model one new token, whose keys and values (after RoPE) are appended.

Memory: 2 (k and v) * layers * batch * seq_len * n_kv_heads * head_dim * bytes per element.
The buffers are allocated once, at full length, and filled in place: growing them with
``torch.cat`` would copy the whole cache at every step.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: the cache stores keys and values in the dtype it was built with; a float64 model
with a float64 cache stays float64.
"""
from __future__ import annotations

import torch


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int,
                   batch_size: int = 1, bytes_per_elem: int = 2) -> int:
    """Bytes held by a KV cache: 2 * n_layers * batch_size * seq_len * n_kv_heads * head_dim
    * bytes_per_elem (the 2 counts keys and values). Example: a 7B Llama (32 layers,
    32 KV heads of 128) at 2048 tokens in float16 holds 2**30 bytes, 1 GiB.
    """
    ### BEGIN SOLUTION
    return 2 * n_layers * batch_size * seq_len * n_kv_heads * head_dim * bytes_per_elem
    ### END SOLUTION


class LayerKVCache:
    """One layer's view of a ``KVCache``. ``update(k, v)`` writes the new keys/values in place
    after the ones stored so far and returns views over everything stored:

        k, v: (b, n_kv_heads, s_new, head_dim)
        returns (k_all, v_all): (b, n_kv_heads, seq_len, head_dim), seq_len including s_new.
    Overflowing the cache's max_seq_len raises ValueError.
    """

    def __init__(self, cache: "KVCache", index: int):
        self.cache = cache
        self.index = index

    @property
    def seq_len(self) -> int:
        """Tokens stored in this layer so far."""
        ### BEGIN SOLUTION
        return self.cache._lengths[self.index]
        ### END SOLUTION

    def update(self, k: torch.Tensor, v: torch.Tensor):
        ### BEGIN SOLUTION
        cache = self.cache
        start, new = self.seq_len, k.shape[2]
        expected = (cache.batch_size, cache.n_kv_heads, new, cache.head_dim)
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(f"k and v must be (batch, n_kv_heads, s_new, head_dim) = {expected}; "
                             f"got k {tuple(k.shape)} and v {tuple(v.shape)}")
        if start + new > cache.max_seq_len:
            raise ValueError(f"the KV cache holds {cache.max_seq_len} positions; {start} are stored "
                             f"and {new} more do not fit")
        k_buffer, v_buffer = cache.k[self.index], cache.v[self.index]  # (b, n_kv, max_seq, hd)
        k_buffer[:, :, start:start + new] = k  # in place: no reallocation
        v_buffer[:, :, start:start + new] = v
        cache._lengths[self.index] = start + new
        return k_buffer[:, :, :start + new], v_buffer[:, :, :start + new]
        ### END SOLUTION


class KVCache:
    """Preallocated keys and values for every layer of a model.

    Buffers ``k`` and ``v`` of shape (n_layers, batch_size, n_kv_heads, max_seq_len, head_dim)
    are allocated once in ``__init__``. ``layer(i)`` gives layer i's ``LayerKVCache``.
    ``seq_len``: tokens stored; all layers of one model step advance together, so it grows
    once per step (it counts what every layer holds). ``reset()`` forgets everything,
    ``crop(n)`` keeps the first n positions (n >= seq_len changes nothing).
    """

    def __init__(self, n_layers: int, batch_size: int, max_seq_len: int, n_kv_heads: int,
                 head_dim: int, dtype=torch.float32, device=None):
        self.n_layers, self.batch_size, self.max_seq_len = n_layers, batch_size, max_seq_len
        self.n_kv_heads, self.head_dim = n_kv_heads, head_dim
        ### BEGIN SOLUTION
        shape = (n_layers, batch_size, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._lengths = [0] * n_layers
        self._layers = [LayerKVCache(self, i) for i in range(n_layers)]
        ### END SOLUTION

    def layer(self, i: int) -> LayerKVCache:
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


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token of each row: logits (b, vocab) -> LongTensor (b,).

    temperature == 0: greedy (argmax). Otherwise divide the logits by temperature, keep the
    top_k largest (if given), then the smallest set of most likely tokens whose probabilities
    add up to at least top_p (if given; the most likely token is always kept), renormalise
    and draw with ``torch.multinomial(..., generator=generator)``.
    """
    ### BEGIN SOLUTION
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # (b, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability above each token
        drop_sorted = mass_before >= top_p  # the nucleus is already complete before it
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    ### END SOLUTION


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Append ``max_new_tokens`` tokens to ``idx`` (b, s) and return (b, s + max_new_tokens).

    With ``use_cache``: build a ``KVCache`` sized for the whole output (its n_kv_heads and
    head_dim from ``model.config.block``), run the prompt once (prefill), then feed the model
    exactly one new token per step. Without: run the whole sequence every step.
    """
    ### BEGIN SOLUTION
    config = model.config
    total = idx.shape[1] + max_new_tokens
    if total > config.max_seq_len:
        raise ValueError(f"{idx.shape[1]} prompt tokens + {max_new_tokens} new ones exceed "
                         f"max_seq_len={config.max_seq_len}")
    cache = None
    if use_cache:
        block = config.block
        parameter = next(model.parameters())
        cache = KVCache(config.n_layers, idx.shape[0], total, block.n_kv_heads or block.n_heads,
                        block.d_model // block.n_heads, dtype=parameter.dtype, device=parameter.device)
    out = idx
    step_input = idx  # the whole prompt first (prefill)
    for _ in range(max_new_tokens):
        logits = model(step_input if use_cache else out, cache=cache)[:, -1]  # (b, vocab)
        next_token = sample_next_token(logits, temperature, top_k, top_p, generator)  # (b,)
        out = torch.cat([out, next_token[:, None]], dim=1)
        step_input = next_token[:, None]  # (b, 1): one token per step from now on
    return out
    ### END SOLUTION
