"""Hidden suite: exercises/flash_attention.py (lecture 06).

Checks the algorithm, not only the output: o and lse against float64 attention for many
shapes and block sizes, gradients against autograd, the peak memory at n = 4096 (where one
n x n float32 matrix is 64 MiB), the matmul work with causal block skipping, and what the
autograd Function keeps for backward.
"""
import math

import pytest
import torch

from autograder import mistakes
from autograder.compare import check_tensor
from autograder.inputs import randn

F64, F32 = torch.float64, torch.float32


def truth(q, k, v, is_causal):
    """Attention and its logsumexp in float64, from the definition."""
    q, k, v = q.double(), k.double(), v.double()
    n_q, n_k = q.shape[-2], k.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if is_causal:
        future = torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q)
        s = s.masked_fill(future, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # -inf for rows with no allowed key
    p = torch.exp(s - lse.clamp_min(-1e308)[..., None])
    return p @ v, lse


FORWARD_CASES = {
    # name: (n_q, n_k, d, d_v, causal, block_q, block_k, dtype)
    "odd-length": (37, 37, 16, 16, False, 16, 16, F32),
    "causal-unequal-blocks": (50, 50, 16, 16, True, 32, 8, F64),
    "causal-small-blocks": (45, 45, 8, 8, True, 8, 16, F32),
    "cross-lengths": (20, 45, 16, 8, False, 64, 64, F64),
    "causal-decode-offset": (7, 30, 16, 16, True, 4, 8, F64),
    "block-larger-than-n": (5, 5, 16, 16, True, 64, 64, F32),
    "length1": (1, 9, 16, 16, True, 16, 16, F64),
}


def _forward_case(worker, name, seed=1):
    n_q, n_k, d, d_v, causal, bq, bk, dtype = FORWARD_CASES[name]
    q = randn(2, 3, n_q, d, seed=seed, dtype=dtype, scale=1.5)
    k = randn(2, 3, n_k, d, seed=seed + 1, dtype=dtype, scale=1.5)
    v = randn(2, 3, n_k, d_v, seed=seed + 2, dtype=dtype)
    got = worker.call("flash_attention.flash_attention_forward", q, k, v, causal, bq, bk)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "flash_attention_forward must return (o, lse)"
    return (q, k, v, causal, bq, bk, dtype), got


@pytest.mark.points(2)
@pytest.mark.parametrize("name", FORWARD_CASES)
def test_forward_output(worker, name):
    """o matches attention (odd lengths, unequal blocks, n_q != n_k, causal with an offset)."""
    (q, k, v, causal, bq, bk, dtype), (o, _) = _forward_case(worker, name)
    expected, _ = truth(q, k, v, causal)
    magnitude = (q.double() @ k.double().transpose(-1, -2)).abs().max().item() / math.sqrt(q.shape[-1])
    check_tensor(o, expected, f"o of flash_attention_forward ({name})", dtype=dtype, n_terms=q.shape[-2] + q.shape[-1],
                 magnitude=magnitude,
                 mistakes=lambda: mistakes.flash_forward_mistakes(q, k, v, causal, bq, bk, which=0))


@pytest.mark.points(1)
@pytest.mark.parametrize("name", ["odd-length", "causal-unequal-blocks", "causal-decode-offset"])
def test_forward_lse(worker, name):
    """lse is the row-wise logsumexp of the scaled scores, in float32 (float64 for float64)."""
    (q, k, v, causal, bq, bk, dtype), (_, lse) = _forward_case(worker, name)
    _, expected = truth(q, k, v, causal)
    magnitude = (q.double() @ k.double().transpose(-1, -2)).abs().max().item() / math.sqrt(q.shape[-1])
    check_tensor(lse, expected, f"lse of flash_attention_forward ({name})", dtype=F64 if dtype == F64 else F32,
                 n_terms=q.shape[-1], magnitude=magnitude,
                 mistakes=lambda: mistakes.flash_forward_mistakes(q, k, v, causal, bq, bk, which=1))


@pytest.mark.points(1)
def test_forward_rows_without_keys(worker):
    """causal with n_q > n_k: queries before the first key get o = 0 and lse = -inf."""
    q, k, v = randn(1, 6, 16, seed=4, dtype=F64), randn(1, 4, 16, seed=5, dtype=F64), randn(1, 4, 16, seed=6, dtype=F64)
    o, lse = worker.call("flash_attention.flash_attention_forward", q, k, v, True, 2, 2)
    expected_o, expected_lse = truth(q, k, v, True)
    check_tensor(o, expected_o, "o for queries 0-1, which sit before every key")
    check_tensor(lse, expected_lse, "lse (-inf where no key is allowed)")


@pytest.mark.points(2)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
def test_backward(worker, causal, dtype):
    """dq, dk, dv match autograd on the definition (the backward recomputes tiles, with D)."""
    q, k, v = (randn(2, 2, 70, 16, seed=s, dtype=dtype) for s in (7, 8, 9))
    grad_o = randn(2, 2, 70, 16, seed=10, dtype=dtype)
    got = worker.call("@function_grads", "flash_attention.flash_attention", [q, k, v], {"is_causal": causal}, grad_o)
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    truth(*leaves, causal)[0].backward(grad_o.double())
    check_tensor(got["out"], truth(q, k, v, causal)[0], "flash_attention(q, k, v) output", dtype=dtype, n_terms=86,
                 magnitude=8.0)
    for index, name in enumerate(("dq", "dk", "dv")):
        check_tensor(got["input_grads"][index], leaves[index].grad, f"{name} (n=70, causal={causal})", dtype=dtype,
                     n_terms=86, magnitude=8.0,
                     mistakes=lambda i=index: mistakes.flash_backward_mistakes(q, k, v, causal, grad_o, which=i))


MATRIX_BYTES = 4096 * 4096 * 4  # one n x n float32 matrix at n = 4096: 64 MiB


@pytest.mark.points(3)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_memory_stays_linear(worker, causal):
    """at n = 4096 the forward and the backward never hold anything near an n x n matrix."""
    got = worker.call("@flash_memory", 4096, 64, causal, timeout=180)
    limit = MATRIX_BYTES // 4  # 16 MiB: q, k, v, o, the gradients and tiles take ~1-4 MiB
    for phase in ("forward", "backward"):
        assert got[phase] < limit, (
            f"the {phase} pass at n=4096 raised peak memory by {got[phase] / 2**20:.0f} MiB; one n x n float32 "
            f"matrix is {MATRIX_BYTES / 2**20:.0f} MiB and the limit is {limit / 2**20:.0f} MiB: "
            f"a full score matrix (or a row block as wide as n times many rows) was materialised")


@pytest.mark.points(2)
def test_causal_skips_future_blocks(worker):
    """with is_causal, key blocks entirely in the future are skipped: about half the matmul work."""
    full = worker.call("@flash_flops", 512, 32, False, 64)
    causal = worker.call("@flash_flops", 512, 32, True, 64)
    assert full > 0, "no matmul work was counted (use torch matmuls: @, matmul, bmm or einsum)"
    ratio = causal / full  # 8 x 8 blocks: 36 of 64 on or below the diagonal = 0.56
    assert ratio < 0.65, (f"the causal forward did {ratio:.2f} of the non-causal matmul work; skipping the "
                          f"blocks above the diagonal gives 0.56 at n=512 with 64 x 64 blocks")


@pytest.mark.points(1)
def test_saves_only_q_k_v_o_lse(worker):
    """FlashAttention saves q, k, v, o and lse for backward, nothing of size n x n."""
    q = randn(2, 3, 40, 16, seed=11, dtype=F32)
    got = worker.call("@flash_saved", q, q, q, True)
    expected = sorted([(2, 3, 40, 16)] * 4 + [(2, 3, 40)])
    assert sorted(got["saved"]) == expected, (
        f"ctx saved tensors of shapes {got['saved']}; expected q, k, v, o (2, 3, 40, 16) and lse (2, 3, 40)")
    big = {name: shape for name, shape in got["attributes"].items() if math.prod(shape) >= 40 * 40}
    assert not big, f"ctx also keeps {big}: keep only what save_for_backward holds"
