"""The reference solutions agree with independent implementations: Hugging Face
transformers (models and helpers built offline from configs) and Meta's complex-number RoPE.
"""
import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from solutions import positional, rope

F32_EPS = torch.finfo(torch.float32).eps


def meta_apply_rotary_emb(x, positions, theta):
    """Meta's Llama formulation (written from its description): pairs (2i, 2i+1) of x as
    complex numbers, multiplied by e^{i * p * theta^(-2i/d)}."""
    d = x.shape[-1]
    freqs = 1.0 / (theta ** (torch.arange(0, d, 2)[: d // 2].float() / d))
    freqs_cis = torch.polar(torch.ones(len(positions), d // 2), torch.outer(positions.float(), freqs))
    x_complex = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2))
    return torch.view_as_real(x_complex * freqs_cis).flatten(-2).type_as(x)


@pytest.mark.parametrize("head_dim,theta", [(8, 10000.0), (64, 10000.0), (128, 500000.0)])
def test_half_split_rope_equals_hugging_face_llama(head_dim, theta):
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                         rope_parameters={"rope_type": "default", "rope_theta": theta})
    rotary = LlamaRotaryEmbedding(config)
    q, k = torch.randn(2, 4, 7, head_dim), torch.randn(2, 4, 7, head_dim)
    positions = torch.tensor([[0, 3, 4, 10, 11, 250, 4000], [1, 2, 3, 4, 5, 6, 7]])
    cos, sin = rotary(q, positions)  # (b, s, d)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, cos, sin)
    ours_q = rope.apply_rope(q, positions[:, None, :], theta)
    ours_k = rope.apply_rope(k, positions[:, None, :], theta)
    # both compute float32 angles, by slightly different formulas (pow vs 1/pow):
    # they may differ by ~position * eps32 (the grading notes)
    tol = 8 * F32_EPS * positions.max().item()
    torch.testing.assert_close(ours_q, hf_q, atol=tol, rtol=0)
    torch.testing.assert_close(ours_k, hf_k, atol=tol, rtol=0)
    our_cos, our_sin = rope.rope_cos_sin(head_dim, positions, theta)
    torch.testing.assert_close(our_cos, cos, atol=tol, rtol=0)
    torch.testing.assert_close(our_sin, sin, atol=tol, rtol=0)


def test_interleaved_rope_equals_meta_complex_form():
    x = torch.randn(3, 5, 9, 16)
    positions = torch.tensor([0, 1, 2, 7, 8, 100, 101, 1000, 2047])
    expected = meta_apply_rotary_emb(x, positions, 10000.0)
    torch.testing.assert_close(rope.apply_rope(x, positions, interleaved=True), expected,
                               atol=8 * F32_EPS * 2047, rtol=0)


def test_layouts_differ_but_agree_after_permuting_dims():
    """The two layouts rotate the same pairs once the dims are reordered: interleaved pair
    (2i, 2i+1) is half-split pair (i, i + d/2). A checkpoint moves between them by permuting
    the rows of its q and k projections in that way; attention scores are unchanged."""
    d = 16
    x = torch.randn(2, 6, d, dtype=torch.float64)
    positions = torch.arange(6)
    assert not torch.allclose(rope.apply_rope(x, positions), rope.apply_rope(x, positions, interleaved=True))
    to_half_split = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # [0,2,4,..,1,3,5,..]
    interleaved = rope.apply_rope(x, positions, interleaved=True)
    half_split = rope.apply_rope(x[..., to_half_split], positions)
    torch.testing.assert_close(interleaved[..., to_half_split], half_split)

    # the same identity on projection weights, as in a checkpoint conversion (one head)
    d_model = 24
    w_q, w_k = torch.randn(d, d_model, dtype=torch.float64), torch.randn(d, d_model, dtype=torch.float64)
    h = torch.randn(6, d_model, dtype=torch.float64)
    scores_meta = (rope.apply_rope(h @ w_q.T, positions, interleaved=True)
                   @ rope.apply_rope(h @ w_k.T, positions, interleaved=True).T)
    scores_hf = (rope.apply_rope(h @ w_q[to_half_split].T, positions)
                 @ rope.apply_rope(h @ w_k[to_half_split].T, positions).T)
    torch.testing.assert_close(scores_meta, scores_hf)


@pytest.mark.parametrize("n_heads", [1, 2, 6, 8, 12, 16, 24])
def test_alibi_slopes_equal_bloom(n_heads):
    """BLOOM's build_alibi_tensor holds slope * key_position: its second column is the slope."""
    alibi = build_alibi_tensor(torch.ones(1, 4, dtype=torch.long), n_heads, torch.float32)
    torch.testing.assert_close(positional.alibi_slopes(n_heads), alibi[:, 0, 1])


def test_alibi_bias_is_bloom_up_to_a_per_row_constant():
    """Softmax ignores a constant per query row: BLOOM's slope * j and ALiBi's
    -slope * (i - j) differ by slope * i, the same for every key of row i."""
    n_heads, n = 6, 7
    bloom = build_alibi_tensor(torch.ones(1, n, dtype=torch.long), n_heads, torch.float32)[:, 0, :]  # (h, n)
    ours = positional.alibi_bias(n_heads, n, n)  # (h, n, n)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    difference = (bloom[:, None, :] - ours).masked_fill(~causal, float("nan"))
    row_constant = positional.alibi_slopes(n_heads)[:, None] * torch.arange(n)[None, :]  # slope * i
    torch.testing.assert_close(difference.nanmean(dim=-1), row_constant)


def test_sinusoidal_equals_the_paper_formula_in_float64():
    pe = positional.sinusoidal_encoding(100, 32).double()
    pos, i = torch.meshgrid(torch.arange(100.0, dtype=torch.float64), torch.arange(16.0, dtype=torch.float64),
                            indexing="ij")
    angle = pos / 10000 ** (2 * i / 32)
    # float32 angles drift by about max_len * eps32 (grading notes)
    torch.testing.assert_close(pe[:, 0::2], angle.sin(), atol=8 * F32_EPS * 100, rtol=0)
    torch.testing.assert_close(pe[:, 1::2], angle.cos(), atol=8 * F32_EPS * 100, rtol=0)
    assert math.isclose(pe[1, 0].item(), math.sin(1.0), rel_tol=1e-6)
