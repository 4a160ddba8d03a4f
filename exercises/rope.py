# Exercise 2 of 13: rope. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/03_positional_information.ipynb. Needs no other exercise.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise rope` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: rotary position embedding, RoPE (lecture 03).

RoPE rotates each pair of dimensions of a query or key by an angle proportional to the
token's position, so that the dot product of a rotated query at position m and a rotated
key at position n depends only on m - n.

Pair i (of d/2 pairs) at position p is rotated by the angle  p * theta ** (-2i / d).

Two layouts decide which dimensions form pair i:
- half-split (the default; GPT-NeoX, Hugging Face Llama): dim i with dim i + d/2;
- interleaved (``interleaved=True``; RoFormer, Meta's Llama): dims 2i and 2i + 1.
They are the same rotation up to a permutation of the dimensions, which is why a checkpoint
converted between the two permutes the rows of its q and k projections.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: the angles (and cos/sin) are float32 whatever the input's dtype; everything else stays in the
input's dtype, so a float64 result differs from exact RoPE by about position * 1.2e-7 radians.
"""
from __future__ import annotations

import torch


def rope_cos_sin(head_dim: int, positions: torch.Tensor, theta: float = 10000.0):
    """Cosines and sines of the RoPE angles, in the half-split layout.

    positions: (..., s) integer positions.
    Returns (cos, sin), each float32 of shape (..., s, head_dim), where entries i and
    i + head_dim/2 both hold the angle of pair i:  positions * theta ** (-2i / head_dim).
    Hint: compute the frequencies and the angles in float32 whatever the caller's dtype.
    """
    raise NotImplementedError("rope_cos_sin: write this part (see the docstring)")


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0,
               interleaved: bool = False) -> torch.Tensor:
    """Rotate pairs of dims of ``x`` by position-dependent angles.

    x: (..., s, head_dim) with head_dim even (odd -> ValueError).
    positions: (s,), or a shape that broadcasts against x.shape[:-1] (for x (b, h, s, d)
        and per-sequence positions pass (b, 1, s)).
    Half-split layout:  out = x * cos + rotate_half(x) * sin,
        rotate_half([x1, x2]) = [-x2, x1]  (x1, x2 the two halves of the last dim).
    Interleaved layout: for each pair (a, b) = (x[2i], x[2i+1]):
        (a cos - b sin,  b cos + a sin).
    Angles are computed in float32; the result has x's dtype.
    Hint: ``rope_cos_sin`` gives the half-split cos/sin; for the interleaved layout take
    the first half of the angles and ``repeat_interleave`` them.
    """
    raise NotImplementedError("apply_rope: write this part (see the docstring)")
