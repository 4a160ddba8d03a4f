"""Known mistakes, computed by trusted code in the grader: each yields what a plausible wrong
implementation would return for the same inputs, with the sentence a student reads when
their value matches it. ``tests/fixtures/mutants`` holds a real submission for each, and the
repository's tests prove that every one loses points and is named.

One module per exercise (``autograder/mistakes/<exercise>.py``); this package holds only
what several of them share: the course's position rule, a float64 ``nn.Linear`` and the
precision contract's mistake. A suite imports its exercise's module
(``from autograder.mistakes import attention as mistakes``).
"""
from __future__ import annotations

import importlib

import torch

# the precision contract's named mistake (compare._precision_hint names it from the numbers)
from ..compare import FLOAT32_PART  # noqa: F401


def query_positions(n_q: int, n_k: int) -> torch.Tensor:
    """The course's position rule: with ``n_q`` queries against ``n_k`` keys (a cache holds
    the first ``n_k - n_q``), query ``i`` sits at position ``n_k - n_q + i``. Shape (n_q,)."""
    return torch.arange(n_q) + (n_k - n_q)


def query_key_positions(n_q: int, n_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query positions (n_q, 1), key positions (1, n_k)): compare them to build a mask."""
    return query_positions(n_q, n_k)[:, None], torch.arange(n_k)[None, :]


def causal_allowed(n_q: int, n_k: int) -> torch.Tensor:
    """(n_q, n_k) bool, True where a query may see a key: key position <= query position."""
    query, key = query_key_positions(n_q, n_k)
    return key <= query


def linear(x, state_dict, name):
    """``nn.Linear`` ``name`` of ``state_dict`` applied in float64 (weight (out, in))."""
    weight = state_dict[f"{name}.weight"].double()
    bias = state_dict.get(f"{name}.bias")
    out = x.double() @ weight.T
    return out if bias is None else out + bias.double()


def __getattr__(name):
    """Flat names from before the split (``mistakes.sdpa_mistakes``) still resolve, to the
    exercise module that defines them; new code imports that module."""
    from ..exercises import NAMES

    for exercise in NAMES:
        try:
            module = importlib.import_module(f"{__name__}.{exercise}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{exercise}":
                raise
            continue
        if name in vars(module):
            return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
