"""The tolerances in autograder.compare hold for correct implementations written in other
ways and at other precisions, and are far below what known mistakes produce.

Measured on this machine (largest error / allowed error over the draws below):
correct implementations reach 0.30 (float32), 0.15 (bfloat16), 0.11 (float16): 3-9x inside.
Known mistakes sit 60,000x (float32) and 13x (float16) outside. In bfloat16 a missing
1/sqrt(d_k) can be as little as 1.6x outside: bfloat16 tests check dtype and coarse values,
while the float32/float64 tests are the ones that tell the mistakes apart.
"""
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from autograder import mistakes
from autograder.compare import angle_tolerance, tolerance
from autograder.inputs import randn
from solutions import attention as ref
from solutions import rope as ref_rope
from tests.conftest import FIXTURES


def _load(name, module="attention"):
    spec = importlib.util.spec_from_file_location(f"variant_{name}_{module}", FIXTURES / "variants" / name / f"{module}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EINSUM, LOOPS = _load("einsum"), _load("loops")
COMPLEX = _load("complex", "rope")
CORRECT = {
    "reference": ref.scaled_dot_product_attention,
    "einsum-native-precision": EINSUM.scaled_dot_product_attention,
    "loops-upcast-to-float32": LOOPS.scaled_dot_product_attention,
    "torch-sdpa": lambda q, k, v, is_causal=False: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal),
}
SHAPES = [(8, 5), (16, 6), (64, 32)]  # (d_k, n), the range the hidden suite uses and beyond


def ratio(actual, expected, tol):
    """Largest |actual - expected| / (tol + tol * |expected|): above 1 fails a test."""
    a, e = actual.double(), expected.double()
    return ((a - e).abs() / (tol * (1 + e.abs()))).max().item()


def draws(dtype, n_seeds):
    for seed in range(n_seeds):
        for d, n in SHAPES:
            q, k, v = (randn(2, n, d, seed=1000 + 3 * seed + i, dtype=dtype, scale=1.5) for i in range(3))
            expected = ref.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
            magnitude = (q.double() @ k.double().transpose(-2, -1)).abs().max().item() / math.sqrt(d)
            yield q, k, v, expected, tolerance(dtype, max(d, n), magnitude)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_correct_implementations_stay_well_inside_the_tolerance(dtype):
    worst = {name: 0.0 for name in CORRECT}
    for q, k, v, expected, tol in draws(dtype, n_seeds=40):
        for name, sdpa in CORRECT.items():
            worst[name] = max(worst[name], ratio(sdpa(q, k, v, is_causal=True), expected, tol))
    assert max(worst.values()) < 0.5, worst  # a 2x margin over the worst of 120 draws


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_known_mistakes_are_far_outside_the_tolerance(dtype):
    best = {}
    for q, k, v, expected, tol in draws(dtype, n_seeds=10):
        for text, wrong in mistakes.sdpa_mistakes(q, k, v, is_causal=True):
            if text in (mistakes.NAN_ROWS, mistakes.SOFTMAX_NO_MAX):
                continue  # equal to the right answer on rows with an allowed key and small scores
            best[text] = min(best.get(text, math.inf), ratio(wrong, expected, tol))
    assert min(best.values()) > (1.2 if dtype == torch.bfloat16 else 5), best


# ---------------------------------------------------------------------------------------
# RoPE: angles in float32, the tolerance grows with the position (angle_tolerance)
# ---------------------------------------------------------------------------------------
def _hugging_face_rope(x, positions):
    """Hugging Face Llama's rotate_half RoPE, with cos/sin cast to x's dtype as it does."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    d = x.shape[-1]
    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=2 * d, num_attention_heads=2, head_dim=d))
    cos, sin = rotary(x, positions[None])
    return apply_rotary_pos_emb(x, x, cos.to(x.dtype), sin.to(x.dtype))[0]


ROPE_IMPLEMENTATIONS = {
    "reference": lambda x, p: ref_rope.apply_rope(x, p),
    "complex-numbers": lambda x, p: COMPLEX.apply_rope(x, p),
    "hugging-face-native-dtype": _hugging_face_rope,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_rope_implementations_stay_inside_the_angle_tolerance(dtype):
    worst = {name: 0.0 for name in ROPE_IMPLEMENTATIONS}
    for seed in range(20):
        for d, high in [(8, 50), (64, 100_000), (128, 5000)]:
            x = randn(2, 2, 5, d, seed=seed, dtype=dtype)
            positions = torch.randint(0, high, (5,), generator=torch.Generator().manual_seed(seed)).sort().values
            expected = mistakes.rope_reference(x, positions)
            tol = angle_tolerance(dtype, positions.max().item(), x.abs().max().item())
            for name, apply in ROPE_IMPLEMENTATIONS.items():
                worst[name] = max(worst[name], ratio(apply(x, positions), expected, tol))
    # measured: at most 0.19 (Hugging Face in bfloat16), 0.04 in float32
    assert max(worst.values()) < 0.5, worst


def test_rope_mistakes_are_far_outside_the_angle_tolerance():
    x = randn(2, 2, 5, 64, seed=0, dtype=torch.float32)
    positions = torch.tensor([3, 10, 11, 40, 41])
    expected = mistakes.rope_reference(x, positions)
    tol = angle_tolerance(torch.float32, 41, x.abs().max().item())
    for text, wrong in mistakes.rope_mistakes(x, positions):
        assert ratio(wrong, expected, tol) > 100, text
