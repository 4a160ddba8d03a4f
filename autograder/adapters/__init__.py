"""Trusted helpers that run inside the worker, next to the student's code.

An adapter turns "build the student's module with these weights, run it, take gradients"
into one request whose reply is plain tensors: the student's objects never leave the
worker. Each adapter receives the ``Submission`` (``sub.load("attention.softmax")``)
followed by the request's arguments. The grader trusts none of the values that come back:
it compares them with the reference itself.
"""
import contextlib
import resource

import torch


class ForbiddenCall(RuntimeError):
    pass


def build_module(sub, cls, init_kwargs, state_dict=None, dtype=None):
    """``cls(**init_kwargs)`` from the submission, with ``state_dict`` loaded strictly."""
    module_class = sub.load(cls)
    torch.manual_seed(0)  # any weights not given are at least reproducible
    module = module_class(**init_kwargs)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{cls}(...) built a {type(module).__name__}, not a torch.nn.Module")
    return _load_weights(module, state_dict, dtype, cls)


def _load_weights(module, state_dict, dtype, name):
    if dtype is not None:
        module = module.to(dtype)  # before loading, so float64 weights stay float64
    if state_dict is not None:
        expected = dict(module.state_dict())
        missing = sorted(set(state_dict) - set(expected))
        unexpected = sorted(set(expected) - set(state_dict))
        if missing or unexpected:
            raise ValueError(
                f"{name}'s parameters do not have the names the API fixes: "
                f"missing {missing or 'none'}; not in the API {unexpected or 'none'}")
        wrong = [f"{key} is {tuple(expected[key].shape)}, expected {tuple(t.shape)}"
                 for key, t in state_dict.items() if tuple(expected[key].shape) != tuple(t.shape)]
        if wrong:
            raise ValueError(f"{name}'s parameter shapes differ from the API: " + "; ".join(wrong))
        module.load_state_dict(state_dict, strict=True)
    return module


def module_forward(sub, cls, init_kwargs, state_dict, args, kwargs=None, *,
                   dtype=None, grad_output=None, train=False, forbid=()):
    """Run ``module(*args, **kwargs)``; with ``grad_output`` also backpropagate it.

    ``forbid``: dotted names of torch functions the module must not call while it runs
    (for example "torch.nn.functional.layer_norm"): each raises ``ForbiddenCall``.
    Returns ``{"out"}`` plus, with ``grad_output``, ``{"param_grads": {name: grad},
    "input_grads": [grad or None per positional arg]}``.
    """
    module = build_module(sub, cls, init_kwargs, state_dict, dtype)
    module.train(train)
    return _run(module, args, kwargs or {}, grad_output, forbid, cls)


def _run(module, args, kwargs, grad_output, forbid=(), name="the module"):
    if grad_output is not None:
        args = [a.detach().requires_grad_(True) if _is_float_tensor(a) else a for a in args]
    with contextlib.ExitStack() as stack:
        for dotted in forbid:
            owner_name, _, attr = dotted.rpartition(".")
            stack.enter_context(_forbid(_resolve(owner_name), attr,
                                        f"{name} called {dotted}; the exercise asks you to write "
                                        f"it from elementary operations"))
        if grad_output is None:
            stack.enter_context(torch.no_grad())
        out = module(*args, **kwargs)
    result = {"out": out}
    if grad_output is not None:
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            raise RuntimeError("the output is not connected to the inputs or weights by autograd "
                               "(was something detached, or computed under no_grad?)")
        out.backward(grad_output)
        result["param_grads"] = {n: p.grad for n, p in module.named_parameters()}
        result["input_grads"] = [a.grad if _is_float_tensor(a) else None for a in args]
        result["out"] = out.detach()
    return result


def module_parameters(sub, cls, init_kwargs):
    """Names, shapes and dtypes of the module's parameters, and which ones share storage."""
    return _parameters(build_module(sub, cls, init_kwargs))


def _parameters(module):
    params = {name: {"shape": tuple(p.shape), "dtype": str(p.dtype)}
              for name, p in module.named_parameters(remove_duplicate=False)}
    by_storage = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_storage.setdefault(p.data_ptr(), []).append(name)
    shared = [names for names in by_storage.values() if len(names) > 1]
    return {"parameters": params, "shared": shared}


def function_grads(sub, target, args, kwargs, grad_output):
    """``target(*args, **kwargs)`` and the gradients of ``grad_output`` w.r.t. float args."""
    function = sub.load(target)
    args = [a.detach().requires_grad_(True) if _is_float_tensor(a) else a for a in args]
    out = function(*args, **(kwargs or {}))
    if not isinstance(out, torch.Tensor) or out.grad_fn is None:
        raise RuntimeError(f"{target}'s output is not connected to its inputs by autograd")
    out.backward(grad_output)
    return {"out": out.detach(), "input_grads": [a.grad if _is_float_tensor(a) else None for a in args]}


@contextlib.contextmanager
def _forbid(owner, name, message):
    original = getattr(owner, name)

    def forbidden(*args, **kwargs):
        raise ForbiddenCall(message)

    setattr(owner, name, forbidden)
    try:
        yield
    finally:
        setattr(owner, name, original)


def call_without_builtin_softmax(sub, target, args, kwargs=None):
    """Call ``target`` while every public softmax of torch raises ``ForbiddenCall``."""
    function = sub.load(target)
    message = f"{target} called torch's softmax; the exercise asks you to write it from exp and sum"
    with contextlib.ExitStack() as stack:
        for owner, name in [(torch, "softmax"), (torch.Tensor, "softmax"),
                            (torch.nn.functional, "softmax"), (torch.special, "softmax"),
                            (torch, "_softmax"), (torch.nn.Softmax, "forward")]:
            if hasattr(owner, name):
                stack.enter_context(_forbid(owner, name, message))
        return function(*args, **(kwargs or {}))


def _resolve(dotted):
    """"torch.nn.functional" -> the module object (only torch's own namespaces)."""
    obj = torch
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def _is_float_tensor(x):
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def raised(sub, target, args, kwargs=None):
    """The name of the exception ``target(*args, **kwargs)`` raises, or "" when it returns."""
    function = sub.load(target)
    try:
        function(*args, **(kwargs or {}))
    except Exception as exc:  # the test decides whether this was the right one
        return type(exc).__name__
    return ""


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


def _block_config(sub, config):
    return sub.load("decoder_block.BlockConfig")(**config)


def block_parameters(sub, config):
    """``DecoderBlock(BlockConfig(**config))``'s parameters (see ``module_parameters``)."""
    block = sub.load("decoder_block.DecoderBlock")(_block_config(sub, config))
    return _parameters(block)


def block_forward(sub, config, state_dict, x, *, dtype=None, grad_output=None, kwargs=None):
    """Build the student's block from their own BlockConfig, load weights, run it."""
    block_class = sub.load("decoder_block.DecoderBlock")
    return _run(_load_weights(block_class(_block_config(sub, config)), state_dict, dtype,
                              "DecoderBlock"), [x], kwargs or {}, grad_output)


def _gpt(sub, config):
    """The student's GPT built from their own GPTConfig and BlockConfig classes."""
    block = _block_config(sub, config["block"])
    gpt_config = sub.load("gpt.GPTConfig")(**{**config, "block": block})
    torch.manual_seed(0)
    return sub.load("gpt.GPT")(gpt_config)


def gpt_parameters(sub, config):
    return _parameters(_gpt(sub, config))


def gpt_config_fields(sub, config):
    """A few fields of the student's ``GPT(config).config`` (missing ones as None)."""
    kept = getattr(_gpt(sub, config), "config", None)
    block = getattr(kept, "block", None)
    fields = {name: getattr(kept, name, None) for name in ("vocab_size", "max_seq_len", "n_layers")}
    fields.update({f"block.{name}": getattr(block, name, None) for name in ("d_model", "n_heads", "n_kv_heads")})
    return {key: value if type(value) in (int, float, bool, str) or value is None else repr(value)[:80]
            for key, value in fields.items()}


def gpt_forward(sub, config, state_dict, idx, *, dtype=None, grad_output=None):
    return _run(_load_weights(_gpt(sub, config), state_dict, dtype, "GPT"), [idx], {}, grad_output)


def gpt_train_step(sub, config, state_dict, idx, targets, *, dtype=None, lr=1e-2):
    """One AdamW step (trusted optimizer) on the cross-entropy of the student's GPT, then
    the logits again: parameters that are not registered, or a head that is a copy of the
    embedding instead of the same tensor, show up here."""
    model = _load_weights(_gpt(sub, config), state_dict, dtype, "GPT").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    logits = model(idx)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        return {"loss": loss.detach(), "logits_after": model.eval()(idx)}


# -- KV cache -----------------------------------------------------------------------------
def kv_cache_session(sub, init_kwargs, ops):
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


def gpt_cached_logits(sub, config, state_dict, prompt, steps, *, dtype=None):
    """The student's GPT with the student's KVCache: prefill ``prompt``, then each (b, 1)
    token of ``steps``. Returns the logits of every call."""
    model = _load_weights(_gpt(sub, config), state_dict, dtype, "GPT").eval()
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


def gpt_step_on_cache(sub, config, state_dict, cached, step, *, dtype=None):
    """One step of the student's GPT on a trusted cache that the grader filled (and altered):
    the logits must follow what the cache holds, and the cache must gain one position."""
    model = _load_weights(_gpt(sub, config), state_dict, dtype, "GPT").eval()
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


def gpt_generate(sub, config, state_dict, idx, max_new_tokens, *, dtype=None, seed=None, **kwargs):
    """The student's ``generate`` on the student's GPT."""
    model = _load_weights(_gpt(sub, config), state_dict, dtype, "GPT").eval()
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
    gpt_config = sub.load("gpt.GPTConfig")(**{**config, "block": _block_config(sub, config["block"])})
    model = ProbeLM(gpt_config, prompt.shape[1], use_cache).eval()
    return sub.load("kv_cache.generate")(model, prompt, max_new_tokens, use_cache=use_cache)


def sample(sub, logits, seed=None, **kwargs):
    """``sample_next_token`` with a generator seeded here (generators cannot cross the pipe)."""
    if seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return sub.load("kv_cache.sample_next_token")(logits, **kwargs)


# -- FlashAttention -------------------------------------------------------------------------
# Memory is not measured here, where the submission could reset or fake any counter: the
# grader caps this worker's address space from outside (Worker.call_with_memory_budget)
# after flash_warm_up, and flash_memory_run must finish under that cap with right values.
def flash_warm_up(sub):
    """Trusted, before any submission code: page in the library code a tiled forward and an
    autograd.Function backward use (matmul, exp, logsumexp, autograd), so the grader's
    baseline already holds it. Imports nothing of the submission."""

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            s = q @ k.transpose(-1, -2)
            ctx.save_for_backward(q, k, v, torch.logsumexp(s, dim=-1))
            return torch.exp(s - s.amax(dim=-1, keepdim=True)) @ v

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _ = ctx.saved_tensors
            return grad @ v.transpose(-1, -2) @ k, grad @ v.transpose(-1, -2) @ q, grad

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 128, 64, generator=g, dtype=torch.float32).requires_grad_(True) for _ in range(3))
    Probe.apply(q, k, v).sum().backward()
    return 0


def limit_address_space(sub, limit):
    """Lower this worker's hard address-space limit (the grader chose it and checks it from
    /proc); called before any submission code has been imported into this process."""
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return 0


def flash_inputs(n, d, seed):
    """q, k, v and the output gradient the memory test uses (the grader draws the same)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 1, n, d, generator=g) for _ in range(4)]


def flash_memory_run(sub, n, d, is_causal, seed):
    """The student's forward, then FlashAttention.apply and its backward, at length n; every
    value goes back so that the grader can check the work was really done."""
    q, k, v, grad = flash_inputs(n, d, seed)
    o, lse = sub.load("flash_attention.flash_attention_forward")(q, k, v, is_causal)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    out = sub.load("flash_attention.FlashAttention").apply(*leaves, is_causal)
    out.backward(grad)
    return {"o": o, "lse": lse, "out": out.detach(), "grads": [t.grad for t in leaves]}


# -- Triton ----------------------------------------------------------------------------------
# Counting launches or banning torch here proves nothing: the host code runs in this process
# and could compute the answer with torch and launch an empty kernel. So the host function
# only runs with its kernels replaced by recorders (triton_record); the grader then carries
# the kernels' source alone (autograder.static.triton_kernels) into a worker that imports
# nothing of the submission, which replays the recorded launches on the grader's q, k, v
# (triton_replay). Only what the kernels write there is graded.
def _kernel_types():
    from triton.runtime.jit import KernelInterface
    return KernelInterface


class _Recorder:
    """Stands in for a @triton.jit (or autotuned) kernel: ``kernel[grid](*args)`` records."""

    def __init__(self, name, kernel, record):
        self.name, self.kernel, self.record = name, kernel, record

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.record(self.name, self.kernel, grid, args, kwargs)

    def run(self, *args, grid, **kwargs):
        return self.record(self.name, self.kernel, grid, args, kwargs)


def triton_record(sub, q, k, v, is_causal=False):
    """Run the student's host function with every module-level kernel replaced by a recorder.
    Returns the launches (kernel name, grid, arguments as references to buffers), the buffers
    (q, k, v, or new ones with their size, dtype and whether they were zero) and the buffer
    view the host function returned."""
    module = sub.module("flash_attention_triton")
    kernel_type = _kernel_types()
    inputs = {t.untyped_storage().data_ptr(): name for name, t in (("q", q), ("k", k), ("v", v))}
    buffers, index, launches = [], {}, []

    def ref(value):
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in index:
                index[ptr] = len(buffers)
                raw = torch.empty(0, dtype=torch.uint8).set_(storage)
                buffers.append({"role": inputs.get(ptr, "new"), "nbytes": storage.nbytes(), "dtype": str(value.dtype),
                                "zero": not bool(raw.any())})
            return {"buffer": index[ptr], "shape": tuple(value.shape), "stride": tuple(value.stride()),
                    "offset": value.storage_offset(), "dtype": str(value.dtype)}
        if value is None or type(value) in (bool, int, float):
            return {"value": value}
        if isinstance(value, torch.dtype):
            return {"torch_dtype": str(value)}
        raise TypeError(f"a kernel argument of type {type(value).__name__} cannot be replayed by the grader; "
                        f"pass tensors, ints, floats and bools")

    def record(name, kernel, grid, args, kwargs):
        meta = dict(kwargs)
        configs = getattr(kernel, "configs", None)
        if configs:  # autotuned: the grader replays the first config
            meta = {**dict(configs[0].kwargs), **meta}
            if getattr(configs[0], "num_warps", None) is not None:
                meta.setdefault("num_warps", configs[0].num_warps)
        shape = grid(meta) if callable(grid) else grid
        shape = tuple(int(g) for g in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        launches.append({"kernel": name, "grid": shape, "args": [ref(a) for a in args],
                         "kwargs": {str(key): ref(val) for key, val in meta.items()}})

    originals = {name: obj for name, obj in vars(module).items() if isinstance(obj, kernel_type)}
    for name, kernel in originals.items():
        setattr(module, name, _Recorder(name, kernel, record))
    try:
        out = module.triton_flash_attention(q, k, v, is_causal)
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"triton_flash_attention returned a {type(out).__name__}, not a torch.Tensor")
    return {"launches": launches, "buffers": buffers, "out": ref(out)}


def _dtype(name):
    return getattr(torch, str(name).replace("torch.", ""))


def triton_replay(sub, source, launches, buffers, out, q, k, v):
    """In a worker that has imported nothing of the submission: load the kernels' source (the
    grader extracted and checked it), give every new buffer NaN (or zeros, if the host made
    it zero), replay the launches on the grader's q, k, v and return the view the host
    function returned."""
    import importlib.util
    import os

    path = os.path.join(os.getcwd(), "course_kernels.py")  # triton reads a kernel's source from its file
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("course_kernels", path)
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    given = {"q": q, "k": k, "v": v}
    storage = []
    for buffer in buffers:
        if buffer["role"] in given:
            storage.append(given[buffer["role"]])
            continue
        dtype = _dtype(buffer["dtype"])
        count = buffer["nbytes"] // torch.empty(0, dtype=dtype).element_size()
        fill = 0 if buffer["zero"] else (float("nan") if dtype.is_floating_point else -1)
        storage.append(torch.full((count,), fill, dtype=dtype))

    def value(ref):
        if "buffer" in ref:
            base = storage[ref["buffer"]]
            if str(base.dtype) != ref["dtype"]:
                raise TypeError(f"a buffer is passed as {ref['dtype']} and as {base.dtype}; the grader's launcher "
                                f"gives each buffer one dtype")
            return base.as_strided(ref["shape"], ref["stride"], ref["offset"])
        if "torch_dtype" in ref:
            return _dtype(ref["torch_dtype"])
        return ref["value"]

    for launch in launches:
        kernel = getattr(kernels, launch["kernel"])
        kernel[tuple(launch["grid"])](*[value(a) for a in launch["args"]],
                                      **{key: value(val) for key, val in launch["kwargs"].items()})
    return value(out).clone()


def module_method(sub, cls, init_kwargs, state_dict, method, args, kwargs=None, *, dtype=None):
    """``getattr(module, method)(*args, **kwargs)`` on the student's module in eval mode."""
    module = build_module(sub, cls, init_kwargs, state_dict, dtype).eval()
    with torch.no_grad():
        return getattr(module, method)(*args, **(kwargs or {}))
