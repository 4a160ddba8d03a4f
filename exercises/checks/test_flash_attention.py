"""Public checks for exercises/flash_attention.py and flash_attention_triton.py."""
import math
import os

import pytest
import torch


def naive(q, k, v, is_causal=False):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if is_causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


@pytest.mark.parametrize("is_causal", [False, True])
def test_forward_small(flash_attention, is_causal):
    q, k, v = torch.randn(3, 2, 1, 40, 16).unbind(0)
    o, lse = flash_attention.flash_attention_forward(q, k, v, is_causal, block_q=16, block_k=16)
    expected_o, expected_lse = naive(q, k, v, is_causal)
    torch.testing.assert_close(o, expected_o)
    torch.testing.assert_close(lse, expected_lse)


def test_backward_small(flash_attention):
    q, k, v = (torch.randn(1, 2, 20, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    torch.autograd.gradcheck(lambda q, k, v: flash_attention.flash_attention(q, k, v, True), (q, k, v))


def test_triton_small(flash_attention_triton):
    q, k, v = torch.randn(3, 1, 2, 32, 16).unbind(0)
    torch.testing.assert_close(flash_attention_triton.triton_flash_attention(q, k, v), naive(q, k, v)[0],
                               atol=1e-5, rtol=1e-5)
