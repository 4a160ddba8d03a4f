"""Seeded inputs for the hidden suites: the same tensors on every run and every machine."""
from __future__ import annotations

import torch


def randn(*shape, seed: int, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def randint(low: int, high: int, *shape, seed: int) -> torch.Tensor:
    """Integers (token ids, positions) in [low, high), int64, from their own seeded generator."""
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


def random_state_dict(module: torch.nn.Module, seed: int, std: float = 0.3) -> dict:
    """Every parameter drawn from N(0, std): no default inits (ones, zeros) that hide mistakes."""
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(t.shape, generator=g, dtype=torch.float64) * std).to(t.dtype)
            for name, t in module.state_dict().items()}
