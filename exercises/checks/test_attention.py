"""Public checks for exercises/attention.py: shapes and one small worked example each."""
import math

import torch


def test_softmax_small_example(attention):
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    e = [math.exp(1), math.exp(2), math.exp(3)]
    expected = torch.tensor([[v / sum(e) for v in e], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(attention.softmax(x, dim=-1), expected)


def test_softmax_all_masked_row_is_zero(attention):
    x = torch.full((1, 4), float("-inf"))
    assert torch.equal(attention.softmax(x, dim=-1), torch.zeros(1, 4))


def test_causal_mask_small(attention):
    expected = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    assert torch.equal(attention.causal_mask(3), expected)
    assert attention.causal_mask(2, 4).shape == (2, 4)


def test_attention_shapes(attention):
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    assert attention.scaled_dot_product_attention(q, k, v).shape == (2, 3, 5, 4)


def test_attention_one_key_returns_its_value(attention):
    # with a single key the softmax weight is 1, so each query returns that key's value
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 1, 8), torch.randn(1, 1, 3)
    out = attention.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, v.expand(1, 4, 3))


def test_repeat_kv_shape(attention):
    assert attention.repeat_kv(torch.randn(2, 2, 5, 4), 3).shape == (2, 6, 5, 4)


def test_multi_head_attention_shapes(attention):
    mha = attention.MultiHeadAttention(d_model=32, n_heads=8, n_kv_heads=2)
    assert mha.q_proj.weight.shape == (32, 32)
    assert mha.k_proj.weight.shape == (8, 32)  # 2 kv heads * head_dim 4
    x, context = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    assert mha(x, is_causal=True).shape == (2, 5, 32)
    assert mha(x, context=context).shape == (2, 5, 32)
