"""Hidden suite: exercises/flash_attention_triton.py (lecture 06).

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set by the
grader for the worker), at small sizes and in float32: the interpreter mishandles bfloat16
(grading notes). The worker counts kernel launches and forbids torch's matmul and softmax
while the function runs, so a torch fallback scores nothing.
"""
import math

import pytest
import torch

from autograder.compare import check_tensor
from autograder.inputs import randn

CASES = {
    # name: (b, h, n_q, n_k, d, causal)
    "square": (1, 2, 32, 32, 16, False),
    "odd-length": (2, 1, 37, 37, 16, False),
    "causal": (1, 2, 33, 33, 32, True),
    "causal-decode-offset": (1, 2, 7, 30, 16, True),
    "cross-lengths": (1, 1, 20, 45, 16, False),
}


@pytest.mark.points(2)
@pytest.mark.parametrize("name", CASES)
def test_triton_kernel_output(worker, name):
    """the Triton kernel's output matches attention (float32)."""
    b, h, n_q, n_k, d, causal = CASES[name]
    q, k, v = (randn(b, h, n, d, seed=s, dtype=torch.float32) for s, n in ((1, n_q), (2, n_k), (3, n_k)))
    got = worker.call("@triton_run", q, k, v, causal, timeout=120)
    assert got["launches"] >= 1, "triton_flash_attention returned without launching a @triton.jit kernel"
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(d)
    if causal:
        s = s.masked_fill(torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q), float("-inf"))
    expected = torch.softmax(s, -1) @ v.double()
    magnitude = s.masked_fill(torch.isinf(s), 0).abs().max().item()
    check_tensor(got["out"], expected, f"triton_flash_attention ({name}, {b}x{h}x{n_q}x{d})", dtype=torch.float32,
                 n_terms=n_k + d, magnitude=magnitude)
