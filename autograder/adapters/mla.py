"""Trusted worker-side helpers for exercises/mla.py: they build the student's
MultiHeadLatentAttention and MLACache, run them and return plain tensors and numbers. The
grader decides everything from those values (autograder/suites/test_mla.py)."""
import torch

from . import _load_weights, build_module

MLA = "mla.MultiHeadLatentAttention"


def mla_cache_session(sub, init_kwargs, ops):
    """Drive the student's MLACache through ``ops``: ("update", layer, latent, k_rope) |
    ("crop", n) | ("reset",). Reports, right after construction, the tensors the cache object
    holds (shapes, dtypes, bytes of distinct storages, found in its attributes and one level
    below, e.g. per-layer objects); per op the seq_len afterwards and, for updates, copies of
    what came back, whether it is a view of the storage the first update returned, and the
    exception raised, if any."""
    cache = sub.load("mla.MLACache")(**init_kwargs)
    held = _tensors_held(cache)
    storages, results = {}, []
    for op in ops:
        entry = {"op": op[0]}
        try:
            if op[0] == "update":
                layer = cache.layer(op[1])
                latent_all, rope_all = layer.update(op[2], op[3])
                entry.update(latent=latent_all.clone(), k_rope=rope_all.clone(), layer_seq_len=layer.seq_len)
                pointer = (latent_all.untyped_storage().data_ptr(), rope_all.untyped_storage().data_ptr())
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
    return {"results": results, **held}


def _tensors_held(obj):
    seen, shapes, dtypes, total = set(), [], [], 0
    values = list(vars(obj).values())
    for value in list(values):  # one level below: lists of per-layer objects and their attributes
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if hasattr(item, "__dict__") and not isinstance(item, torch.Tensor) and item is not obj:
                values.extend(v for v in vars(item).values() if isinstance(v, torch.Tensor))
            elif isinstance(item, torch.Tensor):
                values.append(item)
    for value in values:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            shapes.append(list(value.shape))
            dtypes.append(str(value.dtype).replace("torch.", ""))
            total += storage.nbytes()
    return {"held_shapes": shapes, "held_dtypes": dtypes, "held_bytes": total}


def mla_cached_outputs(sub, init_kwargs, state_dict, prompt, steps, *, absorb=False, dtype=None):
    """The student's MLA with the student's MLACache (one layer): the prompt, then each step;
    default positions. Returns the output of every call."""
    module = build_module(sub, MLA, init_kwargs, state_dict, dtype).eval()
    total = prompt.shape[1] + sum(step.shape[1] for step in steps)
    cache = sub.load("mla.MLACache")(1, prompt.shape[0], total, init_kwargs["kv_lora_rank"],
                                     init_kwargs["qk_rope_head_dim"], dtype=prompt.dtype)
    with torch.no_grad():
        return {"outputs": [module(chunk, cache=cache.layer(0), absorb=absorb) for chunk in [prompt, *steps]]}


class GraderMLALayer:
    """A trusted layer cache preloaded by the grader with (latent, k_rope) of (b, P, r) and
    (b, P, rope), preallocated to ``max_seq_len``: it records what the model hands it and
    refuses what does not have the shapes of a latent and a shared rotated key."""

    def __init__(self, latent, k_rope, max_seq_len):
        b, n, r = latent.shape
        self.latent = torch.zeros(b, max_seq_len, r, dtype=latent.dtype)
        self.k_rope = torch.zeros(b, max_seq_len, k_rope.shape[-1], dtype=k_rope.dtype)
        self.latent[:, :n], self.k_rope[:, :n] = latent, k_rope
        self.length, self.given, self.rejected = n, [], None

    @property
    def seq_len(self):
        return self.length

    def update(self, latent, k_rope):
        b, _, r = self.latent.shape
        new = latent.shape[1] if latent.dim() == 3 else -1
        if (tuple(latent.shape) != (b, new, r) or tuple(k_rope.shape) != (b, new, self.k_rope.shape[-1])
                or self.length + new > self.latent.shape[1]):
            self.rejected = (list(latent.shape), list(k_rope.shape))
            raise ValueError(f"the grader's MLA cache takes latent (b, s_new, kv_lora_rank) = (b, s_new, {r}) "
                             f"and k_rope (b, s_new, {self.k_rope.shape[-1]}); got {tuple(latent.shape)} "
                             f"and {tuple(k_rope.shape)}")
        self.given.append((latent.detach().clone(), k_rope.detach().clone()))
        start, self.length = self.length, self.length + new
        self.latent[:, start:self.length], self.k_rope[:, start:self.length] = latent.detach(), k_rope.detach()
        return self.latent[:, :self.length], self.k_rope[:, :self.length]


def mla_step_on_cache(sub, init_kwargs, state_dict, cached, x, *, absorb=False, dtype=None):
    """One call of the student's MLA on a trusted cache that the grader filled (and altered):
    the output must follow what the cache holds; what the call handed the cache comes back."""
    module = build_module(sub, MLA, init_kwargs, state_dict, dtype).eval()
    cache = GraderMLALayer(*cached, max_seq_len=cached[0].shape[1] + x.shape[1])
    out, raised = None, ""
    try:
        with torch.no_grad():
            out = module(x, cache=cache, absorb=absorb)
    except Exception as exc:
        raised = f"{type(exc).__name__}: {str(exc)[:300]}"
    return {"out": out, "given": cache.given, "rejected": cache.rejected, "raised": raised}


# -- memory: absorb=True over a long cache, under a cap the grader sets ----------------------
MEMORY_CONFIG = dict(d_model=64, n_heads=6, kv_lora_rank=16, qk_nope_head_dim=128, qk_rope_head_dim=16,
                     v_head_dim=128)  # nope and v as DeepSeek-V2's: the expansion is 48x the latent
MEMORY_PAST = 65536  # cached positions: the per-head keys and values of them would be 384 MiB (float32)
MEMORY_POSITION = 3
_preloaded = {}


def memory_case():
    """The weights, the cached past and the new token of the memory check (float32; the grader
    draws the same). Weights N(0, 0.3) with norm gains near 1; the past is random (a latent of
    RMS 1 and a rotated key), as a correct cache could hold it."""
    g = torch.Generator().manual_seed(0)
    c = MEMORY_CONFIG
    h, r, nope, rope, dv, d = (c["n_heads"], c["kv_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"],
                               c["v_head_dim"], c["d_model"])
    shapes = {"q_proj.weight": (h * (nope + rope), d), "kv_a_proj_with_mqa.weight": (r + rope, d),
              "kv_a_layernorm.weight": (r,), "kv_b_proj.weight": (h * (nope + dv), r),
              "o_proj.weight": (d, h * dv)}
    state = {name: torch.randn(shape, generator=g) * 0.3 + (1.0 if name.endswith("layernorm.weight") else 0.0)
             for name, shape in shapes.items()}
    latent = torch.randn(1, MEMORY_PAST, r, generator=g)
    k_rope = torch.randn(1, MEMORY_PAST, rope, generator=g)
    x = torch.randn(1, 1, d, generator=g)
    return state, latent, k_rope, x


def mla_warm_up(sub):
    """Trusted, before any submission code: the grader's cache (filled with the past) and the
    library code an MLA step uses (linear, RMS norm, RoPE's cos/sin, matmul, softmax) are paged
    in, so that the grader's baseline already holds them. Imports nothing of the submission."""
    state, latent, k_rope, x = memory_case()
    _preloaded.update(state=state, x=x, cache=GraderMLALayer(latent, k_rope, MEMORY_PAST + 1))
    del latent, k_rope
    a = torch.randn(1, 6, 1, 16) @ torch.randn(1, 1, 16, 64)
    torch.softmax(a.masked_fill(torch.zeros(1, 64, dtype=torch.bool), float("-inf")), dim=-1)
    torch.nn.functional.linear(x, state["q_proj.weight"]).pow(2).mean(-1).sqrt().cos().sin()
    return 0


def mla_memory_run(sub):
    """The student's MLA, absorb=True, one new token over the grader's cache of MEMORY_PAST
    positions (at position MEMORY_POSITION: the check is about memory, and a small angle keeps
    the output's tolerance tight). The output comes back, so the grader can check the work."""
    state, x, cache = _preloaded["state"], _preloaded["x"], _preloaded["cache"]
    module_class = sub.load(MLA)
    torch.manual_seed(0)
    module = _load_weights(module_class(**MEMORY_CONFIG), state, None, MLA).eval()
    with torch.no_grad():
        out = module(x, positions=torch.tensor([MEMORY_POSITION]), cache=cache, absorb=True)
    return {"out": out, "rejected": cache.rejected}
