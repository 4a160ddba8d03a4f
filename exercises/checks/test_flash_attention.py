"""Public suite: exercises/flash_attention.py (lecture 06).

o and lse against float64 attention computed here from the definition, gradients against
autograd, memory at n = 8192 under a cap the grader sets on the worker from outside (one
n x n float32 matrix is 256 MiB), and causal block skipping by poisoning the last key
block with NaN.
"""
import math

import pytest
import torch

from autograder.adapters.flash_attention import inputs as flash_inputs
from autograder.compare import check_tensor
from autograder.inputs import randn
from autograder.worker_parent import SubmissionError

F64, F32 = torch.float64, torch.float32
MiB = 1 << 20


def truth(q, k, v, is_causal):
    """Attention and its logsumexp in float64, from the definition."""
    q, k, v = q.double(), k.double(), v.double()
    n_q, n_k = q.shape[-2], k.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if is_causal:
        s = s.masked_fill(torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # -inf for rows with no allowed key
    return torch.exp(s - lse.clamp_min(-1e308)[..., None]) @ v, lse


FORWARD_CASES = {
    # name: (n_q, n_k, d, d_v, causal, block_q, block_k, dtype)
    "odd-length": (29, 29, 8, 8, False, 8, 8, F32),
    "causal-unequal-blocks": (33, 33, 8, 8, True, 16, 4, F64),
    "causal-decode-offset": (5, 21, 8, 8, True, 4, 8, F64),
    "cross-lengths": (12, 27, 8, 4, False, 32, 32, F64),
}


def _forward_case(worker, reference, name):
    n_q, n_k, d, d_v, causal, bq, bk, dtype = FORWARD_CASES[name]
    q = randn(1, 2, n_q, d, seed=1601, dtype=dtype, scale=1.5)
    k = randn(1, 2, n_k, d, seed=1602, dtype=dtype, scale=1.5)
    v = randn(1, 2, n_k, d_v, seed=1603, dtype=dtype)
    known = [reference.mistakes(lambda s, w=w: s.mistakes.flash_forward_mistakes(q, k, v, causal, bq, bk, which=w))
             for w in (0, 1)]
    got = worker.call("flash_attention.flash_attention_forward", q, k, v, causal, bq, bk)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "flash_attention_forward must return (o, lse)"
    magnitude = (q.double() @ k.double().transpose(-1, -2)).abs().max().item() / math.sqrt(d)
    return (q, k, v, causal, dtype, magnitude, known), got


@pytest.mark.points(2)
@pytest.mark.mirrors("forward_output", "forward_lse")
@pytest.mark.parametrize("name", FORWARD_CASES)
def test_public_forward(worker, reference, name):
    """o matches attention and lse is the row-wise logsumexp (odd lengths, unequal blocks, n_q != n_k,
    causal with an offset)."""
    (q, k, v, causal, dtype, magnitude, known), (o, lse) = _forward_case(worker, reference, name)
    expected_o, expected_lse = truth(q, k, v, causal)
    check_tensor(o, expected_o, f"o of flash_attention_forward ({name})", dtype=dtype,
                 n_terms=q.shape[-2] + q.shape[-1], magnitude=magnitude, mistakes=known[0])
    check_tensor(lse, expected_lse, f"lse of flash_attention_forward ({name})", dtype=F64 if dtype == F64 else F32,
                 n_terms=q.shape[-1], magnitude=magnitude, mistakes=known[1])


@pytest.mark.points(1)
@pytest.mark.mirrors("forward_half_precision")
def test_public_forward_bfloat16(worker):
    """bfloat16 inputs: o comes back in bfloat16 and lse in float32 (causal, an offset, unequal blocks)."""
    n_q, n_k, d = 11, 19, 8
    q = randn(1, 2, n_q, d, seed=1614, dtype=torch.bfloat16, scale=1.5)
    k = randn(1, 2, n_k, d, seed=1615, dtype=torch.bfloat16, scale=1.5)
    v = randn(1, 2, n_k, d, seed=1616, dtype=torch.bfloat16)
    got = worker.call("flash_attention.flash_attention_forward", q, k, v, True, 4, 8)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "flash_attention_forward must return (o, lse)"
    o, lse = got
    assert isinstance(lse, torch.Tensor) and lse.dtype == F32, (
        f"lse for bfloat16 inputs: expected float32, got "
        f"{str(lse.dtype).replace('torch.', '') if isinstance(lse, torch.Tensor) else type(lse).__name__}: lse stays "
        f"float32 whatever the input (float64 only for float64)")
    expected_o, expected_lse = truth(q, k, v, True)
    magnitude = (q.double() @ k.double().transpose(-1, -2)).abs().max().item() / math.sqrt(d)
    check_tensor(o, expected_o, "o for bfloat16 inputs", dtype=torch.bfloat16, n_terms=n_k + d, magnitude=magnitude)
    # lse is float32 arithmetic on inputs float32 holds exactly: float32's own tolerance
    check_tensor(lse, expected_lse, "lse for bfloat16 inputs", dtype=F32, n_terms=d, magnitude=magnitude)


@pytest.mark.points(1)
@pytest.mark.mirrors("forward_rows_without_keys")
def test_public_forward_rows_without_keys(worker):
    """causal with n_q > n_k: queries before the first key get o = 0 and lse = -inf."""
    q, k, v = randn(1, 5, 8, seed=1604, dtype=F64), randn(1, 3, 8, seed=1605, dtype=F64), randn(1, 3, 8, seed=1606, dtype=F64)
    got = worker.call("flash_attention.flash_attention_forward", q, k, v, True, 2, 2)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "flash_attention_forward must return (o, lse)"
    expected_o, expected_lse = truth(q, k, v, True)
    check_tensor(got[0], expected_o, "o for queries 0-1, which sit before every key")
    check_tensor(got[1], expected_lse, "lse (-inf where no key is allowed)")


@pytest.mark.points(2)
@pytest.mark.mirrors("backward")
@pytest.mark.parametrize("causal,d_v", [(False, 8), (True, 12)], ids=["full", "causal-d_v12"])
def test_public_backward(worker, reference, causal, d_v):
    """dq, dk, dv match autograd on the definition (the backward recomputes tiles, with D)."""
    q, k = (randn(1, 2, 45, 8, seed=s, dtype=F64) for s in (1607, 1608))
    v = randn(1, 2, 45, d_v, seed=1609, dtype=F64)
    grad_o = randn(1, 2, 45, d_v, seed=1610, dtype=F64)
    known = [reference.mistakes(lambda s, i=i: s.mistakes.flash_backward_mistakes(q, k, v, causal, grad_o, which=i))
             for i in range(3)]
    got = worker.adapters.function_grads("flash_attention.flash_attention", [q, k, v], {"is_causal": causal}, grad_o)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    truth(*leaves, causal)[0].backward(grad_o)
    check_tensor(got["out"], truth(q, k, v, causal)[0], "flash_attention(q, k, v) output", n_terms=53, magnitude=8.0)
    for index, name in enumerate(("dq", "dk", "dv")):
        check_tensor(got["input_grads"][index], leaves[index].grad, f"{name} (n=45, causal={causal})", n_terms=53,
                     magnitude=8.0, mistakes=known[index])


@pytest.mark.points(1)
@pytest.mark.mirrors("gradients_of_rows_without_keys")
def test_public_gradients_of_rows_without_keys(worker):
    """causal with n_q > n_k: rows before the first key have o = 0 whatever the inputs, so their dq
    is 0 and they add nothing to dk and dv (never NaN)."""
    q, grad_o = randn(1, 2, 30, 8, seed=1614, dtype=F64), randn(1, 2, 30, 8, seed=1617, dtype=F64)
    k, v = randn(1, 2, 18, 8, seed=1615, dtype=F64), randn(1, 2, 18, 8, seed=1616, dtype=F64)
    got = worker.adapters.function_grads("flash_attention.flash_attention", [q, k, v], {"is_causal": True}, grad_o)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    truth(*leaves, True)[0].backward(grad_o)
    for index, name in enumerate(("dq", "dk", "dv")):
        check_tensor(got["input_grads"][index], leaves[index].grad, f"{name} (causal, n_q=30 > n_k=18: rows 0-11 "
                     f"have no key)", n_terms=26, magnitude=8.0)


@pytest.mark.points(2)
@pytest.mark.mirrors("causal_skips_future_blocks")
def test_public_causal_skips_future_blocks(worker):
    """with is_causal, key blocks entirely in the future are never read: NaN keys and values in the
    last key block leave every earlier query row finite and right."""
    n, bq, bk = 128, 16, 32
    q, k, v = (randn(1, 1, n, 8, seed=s, dtype=F64) for s in (1611, 1612, 1613))
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[..., n - bk:, :] = float("nan")  # the last key block: after every query before it
    poisoned_v[..., n - bk:, :] = float("nan")
    got = worker.call("flash_attention.flash_attention_forward", q, poisoned_k, poisoned_v, True, bq, bk)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "flash_attention_forward must return (o, lse)"
    o, lse = got
    assert isinstance(o, torch.Tensor) and tuple(o.shape) == tuple(q.shape), f"o: expected shape {tuple(q.shape)}"
    expected_o, expected_lse = truth(q, k, v, True)
    early = slice(0, n - bk)
    bad = torch.isnan(o[..., early, :]).any(dim=-1)
    assert not bad.any(), (
        f"{int(bad.sum())} of the {n - bk} query rows before the last key block came out NaN: the forward "
        f"multiplied that block, which lies entirely in their future, into them (0 * NaN = NaN). With is_causal, "
        f"skip key blocks after the query block's last position instead of masking them")
    late = o[..., n - bk:, :]
    assert (torch.isnan(late) | (late == 0)).all(), (
        "rows that may attend the NaN keys came out finite and nonzero: the forward replaced the NaN it "
        "was given (a scrubbed input hides future tiles that were computed); NaN keys must give NaN (or 0) rows")
    check_tensor(o[..., early, :], expected_o[..., early, :], "o of the rows before the last key block", n_terms=n)
    check_tensor(lse[..., early], expected_lse[..., early], "lse of the rows before the last key block", n_terms=8)


MEMORY_N, MEMORY_D = 8192, 64
TILE_BYTES = 1024 * 1024 * 4  # the largest tile the API allows (block sizes up to 1024), float32


def memory_budget(n, d):
    """Bytes a forward at length n may add to the worker's baseline: the interpreter's churn,
    twelve (n, d) float32 tensors (inputs, outputs and the reply's copies) and twelve live
    tiles of the largest size the API allows; one n x n float32 matrix alone is 256 MiB."""
    return 32 * MiB + 12 * n * d * 4 + 12 * TILE_BYTES


@pytest.mark.points(3)
@pytest.mark.mirrors("memory_stays_linear")
def test_public_memory_stays_linear(worker):
    """at n = 8192, flash_attention (causal; your forward inside FlashAttention.apply) fits in a memory
    cap set from outside your code; an n x n matrix does not. Sampled rows must be right."""
    # last in this file: the capped worker is ended afterwards, and a fresh one costs a start
    target = "flash_attention"
    n, d = MEMORY_N, MEMORY_D
    q, k, v, _ = flash_inputs(n, d, 7)
    causal = target == "flash_attention"
    args = (q, k, v, True) if causal else (q, k, v, False, 1024, 1024)
    budget = memory_budget(n, d)
    try:
        got = worker.call_with_memory_budget(worker.adapters.flash_attention.warm_up, f"flash_attention.{target}", *args,
                                             budget_bytes=budget, timeout=120)
    except SubmissionError as error:
        if error.kind not in ("memory", "crash"):
            raise
        raise AssertionError(
            f"{target} at n={n} (d={d}) did not fit in {budget / MiB:.0f} MiB on top of what the worker held "
            f"before your code was imported (one n x n float32 matrix is {n * n * 4 / MiB:.0f} MiB): something of "
            f"size n x n was held ({error})") from None
    o = got[0] if not causal and isinstance(got, (tuple, list)) else got
    assert isinstance(o, torch.Tensor) and tuple(o.shape) == (1, 1, n, d), (
        f"{target} at n={n}: expected an output of shape {(1, 1, n, d)}, got "
        f"{tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__}")
    rows = torch.cat([torch.arange(0, 48), torch.arange(n - 48, n)])
    s = q.double()[..., rows, :] @ k.double().transpose(-1, -2) / math.sqrt(d)
    if causal:
        s = s.masked_fill(torch.arange(n)[None, :] > rows[:, None], float("-inf"))
    expected = torch.softmax(s, dim=-1) @ v.double()
    check_tensor(o[..., rows, :], expected, f"{target} at n={n} (sampled rows)", dtype=F32, n_terms=n + d,
                 magnitude=8.0)
