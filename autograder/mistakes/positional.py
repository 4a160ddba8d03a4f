"""Known mistakes of exercises/positional.py: sinusoidal_encoding, alibi_slopes and alibi_bias.
Each yields (the sentence a student reads, the wrong value for the same inputs)."""
from __future__ import annotations

import math

import torch

from . import query_key_positions

SINUSOID_SWAPPED = "sin and cos are swapped: even dims take sin, odd dims take cos"
SINUSOID_EXPONENT = "the exponent is i/d instead of 2i/d: dims 2i and 2i+1 share the frequency 10000^(-2i/d)"
SINUSOID_HALVES = ("the encoding is laid out as [all sines | all cosines]; this course interleaves "
                   "them: even dims sin, odd dims cos")
ALIBI_NOT_POWER_OF_TWO = ("the slopes for a head count that is not a power of two follow the "
                          "closest-power-of-two rule of Press et al.: slopes(p) followed by every "
                          "other slope of slopes(2p)")
ALIBI_SIGN = "the bias has the wrong sign: it is a penalty, -slope * distance"
ALIBI_NO_OFFSET = ("the bias ignores the offset: with n_q < n_k query i sits at position "
                   "n_k - n_q + i")
ALIBI_SYMMETRIC = "future keys must get 0 (the causal mask removes them), not a penalty on |i - j|"


def sinusoidal_reference(max_len, d_model, exponent=2.0, swap=False, halves=False):
    position = torch.arange(max_len, dtype=torch.float64)[:, None]
    n_sin, n_cos = (d_model + 1) // 2, d_model // 2
    i = torch.arange(n_sin, dtype=torch.float64)
    angles = position * 10000.0 ** (-exponent * i / d_model)  # (max_len, ceil(d/2))
    first, second = (torch.cos, torch.sin) if swap else (torch.sin, torch.cos)
    if halves:
        return torch.cat([first(angles), second(angles[:, :n_cos])], dim=-1)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = first(angles)
    pe[:, 1::2] = second(angles[:, :n_cos])
    return pe


def sinusoidal_mistakes(max_len, d_model):
    yield SINUSOID_SWAPPED, sinusoidal_reference(max_len, d_model, swap=True)
    yield SINUSOID_EXPONENT, sinusoidal_reference(max_len, d_model, exponent=1.0)
    yield SINUSOID_HALVES, sinusoidal_reference(max_len, d_model, halves=True)


def _geometric_slopes(n):
    start = 2.0 ** (-8.0 / n)
    return torch.tensor([start ** (i + 1) for i in range(n)], dtype=torch.float64)


def alibi_slopes_mistakes(n_heads):
    yield ALIBI_NOT_POWER_OF_TWO, _geometric_slopes(n_heads)
    p = 2 ** math.floor(math.log2(n_heads))
    if p != n_heads:  # extra heads taken from the start of slopes(2p) without skipping
        yield ALIBI_NOT_POWER_OF_TWO, torch.cat([_geometric_slopes(p), _geometric_slopes(2 * p)[: n_heads - p]])


def alibi_bias_mistakes(n_heads, n_q, n_k, slopes):
    query, key = query_key_positions(n_q, n_k)
    distance = (query - key).clamp_min(0).double()
    slopes = slopes.double()[:, None, None]
    yield ALIBI_SIGN, slopes * distance
    no_offset = (torch.arange(n_q)[:, None] - key).clamp_min(0).double()
    if n_q != n_k:
        yield ALIBI_NO_OFFSET, -slopes * no_offset
    yield ALIBI_SYMMETRIC, -slopes * (query - key).abs().double()
