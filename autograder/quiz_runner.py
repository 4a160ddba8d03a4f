"""Runs inside the exercise worker (an unprivileged, sandboxed process): executes a student's
quiz answer cells and hands back the values a quiz asks for as plain data.

Nothing here decides a score. Student code runs in this process and can change anything in
it, this file included; the grader (``autograder/quiz.py``) accepts only what
``torch.load(weights_only=True)`` can rebuild and checks every value's type again itself, and
runs the quiz's test code in its own process. This file only makes honest mistakes readable
("qk_variance is a numpy.float64").
"""
import hashlib
import traceback

import torch

# what the lectures import before the quiz; answer cells may use these names
PRELUDE = "import math\nimport torch\nimport torch.nn.functional as F\n"
_namespaces = {}  # hash of the cells -> (namespace, errors): cells run once per worker process


def _plain(value, path, depth=0):
    """The value if it is plain data (exact types, not subclasses); else TypeError."""
    if depth > 16:
        raise TypeError(f"{path} is nested too deeply")
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is torch.Tensor:
        return value.detach().cpu().clone()
    if type(value) in (list, tuple):
        items = [_plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        return items if type(value) is list else tuple(items)
    if type(value) is dict:
        return {str(k): _plain(v, f"{path}[{k!r}]", depth + 1) for k, v in value.items()}
    kind = f"{type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")
    raise TypeError(f"{path} is a {kind}; the quiz takes plain int, float, str, bool, list, tuple, "
                    f"dict or torch.Tensor values")


def _run_cells(cells):
    key = hashlib.sha256(repr(cells).encode()).hexdigest()
    if key not in _namespaces:
        namespace = {"__name__": "__quiz__"}
        exec(PRELUDE, namespace)
        errors = {}
        for grade_id, source in cells:  # like Jupyter: an error in one cell, the next still runs
            try:
                exec(compile(source, f"<answer cell {grade_id}>", "exec"), namespace)
            except BaseException as exc:  # noqa: BLE001 (SystemExit too: it is the student's cell)
                line = traceback.extract_tb(exc.__traceback__)[-1].lineno if exc.__traceback__ else "?"
                what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                errors[grade_id] = f"answer cell {grade_id} raised {what} (line {line})"[:1000]
        _namespaces[key] = (namespace, errors)
    return _namespaces[key]


def values(cells, names):
    """``{"errors": {cell: message}, "names": {name: {"kind": value|function|missing|refused, ...}}}``"""
    namespace, errors = _run_cells(cells)
    found = {}
    for name in names:
        if name not in namespace:
            found[name] = {"kind": "missing"}
        elif callable(namespace[name]) and not isinstance(namespace[name], torch.Tensor):
            found[name] = {"kind": "function"}
        else:
            try:
                found[name] = {"kind": "value", "value": _plain(namespace[name], name)}
            except TypeError as exc:
                found[name] = {"kind": "refused", "message": str(exc)}
    return {"errors": dict(errors), "names": found}


def call(cells, name, args, kwargs):
    """``name(*args, **kwargs)`` from the answer cells; the result as plain data."""
    namespace, _ = _run_cells(cells)
    result = namespace[name](*args, **kwargs)
    return _plain(result, f"{name}(...)")
