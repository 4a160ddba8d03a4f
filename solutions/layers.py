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
        ### BEGIN SOLUTION
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d) -> (..., d)."""
        ### BEGIN SOLUTION
        h = x.float() if x.dtype in HALF else x  # statistics of half inputs in float32
        mean = h.mean(dim=-1, keepdim=True)
        var = ((h - mean) ** 2).mean(dim=-1, keepdim=True)  # biased: divide by d
        normed = (h - mean) / torch.sqrt(var + self.eps)
        return (normed * self.weight + self.bias).to(x.dtype)
        ### END SOLUTION


class RMSNorm(nn.Module):
    """RMSNorm over the last dim: x / sqrt(mean(x^2) + eps) * weight  (no mean, no bias).

    Parameter: ``weight`` (ones) of shape (d,). Computed in at least float32 (half inputs
    are upcast, float64 stays float64) and cast back to the caller's dtype.
    """

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        ### BEGIN SOLUTION
        self.weight = nn.Parameter(torch.ones(d))
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d) -> (..., d)."""
        ### BEGIN SOLUTION
        h = x.float() if x.dtype in HALF else x
        rms = torch.sqrt(h.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (h / rms * self.weight).to(x.dtype)
        ### END SOLUTION


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2):
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))).
    """
    ### BEGIN SOLUTION
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    ### END SOLUTION


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish): x * sigmoid(x) = x / (1 + exp(-x))."""
    ### BEGIN SOLUTION
    return x * torch.sigmoid(x)
    ### END SOLUTION


class FeedForward(nn.Module):
    """GPT-2's position-wise feed-forward network: fc2(gelu_tanh(fc1(x))).

    fc1: Linear(d_model, d_ff), fc2: Linear(d_ff, d_model), both with ``bias=bias``.
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = True):
        super().__init__()
        ### BEGIN SOLUTION
        self.fc1 = nn.Linear(d_model, d_ff, bias=bias)
        self.fc2 = nn.Linear(d_ff, d_model, bias=bias)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        ### BEGIN SOLUTION
        return self.fc2(gelu_tanh(self.fc1(x)))
        ### END SOLUTION


class SwiGLU(nn.Module):
    """Llama's gated feed-forward network: down_proj(silu(gate_proj(x)) * up_proj(x)).

    gate_proj, up_proj: Linear(d_model, d_ff); down_proj: Linear(d_ff, d_model); no biases.
    The gate (the branch through silu) is ``gate_proj``.
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        ### BEGIN SOLUTION
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)
        ### END SOLUTION

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model)."""
        ### BEGIN SOLUTION
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))
        ### END SOLUTION
