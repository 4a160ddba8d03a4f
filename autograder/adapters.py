"""Trusted helpers that run inside the worker, next to the student's code.

An adapter turns "build the student's module with these weights, run it, take gradients"
into one request whose reply is plain tensors: the student's objects never leave the
worker. Each adapter receives the ``Submission`` (``sub.load("attention.softmax")``)
followed by the request's arguments. The grader trusts none of the values that come back:
it compares them with the reference itself.
"""
import contextlib

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


def _record_updates(sub):
    """Patch the student's LayerKVCache.update to record the shapes it is given."""
    layer_class = sub.load("kv_cache.LayerKVCache")
    original = layer_class.update
    shapes = []

    def recording_update(self, k, v):
        shapes.append(tuple(k.shape))
        return original(self, k, v)

    layer_class.update = recording_update
    return shapes, lambda: setattr(layer_class, "update", original)


def gpt_cached_logits(sub, config, state_dict, prompt, steps, *, dtype=None):
    """The student's GPT with the student's KVCache: prefill ``prompt``, then each (b, 1)
    token of ``steps``. Returns the logits of every call and the shapes given to update."""
    model = _load_weights(_gpt(sub, config), state_dict, dtype, "GPT").eval()
    block = config["block"]
    total = prompt.shape[1] + sum(s.shape[1] for s in steps)
    cache = sub.load("kv_cache.KVCache")(
        n_layers=config["n_layers"], batch_size=prompt.shape[0], max_seq_len=total,
        n_kv_heads=block.get("n_kv_heads") or block["n_heads"],
        head_dim=block["d_model"] // block["n_heads"], dtype=dtype or torch.float32)
    shapes, restore = _record_updates(sub)
    logits, raised = [], ""
    try:
        with torch.no_grad():
            for tokens in [prompt, *steps]:
                logits.append(model(tokens, cache=cache))
    except Exception as exc:  # reported with the shapes seen so far, which often explain it
        raised = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        restore()
    return {"logits": logits, "update_shapes": shapes, "raised": raised}


def gpt_generate(sub, config, state_dict, idx, max_new_tokens, *, dtype=None, seed=None, **kwargs):
    """The student's ``generate`` on the student's GPT; records the length of every input
    the model is called with (prefill once, then one token per step)."""
    model = _load_weights(_gpt(sub, config), state_dict, dtype, "GPT").eval()
    lengths = []
    model.register_forward_pre_hook(
        lambda module, args, kw: lengths.append(int((args[0] if args else kw["idx"]).shape[1])),
        with_kwargs=True)
    if seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    tokens = sub.load("kv_cache.generate")(model, idx, max_new_tokens, **kwargs)
    return {"tokens": tokens, "input_lengths": lengths}


def sample(sub, logits, seed=None, **kwargs):
    """``sample_next_token`` with a generator seeded here (generators cannot cross the pipe)."""
    if seed is not None:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return sub.load("kv_cache.sample_next_token")(logits, **kwargs)


# -- FlashAttention -------------------------------------------------------------------------
def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_bytes(fn):
    """Peak resident memory added while ``fn`` runs. ru_maxrss would inherit the parent's
    high-water mark (grading notes), so reset VmHWM through clear_refs and read it back."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024


def flash_memory(sub, n, d, is_causal):
    """Peak memory of the student's forward and of forward + backward at length n."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, d, generator=g) for _ in range(3))
    forward = sub.load("flash_attention.flash_attention_forward")
    apply = sub.load("flash_attention.FlashAttention").apply
    grad = torch.randn(1, 1, n, d, generator=g)
    # warm-up at a small size: the first forward and backward page in tens of MB of library
    # code and start autograd's threads, which would otherwise count as the student's memory
    small = [t[..., :128, :].clone().requires_grad_(True) for t in (q, k, v)]
    forward(*small, is_causal)
    apply(*small, is_causal).backward(grad[..., :128, :])
    forward_peak = _peak_bytes(lambda: forward(q, k, v, is_causal))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = apply(*leaves, is_causal)
    backward_peak = _peak_bytes(lambda: out.backward(grad))
    return {"forward": forward_peak, "backward": backward_peak}


def flash_flops(sub, n, d, is_causal, block):
    """Matmul FLOPs of the student's forward (FlopCounterMode counts mm/bmm/matmul)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, d, generator=g) for _ in range(3))
    forward = sub.load("flash_attention.flash_attention_forward")
    with FlopCounterMode(display=False) as counter:
        forward(q, k, v, is_causal, block, block)
    return counter.get_total_flops()


def flash_saved(sub, q, k, v, is_causal):
    """What the student's FlashAttention keeps for backward: saved tensors and tensor attributes."""
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = sub.load("flash_attention.FlashAttention").apply(*leaves, is_causal)
    node = out.grad_fn
    saved = [tuple(t.shape) for t in node.saved_tensors]
    attributes = {name: tuple(value.shape) for name, value in vars(node).items() if isinstance(value, torch.Tensor)}
    return {"saved": saved, "attributes": attributes}


def triton_run(sub, q, k, v, is_causal=False):
    """Run the student's triton_flash_attention; count kernel launches and forbid torch's
    attention maths meanwhile, so a torch fallback computes nothing."""
    module = sub.module("flash_attention_triton")
    import triton.runtime.interpreter as interpreter
    from triton.runtime.jit import JITFunction

    launches = [0]
    patched = []
    for owner in (getattr(interpreter, "InterpretedFunction", None), JITFunction):
        if owner is not None and hasattr(owner, "run"):
            original = owner.run

            def counting(self, *args, _original=original, **kwargs):
                launches[0] += 1
                return _original(self, *args, **kwargs)

            owner.run = counting
            patched.append((owner, original))
    message = "triton_flash_attention computed attention with torch instead of in its Triton kernel"
    try:
        with contextlib.ExitStack() as stack:
            for owner, name in [(torch, "matmul"), (torch, "bmm"), (torch, "einsum"), (torch, "softmax"),
                                (torch.Tensor, "__matmul__"), (torch.Tensor, "softmax"),
                                (torch.nn.functional, "scaled_dot_product_attention"), (torch.nn.functional, "softmax")]:
                stack.enter_context(_forbid(owner, name, message))
            out = module.triton_flash_attention(q, k, v, is_causal)
    finally:
        for owner, original in patched:
            owner.run = original
    return {"out": out, "launches": launches[0]}


def module_method(sub, cls, init_kwargs, state_dict, method, args, kwargs=None, *, dtype=None):
    """``getattr(module, method)(*args, **kwargs)`` on the student's module in eval mode."""
    module = build_module(sub, cls, init_kwargs, state_dict, dtype).eval()
    with torch.no_grad():
        return getattr(module, method)(*args, **(kwargs or {}))
