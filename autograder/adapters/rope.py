"""Worker-side helpers of exercises/rope.py: MultiHeadAttention with RoPE and a cache: a
trusted cache records what it is given.

Called from the suite as ``worker.adapters.rope.NAME(...)``; see the package docstring."""
import torch

from . import build_module


class RecordingCache:
    """A minimal, trusted stand-in for ``LayerKVCache``: appends along the sequence axis."""

    def __init__(self):
        self.k = self.v = None

    @property
    def seq_len(self):
        return 0 if self.k is None else self.k.shape[2]

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


def attention_with_cache(sub, cls, init_kwargs, state_dict, prompt, steps, *, dtype=None):
    """Prefill ``prompt`` (b, s, d) causally, then feed each (b, 1, d) of ``steps`` one at a
    time through the same cache. Returns every output and the keys/values the cache holds."""
    module = build_module(sub, cls, init_kwargs, state_dict, dtype).eval()
    cache = RecordingCache()
    with torch.no_grad():
        outputs = [module(prompt, is_causal=True, cache=cache)]
        for step in steps:
            outputs.append(module(step, is_causal=True, cache=cache))
    return {"outputs": outputs, "keys": cache.k, "values": cache.v}
