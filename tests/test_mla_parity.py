"""The reference Multi-head Latent Attention (solutions/mla.py) equals Hugging Face's
DeepseekV3Attention (rope_interleave=False, eager attention) given the same weights: both
query paths, uneven positions, the absorbed-weights path, and a prefill followed by cached
decode steps (Hugging Face's DynamicCache holding the latent and the rotated key, ours an
MLACache). Built offline from a config; weights are random, nothing is downloaded."""
import math
import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import DeepseekV3Config, DynamicCache  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3Attention, DeepseekV3RotaryEmbedding)

from autograder.mistakes.mla import mla_reference  # noqa: E402
from solutions.mla import MLACache, MultiHeadLatentAttention  # noqa: E402

DIMS = dict(d_model=40, n_heads=6, kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=10)
THETA = 5000.0  # not the default, so a theta that is dropped on one side shows
# float32: both sides sum products of length <= 40 and a softmax over <= 21 keys in another
# order; each rounding ~eps32 = 1.2e-7 relative, sqrt(40) of them per stage through 4 stages,
# on outputs up to ~8. Measured: 1.9e-6 absolute on outputs up to 7.7 (both query paths,
# both attention paths). 1e-5 + 1e-5 * |expected| leaves room for other draws.
F32_TOL = 1e-5
# float64: Hugging Face's eager softmax runs in float32 (softmax(..., dtype=float32)), so its
# float64 output is float32-accurate there: weights off by ~eps32 relative. Both sides take
# float32 RoPE angles (the precision contract), ~p * eps32 at p <= 20. Measured: 6.8e-7.
F64_TOL = 3e-6


def hugging_face(q_lora_rank, seed, dtype):
    config = DeepseekV3Config(
        hidden_size=DIMS["d_model"], num_attention_heads=DIMS["n_heads"], num_key_value_heads=DIMS["n_heads"],
        kv_lora_rank=DIMS["kv_lora_rank"], q_lora_rank=q_lora_rank, qk_nope_head_dim=DIMS["qk_nope_head_dim"],
        qk_rope_head_dim=DIMS["qk_rope_head_dim"], v_head_dim=DIMS["v_head_dim"], rope_interleave=False,
        rope_parameters={"rope_type": "default", "rope_theta": THETA}, attention_bias=False,
        attention_dropout=0.0, num_hidden_layers=1, vocab_size=16, max_position_embeddings=64)
    config._attn_implementation = "eager"
    attention = DeepseekV3Attention(config, layer_idx=0).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in attention.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(1 + noise if name.endswith("layernorm.weight") else noise)  # gains near 1
    return attention.to(dtype), DeepseekV3RotaryEmbedding(config)


def ours_from(hf, q_lora_rank, dtype):
    ours = MultiHeadLatentAttention(**DIMS, q_lora_rank=q_lora_rank, rope_theta=THETA).to(dtype)
    ours.load_state_dict(hf.state_dict(), strict=True)  # the API's names are Hugging Face's
    return ours.eval()


def run_hf(hf, rotary, x, positions, cache=None, past=0):
    s = x.shape[1]
    cos_sin = rotary(x, positions)
    query = torch.arange(s)[:, None] + past
    mask = torch.zeros(s, past + s, dtype=x.dtype).masked_fill(torch.arange(past + s)[None] > query, float("-inf"))
    return hf(x, cos_sin, mask[None, None], cache=cache)[0]


@pytest.mark.parametrize("q_lora_rank", [None, 8], ids=["q_proj", "q-low-rank"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_forward_equals_hugging_face(q_lora_rank, dtype):
    hf, rotary = hugging_face(q_lora_rank, seed=1, dtype=dtype)
    ours = ours_from(hf, q_lora_rank, dtype)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, DIMS["d_model"], generator=g, dtype=torch.float64).to(dtype)
    positions = torch.tensor([[0, 1, 2, 4, 7, 8, 11, 15, 20], [3, 4, 5, 6, 7, 9, 12, 13, 14]])  # uneven, per row
    tol = F32_TOL if dtype == torch.float32 else F64_TOL
    with torch.no_grad():
        expected = run_hf(hf, rotary, x, positions)
        for absorb in (False, True):
            torch.testing.assert_close(ours(x, positions=positions, absorb=absorb), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("absorb", [False, True], ids=["expanded", "absorbed"])
def test_cached_decoding_equals_hugging_face(absorb):
    hf, rotary = hugging_face(8, seed=3, dtype=torch.float32)
    ours = ours_from(hf, 8, torch.float32)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, DIMS["d_model"], generator=g)
    hf_cache, cache = DynamicCache(), MLACache(1, 2, 8, DIMS["kv_lora_rank"], DIMS["qk_rope_head_dim"])
    with torch.no_grad():
        for start, end in [(0, 5), (5, 6), (6, 7), (7, 8)]:  # prefill of 5, then one token per step
            positions = torch.arange(start, end)[None].expand(2, -1)
            expected = run_hf(hf, rotary, x[:, start:end], positions, cache=hf_cache, past=start)
            got = ours(x[:, start:end], cache=cache.layer(0), absorb=absorb)  # positions by default
            torch.testing.assert_close(got, expected, atol=F32_TOL, rtol=F32_TOL)
    # what both caches hold: Hugging Face's layer keeps the latent as "keys" (b, 1, s, r) and the
    # rotated shared key as "values" (b, 1, s, rope); ours the same without the head axis
    layer = hf_cache.layers[0]
    torch.testing.assert_close(cache.latent[0], layer.keys[:, 0], atol=F32_TOL, rtol=F32_TOL)
    torch.testing.assert_close(cache.k_rope[0], layer.values[:, 0], atol=F32_TOL, rtol=F32_TOL)


def test_scale_is_hugging_faces():
    hf, _ = hugging_face(None, seed=0, dtype=torch.float32)
    assert hf.scaling == pytest.approx(1 / math.sqrt(DIMS["qk_nope_head_dim"] + DIMS["qk_rope_head_dim"]))


@pytest.mark.parametrize("q_lora_rank", [None, 8], ids=["q_proj", "q-low-rank"])
def test_grader_reference_equals_hugging_face(q_lora_rank):
    """The grader's knob reference (autograder/mistakes/mla.py, all knobs off) is the truth too:
    the named mistakes are computed from it."""
    hf, rotary = hugging_face(q_lora_rank, seed=5, dtype=torch.float64)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 7, DIMS["d_model"], generator=g, dtype=torch.float64)
    positions = torch.tensor([0, 2, 3, 5, 8, 9, 13])
    config = dict(DIMS, q_lora_rank=q_lora_rank, rope_theta=THETA)
    with torch.no_grad():
        expected = run_hf(hf, rotary, x, positions[None].expand(2, -1))
    got = mla_reference(hf.state_dict(), config, x, positions)
    torch.testing.assert_close(got, expected, atol=F64_TOL, rtol=F64_TOL)
