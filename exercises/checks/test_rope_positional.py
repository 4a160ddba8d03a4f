"""Public checks for exercises/rope.py and exercises/positional.py."""
import math

import pytest
import torch


def test_rope_keeps_shape_dtype_and_norm(rope):
    x = torch.randn(2, 4, 6, 8)
    out = rope.apply_rope(x, torch.arange(6))
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_rope_position_zero_is_identity(rope):
    x = torch.randn(1, 3, 4)
    torch.testing.assert_close(rope.apply_rope(x, torch.zeros(3, dtype=torch.long)), x)


def test_rope_small_example_half_split(rope):
    # head_dim 2: one pair (x0, x1) rotated by the angle p * theta**0 = p
    x = torch.tensor([[1.0, 0.0]])
    out = rope.apply_rope(x, torch.tensor([1]))
    torch.testing.assert_close(out, torch.tensor([[math.cos(1.0), math.sin(1.0)]]))


def test_rope_odd_head_dim_raises(rope):
    with pytest.raises(ValueError):
        rope.apply_rope(torch.randn(2, 3), torch.arange(2))


def test_rope_cos_sin_shapes(rope):
    cos, sin = rope.rope_cos_sin(8, torch.arange(5))
    assert cos.shape == sin.shape == (5, 8) and cos.dtype == torch.float32


def test_sinusoidal_first_rows(positional):
    pe = positional.sinusoidal_encoding(4, 6)
    assert pe.shape == (4, 6)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert math.isclose(pe[1, 0].item(), math.sin(1.0), rel_tol=1e-6)


def test_alibi_slopes_for_8_heads(positional):
    expected = torch.tensor([2.0 ** (-i) for i in range(1, 9)])
    torch.testing.assert_close(positional.alibi_slopes(8), expected)


def test_alibi_bias_shape_and_sign(positional):
    bias = positional.alibi_bias(4, 3, 5)
    assert bias.shape == (4, 3, 5)
    assert (bias <= 0).all() and bias[:, -1, -1].eq(0).all()
