"""The reference FlashAttention agrees with torch.nn.functional.scaled_dot_product_attention
(outputs and gradients) across shapes, causal and not, and the Triton reference kernel
agrees with it under the interpreter."""
import os

import pytest
import torch
import torch.nn.functional as F

from solutions.flash_attention import flash_attention, flash_attention_forward

CASES = [  # (batch dims, n, d, causal)
    ((2, 3), 70, 16, False),
    ((2, 3), 70, 16, True),
    ((1,), 129, 64, True),
    ((), 5, 8, False),
]


@pytest.mark.parametrize("batch,n,d,causal", CASES)
def test_forward_and_gradients_equal_torch_sdpa(batch, n, d, causal):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(*batch, n, d, generator=g, dtype=torch.float64) for _ in range(3))
    grad = torch.randn(*batch, n, d, generator=g, dtype=torch.float64)
    ours = [t.clone().requires_grad_(True) for t in (q, k, v)]
    theirs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = flash_attention(*ours, is_causal=causal)
    expected = F.scaled_dot_product_attention(*theirs, is_causal=causal)
    # float64 on both sides: only summation order differs
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-12, rtol=1e-12)


def test_float32_and_block_sizes_do_not_change_the_result():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 100, 32, generator=g) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for block_q, block_k in [(64, 64), (16, 48), (100, 7), (128, 128)]:
        o, _ = flash_attention_forward(q, k, v, True, block_q, block_k)
        # float32 with reductions of length <= 100: a few hundred eps32
        torch.testing.assert_close(o, expected, atol=2e-6, rtol=2e-6)


def test_triton_reference_kernel_in_the_interpreter():
    """Run in a subprocess: TRITON_INTERPRET must be set before triton is imported."""
    import subprocess
    import sys

    code = (
        "import torch, torch.nn.functional as F\n"
        "from solutions.flash_attention_triton import triton_flash_attention\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for n_q, n_k, causal in [(37, 37, False), (33, 33, True), (7, 30, True)]:\n"
        "    q = torch.randn(1, 2, n_q, 16, generator=g); k, v = (torch.randn(1, 2, n_k, 16, generator=g) for _ in range(2))\n"
        "    mask = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q) if causal else None\n"
        "    torch.testing.assert_close(triton_flash_attention(q, k, v, causal),\n"
        "                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=2e-6, rtol=2e-6)\n"
        "print('ok')\n")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
