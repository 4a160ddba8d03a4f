"""Known mistakes of exercises/rope.py: rope_cos_sin and apply_rope.
Each yields (the sentence a student reads, the wrong value for the same inputs)."""
from __future__ import annotations

import torch

ROPE_OTHER_LAYOUT = {
    False: ("the half-split layout was asked for (dim i paired with i + d/2, as in GPT-NeoX and "
            "Hugging Face Llama) but the result pairs (2i, 2i+1), the interleaved layout"),
    True: ("the interleaved layout was asked for (pairs (2i, 2i+1), as in RoFormer and Meta's "
           "Llama) but the result pairs dim i with i + d/2, the half-split layout"),
}
ROPE_SIN_COS_SWAPPED = "sin and cos are swapped: out = x*cos + rotate(x)*sin"
ROPE_REVERSED = ("the rotation goes the wrong way (angle -p*theta^(-2i/d)): rotate_half is "
                 "[-x2, x1], and an interleaved pair (a, b) becomes (a cos - b sin, b cos + a sin)")
ROPE_FREQ_EXPONENT = "the frequency exponent is -i/d instead of -2i/d (i counts pairs: theta ** (-2i/d))"
ROPE_OFF_BY_ONE = "the positions are off by one"
ROPE_NOT_APPLIED = "no rotation was applied (the output equals the input)"
ROPE_POSITIONS_IGNORED = "the given positions were ignored: arange(s) was used instead"


def rope_reference(x, positions, theta=10000.0, interleaved=False, exponent=2.0, sign=1.0,
                   swap=False, shift=0):
    """RoPE in float64, with the knobs that plausible mistakes turn (all off: the truth)."""
    d = x.shape[-1]
    half = d // 2
    inv_freq = float(theta) ** (-exponent * torch.arange(half, dtype=torch.float64) / d)
    angles = (positions.to(torch.float64) + shift)[..., None] * inv_freq  # (..., s, d/2)
    cos, sin = angles.cos(), sign * angles.sin()
    if swap:
        cos, sin = sin, cos
    x = x.double()
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope_mistakes(x, positions, theta=10000.0, interleaved=False):
    kw = dict(theta=theta, interleaved=interleaved)
    yield ROPE_OTHER_LAYOUT[interleaved], rope_reference(x, positions, theta, not interleaved)
    yield ROPE_SIN_COS_SWAPPED, rope_reference(x, positions, **kw, swap=True)
    yield ROPE_REVERSED, rope_reference(x, positions, **kw, sign=-1.0)
    yield ROPE_FREQ_EXPONENT, rope_reference(x, positions, **kw, exponent=1.0)
    yield ROPE_OFF_BY_ONE, rope_reference(x, positions, **kw, shift=1)
    yield ROPE_OFF_BY_ONE, rope_reference(x, positions, **kw, shift=-1)
    yield ROPE_NOT_APPLIED, x.double()
    s = x.shape[-2]
    yield ROPE_POSITIONS_IGNORED, rope_reference(x, torch.arange(s), **kw)


def rope_cos_sin_reference(head_dim, positions, theta=10000.0, exponent=2.0, shift=0):
    half = head_dim // 2
    inv_freq = float(theta) ** (-exponent * torch.arange(half, dtype=torch.float64) / head_dim)
    angles = (positions.to(torch.float64) + shift)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rope_cos_sin_mistakes(head_dim, positions, theta=10000.0, which=0):
    """Wrong cos (which=0) or sin (which=1) tables."""
    yield ROPE_FREQ_EXPONENT, rope_cos_sin_reference(head_dim, positions, theta, exponent=1.0)[which]
    yield ROPE_OFF_BY_ONE, rope_cos_sin_reference(head_dim, positions, theta, shift=1)[which]
    yield ROPE_SIN_COS_SWAPPED, rope_cos_sin_reference(head_dim, positions, theta)[1 - which]
    cos, sin = rope_cos_sin_reference(head_dim, positions, theta)
    interleaved = (cos, sin)[which][..., : head_dim // 2].repeat_interleave(2, dim=-1)
    yield ROPE_OTHER_LAYOUT[False], interleaved
