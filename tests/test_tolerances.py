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
from autograder.compare import tolerance
from autograder.inputs import randn
from solutions import attention as ref
from tests.conftest import FIXTURES


def _load(name):
    spec = importlib.util.spec_from_file_location(f"variant_{name}", FIXTURES / "variants" / name / "attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EINSUM, LOOPS = _load("einsum"), _load("loops")
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
