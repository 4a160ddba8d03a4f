"""Trusted worker-side helpers for the training exercise (cross_entropy, AdamW, the schedule,
clip_grad_norm_, get_batch).

The optimizer trajectory is built here by code the grader also runs itself
(``optimizer_trajectory``: a fixed small MLP, a fixed loss, the grader's inputs), with the
student's ``AdamW`` as the only foreign part; the grader repeats it with
``torch.optim.AdamW`` and with each known mistake and compares. Nothing is decided here.
This module imports only torch and ``contextlib`` (the grader imports it too).
"""
from __future__ import annotations

import contextlib
import math

import torch

# what the API forbids, blocked while the student's code runs (a second line: the grader's
# static check of the source decides)
CE_FORBIDDEN = [(torch.nn.functional, "cross_entropy"), (torch.nn.functional, "nll_loss"),
                (torch.nn.functional, "log_softmax"), (torch, "log_softmax"), (torch, "logsumexp"),
                (torch.Tensor, "log_softmax"), (torch.Tensor, "logsumexp"), (torch.special, "log_softmax"),
                (torch.special, "logsumexp")]
OPTIM_FORBIDDEN = [(torch.optim, "Adam"), (torch.optim, "AdamW")]


@contextlib.contextmanager
def _forbidden(pairs, what):
    originals = [(owner, name, getattr(owner, name)) for owner, name in pairs if hasattr(owner, name)]

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{what}; the exercise asks you to write it from elementary operations")

    for owner, name, _ in originals:
        setattr(owner, name, refuse)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


# -- cross_entropy ------------------------------------------------------------------------
def cross_entropy(sub, logits, targets, **kwargs):
    """The student's ``cross_entropy`` while torch's losses and log-softmaxes raise."""
    function = sub.load("training.cross_entropy")
    with _forbidden(CE_FORBIDDEN, "cross_entropy called one of torch's cross-entropy or log-softmax functions"):
        return function(logits, targets, **kwargs)


# -- AdamW: the trajectory ----------------------------------------------------------------
def mlp_loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fixed model: a two-layer tanh MLP with a LayerNorm-style gain, mean squared error.
    ``params`` also holds parameters the loss never uses (they get no gradient)."""
    h = torch.tanh(x @ params["w1"].T + params["b1"])  # (n, hidden)
    h = h * params["gain"]  # (n, hidden)
    out = h @ params["w2"].T + params["b2"]  # (n, out)
    return ((out - y) ** 2).mean()


def optimizer_trajectory(optimizer_class, spec: dict) -> dict:
    """Run ``optimizer_class`` on the fixed model for ``spec["steps"]`` steps.

    spec: ``init`` {name: tensor}, ``x``, ``y``, ``groups`` [{"names": [...], hyperparameters}],
    ``kwargs`` (the constructor's keyword arguments), ``steps``, ``drop`` {step: [names whose
    grad is set to None before that step]} (steps count from 1).
    Returns ``params`` (steps + 1, n) (the flattened parameters in ``names`` order after each
    step, row 0 the start), ``names``, ``state`` {name: {"keys", "step", "exp_avg",
    "exp_avg_sq"}} for the parameters that have state, and ``losses`` (steps,).
    """
    names = list(spec["init"])
    params = {n: torch.nn.Parameter(t.clone()) for n, t in spec["init"].items()}
    groups = [{**{k: v for k, v in g.items() if k != "names"}, "params": [params[n] for n in g["names"]]}
              for g in spec["groups"]]
    optimizer = optimizer_class(groups, **spec.get("kwargs", {}))
    rows, losses = [_flat(params, names)], []
    for step in range(1, spec["steps"] + 1):
        for p in params.values():
            p.grad = None
        loss = mlp_loss(params, spec["x"], spec["y"])
        loss.backward()
        for name in spec.get("drop", {}).get(step, []):
            params[name].grad = None
        optimizer.step()
        rows.append(_flat(params, names))
        losses.append(loss.detach())
    state = {}
    for name in names:
        entry = optimizer.state.get(params[name])
        if entry:
            state[name] = {"keys": sorted(str(k) for k in entry),
                           **{k: _plain(entry[k]) for k in ("step", "exp_avg", "exp_avg_sq") if k in entry}}
    return {"params": torch.stack(rows), "names": names, "state": state, "losses": torch.stack(losses)}


def _flat(params, names):
    return torch.cat([params[n].detach().reshape(-1) for n in names]).clone()


def _plain(value):
    """A state entry as a plain tensor (the step as a float64 0-d tensor, int or tensor alike)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone() if value.dim() else value.detach().to(torch.float64).clone()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    return torch.tensor(float("nan"), dtype=torch.float64)  # an odd value: the grader reports it


def adamw_trajectory(sub, spec):
    """The trajectory with the student's ``AdamW`` (torch's Adam and AdamW blocked meanwhile)."""
    optimizer_class = sub.load("training.AdamW")
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise TypeError("training.AdamW must be a subclass of torch.optim.Optimizer")
    with _forbidden(OPTIM_FORBIDDEN, "AdamW used torch.optim.Adam or torch.optim.AdamW"):
        return optimizer_trajectory(optimizer_class, spec)


def adamw_closure(sub, init, x, y, kwargs):
    """``step(closure)``: the closure computes the loss and its gradients; returns what
    ``step`` returned (as a tensor, or None) and the parameters after the step."""
    params = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
    optimizer = sub.load("training.AdamW")(list(params.values()), **kwargs)

    def closure():
        optimizer.zero_grad()
        loss = mlp_loss(params, x, y)
        loss.backward()
        return loss

    returned = optimizer.step(closure)
    return {"returned": returned.detach() if isinstance(returned, torch.Tensor) else None,
            "params": _flat(params, list(init))}


# -- the schedule -------------------------------------------------------------------------
def schedule(sub, steps, max_lr, min_lr, warmup_steps, total_steps):
    """The student's schedule at each step, as float64, and the type of each value."""
    function = sub.load("training.lr_cosine_schedule")
    values, types = [], []
    for step in steps:
        value = function(step, max_lr, min_lr, warmup_steps, total_steps)
        types.append(type(value).__name__)
        values.append(float(value) if isinstance(value, (int, float, torch.Tensor)) else math.nan)
    return {"values": torch.tensor(values, dtype=torch.float64), "types": types}


# -- clipping -----------------------------------------------------------------------------
def clip(sub, grads, max_norm, with_eps=None, as_generator=False):
    """Parameters with these gradients (None: a parameter without one), clipped by the
    student's ``clip_grad_norm_`` (given as a generator when ``as_generator``). Returns the
    returned norm and the gradients afterwards."""
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g) if g is not None else torch.zeros(3, dtype=torch.float64))
        p.grad = g.clone() if g is not None else None
        params.append(p)
    kwargs = {} if with_eps is None else {"eps": with_eps}
    given = (p for p in params) if as_generator else params
    norm = sub.load("training.clip_grad_norm_")(given, max_norm, **kwargs)
    return {"norm": norm, "grads": [p.grad for p in params]}


# -- batches ------------------------------------------------------------------------------
def get_batch(sub, data, batch_size, context_length, seed):
    """The student's ``get_batch`` with a generator seeded by the grader."""
    generator = torch.Generator().manual_seed(seed)
    try:
        x, y = sub.load("training.get_batch")(data, batch_size, context_length, generator=generator)
    except (IndexError, RuntimeError, ValueError) as exc:  # the test says what this means
        if isinstance(exc, NotImplementedError):
            raise  # the skeleton: reported as "not implemented"
        return {"raised": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"x": x, "y": y}
