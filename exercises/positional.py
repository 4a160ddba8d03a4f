# Exercise 3 of 13: positional. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/03_positional_information.ipynb. Needs no other exercise.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise positional` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: absolute and linear-bias positional information (lecture 03).

- ``sinusoidal_encoding``: the fixed encoding of Vaswani et al. (2017), added to embeddings.
- ``alibi_slopes`` / ``alibi_bias``: ALiBi (Press et al., 2022), a per-head penalty on the
  attention scores that grows linearly with the distance between query and key.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: ``sinusoidal_encoding`` is float32 (an API-named angle table); a float64 model adds it
as float64, carrying only its float32 rounding.
"""
from __future__ import annotations

import math

import torch


def sinusoidal_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """Sinusoidal positional encoding, float32 of shape (max_len, d_model).

    PE[pos, 2i]     = sin(pos / 10000 ** (2i / d_model))
    PE[pos, 2i + 1] = cos(pos / 10000 ** (2i / d_model))
    Hint: build the (max_len, d_model/2) table of angles pos * 10000 ** (-2i/d_model) once.
    """
    raise NotImplementedError("sinusoidal_encoding: write this part (see the docstring)")


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi slopes, float32 of shape (n_heads,).

    For n_heads a power of two: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8).
    Otherwise, with p the largest power of two below n_heads: the p slopes for p heads,
    followed by the first n_heads - p entries of every other slope (indices 0, 2, 4, ...)
    of the sequence for 2p heads.
    Example: n_heads=6 -> slopes(4) + [slopes(8)[0], slopes(8)[2]].
    """
    raise NotImplementedError("alibi_slopes: write this part (see the docstring)")


def alibi_bias(n_heads: int, n_q: int, n_k: int) -> torch.Tensor:
    """ALiBi bias added to attention scores, float32 of shape (n_heads, n_q, n_k).

    Query i sits at position n_k - n_q + i. For a key j at or before it the bias is
    -slope[h] * (query_position - j), a penalty growing with distance; keys after the query
    get 0 (the causal mask removes them anyway).
    """
    raise NotImplementedError("alibi_bias: write this part (see the docstring)")
