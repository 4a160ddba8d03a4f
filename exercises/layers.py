# Exercise 4 of 13: layers. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/04_transformer_block.ipynb. Needs no other exercise.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise layers` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: normalisation layers, activations and feed-forward networks (lecture 04).

LayerNorm (GPT-2, the original Transformer) and RMSNorm (Llama); GELU with the tanh
approximation (GPT-2) and SiLU; the 4x-wide feed-forward network of GPT-2 and the gated
SwiGLU of Llama. Everything from elementary tensor operations.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: float64 inputs are normalised in float64; half inputs compute their statistics in float32
and return their own dtype.
"""
from __future__ import annotations

import math

import torch
from torch import nn

HALF = (torch.float16, torch.bfloat16)


class LayerNorm(nn.Module):
    """LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * weight + bias.

    var is the biased variance (divide by d, not d - 1), and eps sits inside the square
    root. Parameters: ``weight`` (ones) and ``bias`` (zeros), both of shape (d,).
    Do not call ``F.layer_norm``. Keep the caller's dtype.
    """

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        raise NotImplementedError("LayerNorm.__init__: write this part (see the docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d) -> (..., d)."""
        raise NotImplementedError("LayerNorm.forward: write this part (see the docstring)")


class RMSNorm(nn.Module):
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight  (no mean, no bias).

    Parameter: ``weight`` (ones) of shape (d,). Computed in at least float32 (half inputs
    are upcast, float64 stays float64) and cast back to the caller's dtype.
    """

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        raise NotImplementedError("RMSNorm.__init__: write this part (see the docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d) -> (..., d)."""
        raise NotImplementedError("RMSNorm.forward: write this part (see the docstring)")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2):
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))).
    """
    raise NotImplementedError("gelu_tanh: write this part (see the docstring)")


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish): x * sigmoid(x) = x / (1 + exp(-x))."""
    raise NotImplementedError("silu: write this part (see the docstring)")


class FeedForward(nn.Module):
    """GPT-2's position-wise feed-forward network: fc2(gelu_tanh(fc1(x))).

    fc1: Linear(d_model, d_ff), fc2: Linear(d_ff, d_model), both with ``bias=bias``.
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = True):
        super().__init__()
        raise NotImplementedError("FeedForward.__init__: write this part (see the docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        raise NotImplementedError("FeedForward.forward: write this part (see the docstring)")


class SwiGLU(nn.Module):
    """Llama's gated feed-forward network: down_proj(silu(gate_proj(x)) * up_proj(x)).

    gate_proj, up_proj: Linear(d_model, d_ff); down_proj: Linear(d_ff, d_model); no biases.
    The gate (the branch through silu) is ``gate_proj``.
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        raise NotImplementedError("SwiGLU.__init__: write this part (see the docstring)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        raise NotImplementedError("SwiGLU.forward: write this part (see the docstring)")
