"""Known mistakes of exercises/layers.py: LayerNorm, RMSNorm, gelu_tanh, silu, FeedForward and SwiGLU.
Each yields (the sentence a student reads, the wrong value for the same inputs)."""
from __future__ import annotations

import torch

from . import linear

LN_UNBIASED = "the variance is unbiased (divides by d - 1); LayerNorm uses the biased variance (divide by d)"
LN_EPS_OUTSIDE = "eps is added outside the square root: (x - mean) / (sqrt(var) + eps); it goes inside, sqrt(var + eps)"
LN_NO_AFFINE = "the learned weight and bias are not applied after normalising"
RMS_MEAN = "the mean is subtracted: RMSNorm only divides by the root mean square, x / sqrt(mean(x^2) + eps)"
RMS_EPS_OUTSIDE = "eps is added outside the square root: x / (sqrt(mean(x^2)) + eps)"
NORM_EPS_IGNORED = "the eps argument is ignored (a fixed value is used)"
GELU_EXACT = ("this is the exact GELU, x * Phi(x) with erf; GPT-2 uses the tanh approximation "
              "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")
RELU = "this is ReLU; the course's FeedForward uses GELU (tanh approximation)"
SWIGLU_SWAPPED = "the SwiGLU branches are swapped: silu goes on gate_proj(x), not on up_proj(x)"
SILU_WRONG = "SiLU is x * sigmoid(x)"


def layernorm_mistakes(x, weight, bias, eps):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    w, b = weight.double(), bias.double()
    yield LN_UNBIASED, (x - mean) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps) * w + b
    yield LN_EPS_OUTSIDE, (x - mean) / (torch.sqrt(var) + eps) * w + b
    yield LN_NO_AFFINE, (x - mean) / torch.sqrt(var + eps)
    for other in (1e-5, 1e-6, 1e-12):
        if other != eps:
            yield NORM_EPS_IGNORED, (x - mean) / torch.sqrt(var + other) * w + b


def rmsnorm_mistakes(x, weight, eps):
    x, w = x.double(), weight.double()
    centred = x - x.mean(-1, keepdim=True)
    yield RMS_MEAN, centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * w
    yield RMS_EPS_OUTSIDE, x / (torch.sqrt(x.pow(2).mean(-1, keepdim=True)) + eps) * w
    for other in (1e-5, 1e-6):
        if other != eps:
            yield NORM_EPS_IGNORED, x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + other) * w


def gelu_mistakes(x):
    yield GELU_EXACT, torch.nn.functional.gelu(x.double())
    yield RELU, torch.relu(x.double())


def silu_mistakes(x):
    yield SILU_WRONG, torch.sigmoid(x.double())
    yield SILU_WRONG, x.double() * torch.tanh(x.double())


def feedforward_mistakes(state, x):
    h = linear(x, state, "fc1")
    yield GELU_EXACT, linear(torch.nn.functional.gelu(h), state, "fc2")
    yield RELU, linear(torch.relu(h), state, "fc2")


def swiglu_mistakes(state, x):
    gate, up = linear(x, state, "gate_proj"), linear(x, state, "up_proj")
    yield SWIGLU_SWAPPED, linear(torch.nn.functional.silu(up) * gate, state, "down_proj")
    yield GELU_EXACT, linear(torch.nn.functional.gelu(gate) * up, state, "down_proj")
