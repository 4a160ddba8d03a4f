"""Trusted helpers that run inside the worker, next to the student's code.

An adapter turns "build the student's module with these weights, run it, take gradients"
into one request whose reply is plain tensors: the student's objects never leave the
worker. Each adapter receives the ``Submission`` (``sub.load("attention.softmax")``)
followed by the request's arguments. The grader trusts none of the values that come back:
it compares them with the reference itself.

This package holds the helpers every exercise shares (build a module and load the grader's
weights by the API's names, run it with gradients, list its parameters, call a function,
bans, the memory cap); ``<exercise>.py`` beside it holds one exercise's own. A suite calls
them as ``worker.adapters.module_forward(cls=..., ...)`` / ``worker.adapters.gpt.forward(...)``
(autograder/worker_parent.py's ``Adapters``, which checks the arguments against the helper's
signature in the grader; on the wire the helper's name is "@module_forward" / "@gpt.forward").
In the worker the package is ``course_adapters`` and
cannot import ``autograder``: only torch, the standard library and relative imports.
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
    return load_weights(module, state_dict, dtype, cls)


def parameter_mismatch(name, expected, got) -> str:
    """The one wording of "these are not the API's parameters": "" when ``got`` has exactly
    the names and shapes of ``expected`` (each ``{name: shape}``), else what is missing, what
    the API does not have, and which shapes differ. The grader's suites use it too
    (autograder/compare.py's check_parameters), so every such failure reads the same."""
    expected = {key: tuple(shape) for key, shape in expected.items()}
    got = {key: tuple(shape) for key, shape in got.items()}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    shapes = [f"{key} is {got[key]}, expected {expected[key]}" for key in expected
              if key in got and got[key] != expected[key]]
    if not (missing or extra or shapes):
        return ""
    parts = [f"missing {missing}" if missing else "", f"not in the API {extra}" if extra else "",
             ("shapes: " + "; ".join(shapes)) if shapes else ""]
    return f"{name}'s parameters are not the API's: " + "; ".join(p for p in parts if p)


def load_weights(module, state_dict, dtype, name):
    """``module`` in ``dtype`` with the grader's ``state_dict`` loaded strictly: the names and
    shapes must be the API's (``parameter_mismatch`` says how they are not)."""
    if dtype is not None:
        module = module.to(dtype)  # before loading, so float64 weights stay float64
    if state_dict is not None:
        problem = parameter_mismatch(name, {k: t.shape for k, t in state_dict.items()},
                                     {k: t.shape for k, t in module.state_dict().items()})
        if problem:
            raise ValueError(problem)
        module.load_state_dict(state_dict, strict=True)
    return module


_load_weights = load_weights  # the name per-exercise modules written before used


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
    return parameter_table(build_module(sub, cls, init_kwargs))


def parameter_table(module):
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


# -- the memory cap (Worker.call_with_memory_budget) ---------------------------------------


def limit_address_space(sub, limit):
    """Lower this worker's hard address-space limit (the grader chose it and checks it from
    /proc); called before any submission code has been imported into this process."""
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return 0


def module_method(sub, cls, init_kwargs, state_dict, method, args, kwargs=None, *, dtype=None):
    """``getattr(module, method)(*args, **kwargs)`` on the student's module in eval mode."""
    module = build_module(sub, cls, init_kwargs, state_dict, dtype).eval()
    with torch.no_grad():
        return getattr(module, method)(*args, **(kwargs or {}))
