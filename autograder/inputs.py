"""Seeded inputs for the hidden suites: the same tensors on every run and every machine."""
from __future__ import annotations

import torch


def randn(*shape, seed: int, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def randint(low: int, high: int, *shape, seed: int) -> torch.Tensor:
    """Integers (token ids, positions) in [low, high), int64, from their own seeded generator."""
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def random_state_dict(module: torch.nn.Module, seed: int, std: float = 0.3, *,
                      norm_gains_near_one: bool = False) -> dict:
    """Every parameter drawn from N(0, std): no default inits (ones, zeros) that hide mistakes.

    ``norm_gains_near_one``: the weight of every normalisation layer (a module whose class
    name ends in "Norm", or whose attribute name says norm: ``norm1``, ``norm_f``,
    ``kv_a_layernorm``, whatever a student's class is called) is 1 + N(0, std) instead.
    Deep stacks need it: near-zero gains collapse a random model onto one token, and a norm
    that is skipped altogether then changes little."""
    g = torch.Generator().manual_seed(seed)
    state = {name: (torch.randn(t.shape, generator=g, dtype=torch.float64) * std).to(t.dtype)
             for name, t in module.state_dict().items()}
    if norm_gains_near_one:
        for prefix in norm_layers(module):
            key = f"{prefix}.weight" if prefix else "weight"
            if key in state:
                state[key] = 1 + state[key]
    return state


def norm_layers(module: torch.nn.Module) -> list[str]:
    """The names of the normalisation layers inside ``module`` (by class or attribute name)."""
    return [name for name, m in module.named_modules()
            if type(m).__name__.endswith("Norm") or "norm" in name.rsplit(".", 1)[-1].lower()]
