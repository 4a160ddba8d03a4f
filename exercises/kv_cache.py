# Exercise 11 of 13: kv_cache. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/07_kv_cache.ipynb. Needs gpt (exercises/gpt.py): finish it first.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise kv_cache` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
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
    raise NotImplementedError("kv_cache_bytes: write this part (see the docstring)")


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
        raise NotImplementedError("LayerKVCache.seq_len: write this part (see the docstring)")

    def update(self, k: torch.Tensor, v: torch.Tensor):
        raise NotImplementedError("LayerKVCache.update: write this part (see the docstring)")


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
        raise NotImplementedError("KVCache.__init__: write this part (see the docstring)")

    def layer(self, i: int) -> LayerKVCache:
        raise NotImplementedError("KVCache.layer: write this part (see the docstring)")

    @property
    def seq_len(self) -> int:
        raise NotImplementedError("KVCache.seq_len: write this part (see the docstring)")

    def reset(self) -> None:
        raise NotImplementedError("KVCache.reset: write this part (see the docstring)")

    def crop(self, n: int) -> None:
        raise NotImplementedError("KVCache.crop: write this part (see the docstring)")


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token of each row: logits (b, vocab) -> LongTensor (b,).

    temperature == 0: greedy (argmax). Otherwise divide the logits by temperature, keep the
    top_k largest (if given), then the smallest set of most likely tokens whose probabilities
    add up to at least top_p (if given; the most likely token is always kept), renormalise
    and draw with ``torch.multinomial(..., generator=generator)``.
    """
    raise NotImplementedError("sample_next_token: write this part (see the docstring)")


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Append ``max_new_tokens`` tokens to ``idx`` (b, s) and return (b, s + max_new_tokens).

    With ``use_cache``: build a ``KVCache`` sized for the whole output (its n_kv_heads and
    head_dim from ``model.config.block``), run the prompt once (prefill), then feed the model
    exactly one new token per step. Without: run the whole sequence every step.
    """
    raise NotImplementedError("generate: write this part (see the docstring)")
