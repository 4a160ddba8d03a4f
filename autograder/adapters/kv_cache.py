"""Worker-side helpers of exercises/kv_cache.py: the student's KVCache, caches the grader
fills, generation on a probe model, sampling.

Called from the suite as ``worker.adapters.kv_cache.NAME(...)``; see the package docstring."""
import torch

from . import decoder_block, gpt, load_weights


def cache_session(sub, init_kwargs, ops):
    """Drive the student's KVCache through ``ops`` and report what it did.

    ops: ("update", layer, k, v) | ("crop", n) | ("reset",). For each op the result holds
    the cache's seq_len afterwards and, for updates, the returned (k_all, v_all), whether
    they are views of the storage the first update returned (no reallocation), and the
    exception raised, if any. ``torch.cat`` calls during updates are counted.
    """
    cache = sub.load("kv_cache.KVCache")(**init_kwargs)
    storages, results, cat_calls = {}, [], [0]
    original_cat = torch.cat

    def counting_cat(*args, **kwargs):
        cat_calls[0] += 1
        return original_cat(*args, **kwargs)

    for op in ops:
        entry = {"op": op[0]}
        try:
            if op[0] == "update":
                layer = cache.layer(op[1])
                torch.cat = counting_cat
                try:
                    k_all, v_all = layer.update(op[2], op[3])
                finally:
                    torch.cat = original_cat
                # copies: later updates overwrite what these views show
                entry.update(k=k_all.clone(), v=v_all.clone(), layer_seq_len=layer.seq_len)
                pointer = (k_all.untyped_storage().data_ptr(), v_all.untyped_storage().data_ptr())
                entry["same_storage"] = storages.setdefault(op[1], pointer) == pointer
            elif op[0] == "crop":
                cache.crop(op[1])
            elif op[0] == "reset":
                cache.reset()
            entry["seq_len"] = cache.seq_len
        except Exception as exc:  # the test decides whether this exception was the right one
            entry["raised"] = type(exc).__name__
            entry["message"] = str(exc)[:300]
        results.append(entry)
    return {"results": results, "cat_calls": cat_calls[0]}


def cached_logits(sub, config, state_dict, prompt, steps, *, dtype=None):
    """The student's GPT with the student's KVCache: prefill ``prompt``, then each (b, 1)
    token of ``steps``. Returns the logits of every call."""
    model = load_weights(gpt.build(sub, config), state_dict, dtype, "GPT").eval()
    block = config["block"]
    total = prompt.shape[1] + sum(s.shape[1] for s in steps)
    cache = sub.load("kv_cache.KVCache")(
        n_layers=config["n_layers"], batch_size=prompt.shape[0], max_seq_len=total,
        n_kv_heads=block.get("n_kv_heads") or block["n_heads"],
        head_dim=block["d_model"] // block["n_heads"], dtype=dtype or torch.float32)
    logits, raised = [], ""
    try:
        with torch.no_grad():
            for tokens in [prompt, *steps]:
                logits.append(model(tokens, cache=cache))
    except Exception as exc:  # reported with the logits seen so far
        raised = f"{type(exc).__name__}: {str(exc)[:300]}"
    return {"logits": logits, "raised": raised}


class GraderLayerCache:
    """A trusted, minimal LayerKVCache: holds exactly what it is given and checks its shape."""

    def __init__(self, owner, k, v):
        self.owner, self.k, self.v = owner, k, v

    @property
    def seq_len(self):
        return self.k.shape[2]

    def update(self, k, v):
        expected = tuple(self.k.shape[:2]) + (tuple(self.k.shape[3:]))
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != expected:
                self.owner.rejected = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"LayerKVCache.update was given {name} of shape {self.owner.rejected}; this cache "
                                 f"holds (batch, n_kv_heads, s, head_dim) = ({expected[0]}, {expected[1]}, s, {expected[2]})")
        self.k = torch.cat([self.k, k.detach()], dim=2)
        self.v = torch.cat([self.v, v.detach()], dim=2)
        return self.k, self.v


class GraderCache:
    """A trusted KVCache preloaded by the grader: per layer (k, v) of (b, n_kv, L, head_dim)."""

    def __init__(self, layers, max_seq_len):
        self.layers = [GraderLayerCache(self, k, v) for k, v in layers]
        self.n_layers, self.max_seq_len = len(layers), max_seq_len
        self.batch_size, self.n_kv_heads, _, self.head_dim = layers[0][0].shape
        self.rejected = None

    def layer(self, i):
        return self.layers[i]

    @property
    def seq_len(self):
        return min(layer.seq_len for layer in self.layers)  # mid-step: the step's start


def step_on_cache(sub, config, state_dict, cached, step, *, dtype=None):
    """One step of the student's GPT on a trusted cache that the grader filled (and altered):
    the logits must follow what the cache holds, and the cache must gain one position."""
    model = load_weights(gpt.build(sub, config), state_dict, dtype, "GPT").eval()
    cache = GraderCache(cached, max_seq_len=config["max_seq_len"])
    raised = ""
    logits = None
    try:
        with torch.no_grad():
            logits = model(step, cache=cache)
    except Exception as exc:
        raised = f"{type(exc).__name__}: {str(exc)[:300]}"
    return {"logits": logits, "cache": [(layer.k, layer.v) for layer in cache.layers],
            "rejected": cache.rejected, "raised": raised}


def generate(sub, config, state_dict, idx, max_new_tokens, *, dtype=None, seed=None, **kwargs):
    """The student's ``generate`` on the student's GPT."""
    model = load_weights(gpt.build(sub, config), state_dict, dtype, "GPT").eval()
    if seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return {"tokens": sub.load("kv_cache.generate")(model, idx, max_new_tokens, **kwargs)}


def probe_next_token(history, vocab_size):
    """The probe model's rule: the next token after ``history`` (a list of ints). Depends on
    every token and on their order, so a cache that lost, doubled or reordered a token, or
    a call that saw only part of the past, shows up in the tokens."""
    return (31 * sum((i + 1) * token for i, token in enumerate(history)) + 7 * len(history)) % vocab_size


class ProbeLM(torch.nn.Module):
    """A stand-in model for ``generate``: its next token is ``probe_next_token`` of everything
    it can see (the cache's contents plus the new tokens), shifted by one whenever it is
    called against the protocol with ``use_cache``: a cache on every call, the prompt once,
    then exactly one token per call. Without the cache every call must see the whole
    sequence, which the rule checks by itself. The grader knows the tokens a correct
    generate gets from it."""

    def __init__(self, config, prompt_len, use_cache):
        super().__init__()
        self.config = config
        self.prompt_len, self.use_cache, self.calls = prompt_len, use_cache, 0
        self.anchor = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))  # dtype for the cache

    def forward(self, idx, cache=None):
        b, s = idx.shape
        vocab = self.config.vocab_size
        if cache is None:
            history, start = idx.to(torch.float64), 0
            violation = self.use_cache  # without a cache, a wrong history shows by itself
        else:
            start = cache.seq_len
            block = self.config.block
            n_kv, head_dim = block.n_kv_heads or block.n_heads, block.d_model // block.n_heads
            code = torch.zeros(b, n_kv, s, head_dim, dtype=torch.float64)
            code[..., 0] = idx.to(torch.float64)[:, None, :]
            for i in range(self.config.n_layers):
                k_all, _ = cache.layer(i).update(code, code)
            history = k_all[:, 0, :, 0]  # (b, start + s): what the cache holds
            violation = not self.use_cache or s != (self.prompt_len if self.calls == 0 else 1)
        self.calls += 1
        logits = torch.zeros(b, s, vocab, dtype=torch.float64)
        for row in range(b):
            for p in range(s):
                seen = [int(t) for t in history[row, : start + p + 1].tolist()]
                logits[row, p, (probe_next_token(seen, vocab) + int(violation)) % vocab] = 1.0
        return logits


def generate_on_probe(sub, config, prompt, max_new_tokens, use_cache=True):
    """The student's ``generate`` driving ``ProbeLM`` (configured with the student's own
    GPTConfig and BlockConfig classes), with the student's KVCache."""
    gpt_config = sub.load("gpt.GPTConfig")(**{**config, "block": decoder_block.block_config(sub, config["block"])})
    model = ProbeLM(gpt_config, prompt.shape[1], use_cache).eval()
    return sub.load("kv_cache.generate")(model, prompt, max_new_tokens, use_cache=use_cache)


def sample(sub, logits, seed=None, **kwargs):
    """``sample_next_token`` with a generator seeded here (generators cannot cross the pipe)."""
    if seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return sub.load("kv_cache.sample_next_token")(logits, **kwargs)
