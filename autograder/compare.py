"""Comparing a submission's values with the reference, and saying what went wrong.

Tolerances come from the dtype of the values compared, never from the implementation under
test (see ``tolerance``). On a mismatch the message says what was expected and what came
(type, shape, dtype, NaN, largest error and where), and names a known mistake when the
submission's value matches one of the wrong implementations in ``autograder.mistakes``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

HALF = (torch.float16, torch.bfloat16)


class Mismatch(AssertionError):
    """A value from the submission is not what the reference says."""


def check_parameters(got, expected: dict, what: str) -> None:
    """Assert that a module's parameters have the API's names and shapes.

    ``got``: the worker's parameter table (``{"parameters": {name: {"shape", ...}}}``, from
    ``module_parameters``) or ``{name: shape}``; ``expected``: ``{name: shape}`` (the reference's
    ``named_parameters()``). The message is the one every parameter check uses, in the worker
    too (``autograder.adapters.parameter_mismatch``): what is missing, what is not in the API,
    which shapes differ."""
    from .adapters import parameter_mismatch

    table = got.get("parameters", got) if isinstance(got, dict) else None
    if not isinstance(table, dict):
        raise Mismatch(f"{what}: expected a parameter table, got {describe(got)}")
    shapes = {name: tuple(info["shape"]) if isinstance(info, dict) else tuple(info) for name, info in table.items()}
    problem = parameter_mismatch(what, {name: tuple(shape) for name, shape in expected.items()}, shapes)
    if problem:
        raise Mismatch(problem)


def tolerance(dtype: torch.dtype, n_terms: int = 1, magnitude: float = 1.0) -> float:
    """Absolute and relative tolerance for a result of ``dtype`` next to a float64 reference.

    Derived from the rounding a correct implementation cannot avoid (eps = ``finfo(dtype).eps``):
    - scores entering an ``exp`` are rounded two or three times (product, scale, minus the
      max); each rounding moves the exponent by ``|score| * eps / 2`` and so the result by
      that much relatively: ``1.5 * eps * magnitude``, with ``magnitude`` the largest
      ``|score|`` (or softmax input) of the computation;
    - about four more roundings of values of order 1 (exp, sum, divide, weighted sum): ``2 * eps``;
    - sums of ``n_terms`` products accumulate rounding like a random walk,
      ``sqrt(n_terms) * eps`` of the accumulator (float32 for half inputs on CPU).
    Each term is doubled for values of order 2 and the tails of the walk.
    ``tests/test_tolerances.py`` measures correct implementations (several algorithms,
    native half precision and upcasting) against it and keeps the measured worst case in view.
    """
    eps = torch.finfo(dtype).eps
    acc_eps = torch.finfo(torch.float32 if dtype in HALF else dtype).eps
    return eps * (4 + 3 * magnitude) + 8 * acc_eps * math.sqrt(n_terms)


def angle_tolerance(dtype: torch.dtype, max_angle: float, max_abs: float = 1.0, n_terms: int = 1,
                    magnitude: float = 1.0) -> float:
    """Tolerance for values built from cos/sin of angles computed in float32 (RoPE, sinusoids).

    The precision contract (docs/API.md) makes the angle tables the only float32 part of a
    float64 computation, so a float64 result carries their rounding and nothing more:
    an angle ``p * f`` in float32 is off by up to ``p * f * eps32 / 2`` from rounding the
    product, plus a few eps32 relative from computing ``f = theta ** (-2i/d)`` with a pow
    or an exp/log (two correct formulas differ by ~3e-5 at p ~ 2600, grading notes), and
    cos/sin themselves are rounded to float32: about ``3 * max_angle * eps32``, doubled for
    margin, times the size of what is rotated (``max_abs``: the largest |q| or |k| entering
    RoPE, see ``rope_input_size``; 1 for a sinusoidal table, whose entries are cos/sin).
    ``max_angle`` is the largest position times the largest frequency (``largest_angle``).
    The rest of the computation keeps ``tolerance(dtype, n_terms, magnitude)``.
    tests/test_tolerances.py measures the worst angle table the contract allows through a
    block, a GPT and a Seq2Seq model: 0.07 of this bound or less.
    """
    return (tolerance(dtype, n_terms, magnitude)
            + 6 * torch.finfo(torch.float32).eps * max_angle * max(1.0, max_abs))


def largest_angle(positions) -> float:
    """The largest RoPE or sinusoidal angle at these positions: the largest position times the
    largest frequency, theta ** 0 = 1 (pair 0) in every correct formula."""
    positions = torch.as_tensor(positions)
    return float(positions.max()) * 1.0 if positions.numel() else 0.0


def rope_input_size(module: torch.nn.Module, run: Callable[[], object]) -> float:
    """The largest |q| or |k| that RoPE rotates when ``run()`` calls ``module`` (the outputs of
    every ``q_proj`` and ``k_proj`` inside it): the ``max_abs`` of ``angle_tolerance``."""
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.detach().abs().max().item()))
             for name, m in module.named_modules() if name.split(".")[-1] in ("q_proj", "k_proj")]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes, default=1.0)


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {tuple(value.shape)} {str(value.dtype).replace('torch.', '')} tensor"
    return f"a {type(value).__name__}" + (f" of length {len(value)}" if isinstance(value, (list, tuple, dict)) else "")


def check_tensor(actual, expected: torch.Tensor, what: str, *, tol: float | None = None,
                 n_terms: int = 1, magnitude: float = 1.0, dtype: torch.dtype | None = None,
                 mistakes: Callable[[], Iterable[tuple[str, torch.Tensor]]] | None = None,
                 exact: bool = False) -> None:
    """Assert that ``actual`` (from the worker) equals ``expected`` (the reference).

    ``dtype``: the dtype the submission must return (default: ``expected.dtype``).
    ``mistakes``: a function giving ``(description, wrong_value)`` pairs, tried in order
    only on a mismatch; the first that ``actual`` matches is named in the message.
    """
    dtype = dtype or expected.dtype
    if not isinstance(actual, torch.Tensor):
        raise Mismatch(f"{what}: expected a torch.Tensor, got {describe(actual)}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise Mismatch(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}"
                       + _named_mistake(actual, mistakes, tol=math.inf))
    if actual.dtype != dtype:
        raise Mismatch(f"{what}: expected dtype {str(dtype).replace('torch.', '')}, got "
                       f"{str(actual.dtype).replace('torch.', '')}"
                       + ("" if dtype == torch.bool else " (keep the caller's dtype)"))
    if exact or dtype == torch.bool or not dtype.is_floating_point:
        if not torch.equal(actual, expected.to(dtype)):
            bad = (actual != expected).nonzero()
            raise Mismatch(f"{what}: {len(bad)} of {expected.numel()} entries differ, first at "
                           f"index {tuple(bad[0].tolist())}: expected {expected[tuple(bad[0])].item()}, "
                           f"got {actual[tuple(bad[0])].item()}" + _named_mistake(actual, mistakes, 0.0, expected))
        return
    tol = tolerance(dtype, n_terms, magnitude) if tol is None else tol
    a, e = actual.double(), expected.double()
    finite = torch.isfinite(e)
    nan_where_finite = torch.isnan(a) & finite
    if nan_where_finite.any():
        index = tuple(nan_where_finite.nonzero()[0].tolist())
        raise Mismatch(f"{what}: NaN at index {index} ({int(nan_where_finite.sum())} NaN entries) "
                       f"where {e[index].item():.6g} was expected"
                       + _named_mistake(actual, mistakes, tol, expected))
    if not torch.equal(torch.isfinite(a), finite) or not torch.equal(a[~finite], e[~finite]):
        index = tuple((torch.isfinite(a) != finite).nonzero()[0].tolist()) if not torch.equal(
            torch.isfinite(a), finite) else tuple((~finite).nonzero()[0].tolist())
        raise Mismatch(f"{what}: at index {index} expected {e[index].item()}, got {a[index].item()}"
                       + _named_mistake(actual, mistakes, tol, expected))
    error = ((a - e).abs() - tol * e.abs())[finite]
    if error.numel() and error.max() > tol:
        diff = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
        index = tuple(torch.nonzero(diff == diff.max())[0].tolist())
        raise Mismatch(f"{what}: values differ from the reference by up to {diff.max().item():.3g} "
                       f"(allowed {tol:.2g} + {tol:.2g}*|expected| for "
                       f"{str(dtype).replace('torch.', '')}); at index {index} expected "
                       f"{e[index].item():.6g}, got {a[index].item():.6g}"
                       + (_named_mistake(actual, mistakes, tol, expected)
                          or _precision_hint(a, e, dtype, n_terms, magnitude)))


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> bool:
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return False
    if not actual.dtype.is_floating_point or math.isinf(tol):
        return torch.equal(actual, expected.to(actual.dtype)) if not math.isinf(tol) else True
    a, e = actual.double(), expected.double()
    both_nan = torch.isnan(a) & torch.isnan(e)
    ok = ((a - e).abs() <= tol + tol * e.abs()) | both_nan | (a == e)
    return bool(ok.all())


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, NaN and infinities included (equal infinities count 0)."""
    a, b = a.double(), b.double()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs().nan_to_num(nan=math.inf))
    return diff.max().item() if diff.numel() else 0.0


def _named_mistake(actual, mistakes, tol, expected=None) -> str:
    """A known mistake's sentence, only where the numbers show it: on this input the mistake's
    value is far from the reference (beyond 10x the tolerance, so the mistake is visible
    here at all), the submission matches it within a loose tolerance, and the submission is
    much nearer to it than to the reference."""
    if mistakes is None:
        return ""
    found = []
    for description, wrong in mistakes():
        if wrong is None or tuple(wrong.shape) != tuple(actual.shape) or description in found:
            continue
        if math.isinf(tol):  # a shape mistake: the shape is the evidence
            return f"\n  This looks like a known mistake: {description}"
        loose = max(tol, 1e-6) * 4
        if not close(actual, wrong, loose):
            continue
        if expected is not None and tuple(expected.shape) == tuple(wrong.shape):
            scale = 1.0 + expected.double().abs().nan_to_num(posinf=0.0, neginf=0.0).max().item()
            apart = _distance(wrong, expected)
            if apart <= 10 * loose * scale or _distance(actual, wrong) * 10 > _distance(actual, expected):
                continue  # on this input the mistake and the right answer cannot be told apart
        found.append(description)
    if len(found) == 1:
        return f"\n  This looks like a known mistake: {found[0]}"
    if found:  # on this input several mistakes give the same numbers: say so, pick none
        return "\n  This looks like one of these known mistakes: " + "; or ".join(found)
    return ""


FLOAT32_PART = ("part of the computation ran in float32 (e.g. a .float() or a float32 constant "
                "tensor): float64 inputs must be computed in float64 end to end")


def _precision_hint(a: torch.Tensor, e: torch.Tensor, dtype, n_terms, magnitude) -> str:
    """The precision contract's named mistake: a float64 result only float32-accurate."""
    if dtype != torch.float64:
        return ""
    finite = torch.isfinite(e)
    loose = tolerance(torch.float32, n_terms, magnitude)
    error = ((a - e).abs() - loose * e.abs())[finite]
    # float32-like: within float32's tolerance, far beyond float64's (a float64 result a few
    # ulps outside its own tolerance is not a float32 computation), and the values themselves
    # are float32 numbers cast up. Without that last piece of evidence a small systematic
    # error (an eps of 1e-6 for 1e-5) would be misnamed; it is the submission's own values,
    # so it proves only what was returned, never that the rest ran in float64.
    floor = max(100 * tolerance(torch.float64, n_terms, magnitude), 1e-3 * loose)
    values = a[finite & (a != 0)]
    cast_up = values.numel() > 0 and (values == values.float().double()).double().mean().item() >= 0.9
    if error.numel() and cast_up and floor < ((a - e).abs()[finite]).max() and error.max() <= loose:
        return f"\n  This looks like a known mistake: {FLOAT32_PART}"
    return ""
