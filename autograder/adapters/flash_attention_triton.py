"""Trusted worker-side helpers of the Triton exercise (called as
``worker.adapters.flash_attention_triton.NAME(...)``).

Counting launches or banning torch here proves nothing: the host code runs in this process
and could compute the answer with torch and launch an empty kernel. So the host code only
runs with its kernels replaced by recorders (``triton_record``); the grader then carries the
kernels' source alone (autograder.static.triton_kernels) into a worker that imports nothing
of the submission, which replays the recorded launches on the grader's q, k, v (and dO)
(``triton_replay``). Only what the kernels write there is graded: the forward's o and lse,
and the backward's dq, dk, dv, whose launches read the o and lse the replayed forward wrote.
"""
import importlib.util
import os

import torch

# the entry points the recorder can run (named as the worker names the student's functions:
# the grader's strike and intake bookkeeping reads that name), and what each returns, in order
ATTENTION = "flash_attention_triton.triton_flash_attention"
FORWARD = "flash_attention_triton.triton_flash_attention_forward"
AUTOGRAD = "flash_attention_triton.TritonFlashAttention"
ENTRIES = {
    ATTENTION: ("triton_flash_attention(q, k, v, is_causal)", ["o"]),
    FORWARD: ("triton_flash_attention_forward(q, k, v, is_causal)", ["o", "lse"]),
    AUTOGRAD: ("TritonFlashAttention.apply(q, k, v, is_causal) and its backward of dO", ["o", "dq", "dk", "dv"]),
}


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


def _run_entry(module, entry, q, k, v, is_causal, grad):
    """The student's host code for ``entry`` (see ENTRIES); a list of what it returned."""
    if entry == ATTENTION:
        return [module.triton_flash_attention(q, k, v, is_causal)]
    if entry == FORWARD:
        out = module.triton_flash_attention_forward(q, k, v, is_causal)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"triton_flash_attention_forward must return (o, lse), got a {type(out).__name__}"
                            + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
        return list(out)
    if entry == AUTOGRAD:
        leaves = [t.requires_grad_(True) for t in (q, k, v)]
        out = module.TritonFlashAttention.apply(*leaves, is_causal)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"TritonFlashAttention.apply returned a {type(out).__name__}, not a torch.Tensor")
        # autograd.grad hands back the backward's own tensors (no accumulation into .grad)
        grads = torch.autograd.grad(out, leaves, grad, allow_unused=True)
        missing = [name for name, g in zip(("dq", "dk", "dv"), grads) if g is None]
        if missing:
            raise TypeError(f"TritonFlashAttention.backward returned None for {', '.join(missing)}; "
                            f"it must return (dq, dk, dv, None)")
        return [out.detach(), *grads]
    raise ValueError(f"unknown entry {entry!r}; expected one of {sorted(ENTRIES)}")


def triton_record(sub, entry, q, k, v, is_causal=False, grad=None):
    """Run the student's host code for ``entry`` with every module-level kernel replaced by a
    recorder. Returns the launches (kernel name, grid, arguments as references to buffers),
    the buffers (q, k, v, do, or new ones with their size, dtype and whether they were zero)
    and the buffer views the host code returned (``out``, a list in ENTRIES' order)."""
    module = sub.module("flash_attention_triton")
    kernel_type = _kernel_types()
    given = [("q", q), ("k", k), ("v", v)] + ([("do", grad)] if grad is not None else [])
    inputs = {t.untyped_storage().data_ptr(): name for name, t in given}
    buffers, index, launches = [], {}, []
    seen = []  # every tensor referenced stays alive, so no later buffer reuses its address

    def ref(value):
        if isinstance(value, torch.Tensor):
            seen.append(value)
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
        outs = _run_entry(module, entry, q, k, v, is_causal, grad)
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)
    what, names = ENTRIES[entry]
    for name, out in zip(names, outs):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"{what}: {name} is a {type(out).__name__}, not a torch.Tensor")
    return {"launches": launches, "buffers": buffers, "out": [ref(out) for out in outs]}


def _dtype(name):
    return getattr(torch, str(name).replace("torch.", ""))


def triton_replay(sub, entry, source, launches, buffers, out, q, k, v, grad=None):
    """In a worker that has imported nothing of the submission: load the kernels' source (the
    grader extracted and checked it), give every new buffer NaN (or zeros, if the host made
    it zero), replay the launches in order on the grader's q, k, v (and dO) and return the
    views the host code returned (``entry`` only names the host code recorded)."""
    path = os.path.join(os.getcwd(), "course_kernels.py")  # triton reads a kernel's source from its file
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("course_kernels", path)
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    given = {"q": q, "k": k, "v": v, "do": grad}
    storage = []
    for buffer in buffers:
        if buffer["role"] != "new":
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
    return [value(ref).clone() for ref in out]
