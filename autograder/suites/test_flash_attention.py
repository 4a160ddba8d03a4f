"""Hidden suite: exercises/flash_attention.py (lecture 06).

Checks the algorithm, not only the output: o and lse against float64 attention for many
shapes and block sizes, gradients against autograd, memory at n = 8192 under a cap the
grader sets on the worker from outside (an n x n float32 matrix is 256 MiB), and causal
block skipping by poisoning the last key block with NaN. Nothing here is measured inside
the worker, where the submission could change the measurement.
"""
import math

import pytest
import torch

from autograder import mistakes
from autograder.compare import check_tensor
from autograder.adapters.flash_attention import inputs as flash_inputs
from autograder.inputs import randn
from autograder.worker_parent import SubmissionError

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
@pytest.mark.rules("forward.online-softmax-accumulator",
                   "forward.online-softmax-sum",
                   "forward.scale",
                   "forward.causal-offset")
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
@pytest.mark.rules("forward.online-softmax-sum", "forward.scale", "forward.lse")
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
@pytest.mark.rules("forward.rows-without-keys")
def test_forward_rows_without_keys(worker):
    """causal with n_q > n_k: queries before the first key get o = 0 and lse = -inf."""
    q, k, v = randn(1, 6, 16, seed=4, dtype=F64), randn(1, 4, 16, seed=5, dtype=F64), randn(1, 4, 16, seed=6, dtype=F64)
    o, lse = worker.call("flash_attention.flash_attention_forward", q, k, v, True, 2, 2)
    expected_o, expected_lse = truth(q, k, v, True)
    check_tensor(o, expected_o, "o for queries 0-1, which sit before every key")
    check_tensor(lse, expected_lse, "lse (-inf where no key is allowed)")


@pytest.mark.points(1)
@pytest.mark.rules("forward.lse-dtype")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_forward_half_precision(worker, dtype):
    """half inputs: o comes back in q's dtype and lse in float32 (float64 only for float64
    inputs), both right, for a causal case with an offset and unequal blocks."""
    n_q, n_k, d, bq, bk = 21, 40, 16, 8, 16
    q = randn(2, 3, n_q, d, seed=31, dtype=dtype, scale=1.5)
    k = randn(2, 3, n_k, d, seed=32, dtype=dtype, scale=1.5)
    v = randn(2, 3, n_k, d, seed=33, dtype=dtype)
    got = worker.call("flash_attention.flash_attention_forward", q, k, v, True, bq, bk)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "flash_attention_forward must return (o, lse)"
    o, lse = got
    name = str(dtype).replace("torch.", "")
    assert isinstance(lse, torch.Tensor) and lse.dtype == F32, (
        f"lse for {name} inputs: expected float32, got "
        f"{str(lse.dtype).replace('torch.', '') if isinstance(lse, torch.Tensor) else type(lse).__name__}. lse stays "
        f"float32 whatever the input (float64 only for float64): rounded to {name} it is off by up to "
        f"{torch.finfo(dtype).eps * 16:.2g} at values near 30, and the backward recomputes P = exp(S - lse) from it")
    expected_o, expected_lse = truth(q, k, v, True)  # float64, from the same half values
    magnitude = (q.double() @ k.double().transpose(-1, -2)).abs().max().item() / math.sqrt(d)
    # o is rounded once to the half dtype; lse is float32 arithmetic on inputs float32 holds exactly
    check_tensor(o, expected_o, f"o of flash_attention_forward ({name} inputs)", dtype=dtype, n_terms=n_k + d,
                 magnitude=magnitude)
    check_tensor(lse, expected_lse, f"lse of flash_attention_forward ({name} inputs)", dtype=F32, n_terms=d,
                 magnitude=magnitude)


@pytest.mark.points(2)
@pytest.mark.rules("forward.online-softmax-accumulator",
                   "forward.lse",
                   "forward.causal-offset",
                   "backward.D")
@pytest.mark.parametrize("dtype,causal,d_v", [(F64, False, 16), (F64, True, 16), (F32, False, 16), (F32, True, 16),
                                              (F64, True, 24)],
                         ids=["float64-full", "float64-causal", "float32-full", "float32-causal", "float64-causal-d_v24"])
def test_backward(worker, causal, dtype, d_v):
    """dq, dk, dv match autograd on the definition (the backward recomputes tiles, with D);
    v may be wider than q and k (d_v != d, which the API allows)."""
    # n = 300: more than one tile of the reference's default 256 x 256 blocks, and not a multiple of
    # them, so the forward inside FlashAttention.apply combines tiles (a missing rescale shows)
    n = 300
    q, k = (randn(2, 2, n, 16, seed=s, dtype=dtype) for s in (7, 8))
    v = randn(2, 2, n, d_v, seed=9, dtype=dtype)
    grad_o = randn(2, 2, n, d_v, seed=10, dtype=dtype)
    got = worker.adapters.function_grads("flash_attention.flash_attention", [q, k, v], {"is_causal": causal}, grad_o)
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    truth(*leaves, causal)[0].backward(grad_o.double())
    check_tensor(got["out"], truth(q, k, v, causal)[0], "flash_attention(q, k, v) output", dtype=dtype, n_terms=n + 16,
                 magnitude=8.0)
    for index, name in enumerate(("dq", "dk", "dv")):
        check_tensor(got["input_grads"][index], leaves[index].grad, f"{name} (n={n}, causal={causal})", dtype=dtype,
                     n_terms=n + 16, magnitude=8.0,
                     mistakes=lambda i=index: mistakes.flash_backward_mistakes(q, k, v, causal, grad_o, which=i))


@pytest.mark.points(1)
@pytest.mark.rules("forward.rows-without-keys")
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
def test_gradients_of_rows_without_keys(worker, dtype):
    """with is_causal and n_q > n_k the first n_q - n_k query rows see no key: their output is 0
    whatever q, k and v are, so dq is 0 there and they add nothing to dk and dv (never NaN)."""
    n_q, n_k = 40, 24  # rows 0-15 have no key; one tile of any block size up to 1024 mixes both kinds
    q = randn(2, 2, n_q, 16, seed=31, dtype=dtype)
    k, v = (randn(2, 2, n_k, 16, seed=s, dtype=dtype) for s in (32, 33))
    grad_o = randn(2, 2, n_q, 16, seed=34, dtype=dtype)
    got = worker.adapters.function_grads("flash_attention.flash_attention", [q, k, v], {"is_causal": True}, grad_o)
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    truth(*leaves, True)[0].backward(grad_o.double())
    for index, name in enumerate(("dq", "dk", "dv")):
        check_tensor(got["input_grads"][index], leaves[index].grad,
                     f"{name} (causal, n_q={n_q} > n_k={n_k}: rows 0-{n_q - n_k - 1} have no key)", dtype=dtype,
                     n_terms=n_k + 16, magnitude=8.0)


MiB = 1 << 20
MEMORY_N, MEMORY_D = 8192, 64
TILE_BYTES = 1024 * 1024 * 4  # the largest tile the API allows (block sizes up to 1024), float32


def memory_budget(n, d):
    """Bytes the forward and backward at length n may add to the worker's baseline: the
    interpreter's own churn (reply buffers, a watchdog thread), twelve (n, d) float32
    tensors (q, k, v, the output gradient, two outputs, three gradients and the reply's
    copies) and twelve live tiles of the largest size the API allows. Measured: the
    reference needs 55 MiB at n = 8192, a correct version with 512 x 1024 forward and
    1024 x 1024 backward tiles 84 MiB; one n x n float32 matrix alone is 256 MiB."""
    return 32 * MiB + 12 * n * d * 4 + 12 * TILE_BYTES


def truth_rows(q, k, v, grad, rows, is_causal):
    """o, lse and dq of the given query rows, in float64, from the definition (each depends
    only on its own row), and the sum of dv over keys (= the sum of grad over queries,
    since every row of P sums to 1 when it has a key)."""
    q, k, v, grad = q.double(), k.double(), v.double(), grad.double()
    n, d = q.shape[-2], q.shape[-1]
    s = q[..., rows, :] @ k.transpose(-1, -2) / math.sqrt(d)  # (1, 1, rows, n)
    if is_causal:
        s = s.masked_fill(torch.arange(n)[None, :] > rows[:, None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    o = p @ v
    dp = grad[..., rows, :] @ v.transpose(-1, -2)
    delta = (grad[..., rows, :] * o).sum(dim=-1, keepdim=True)
    dq = (p * (dp - delta)) @ k / math.sqrt(d)
    return o, lse, dq, grad.sum(dim=-2)


@pytest.mark.points(3)
@pytest.mark.rules("forward.no-full-matrix", "autograd.saves-only")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_memory_stays_linear(worker, causal):
    """at n = 8192 the forward, FlashAttention.apply and its backward fit in a memory cap set from
    outside your code (inputs, outputs and 1024 x 1024 tiles fit; an n x n matrix does not)."""
    n, d = MEMORY_N, MEMORY_D
    budget = memory_budget(n, d)
    try:
        flash = worker.adapters.flash_attention
        got = worker.call_with_memory_budget(flash.warm_up, flash.memory_run, n, d, causal, 0,
                                             budget_bytes=budget, timeout=120)
    except SubmissionError as error:
        if error.kind not in ("memory", "crash"):
            raise
        raise AssertionError(
            f"at n={n} (d={d}) the forward and backward did not fit in {budget / MiB:.0f} MiB on top of what "
            f"the worker held before your code was imported (the cap covers q, k, v, outputs, gradients and "
            f"tiles up to 1024 x 1024; one n x n float32 matrix is {n * n * 4 / MiB:.0f} MiB): something of "
            f"size n x n, or a tile far larger than 1024 x 1024, was held ({error})") from None
    shapes = {"o": (1, 1, n, d), "lse": (1, 1, n), "out": (1, 1, n, d)}
    for key, shape in shapes.items():
        assert isinstance(got[key], torch.Tensor) and tuple(got[key].shape) == shape, (
            f"{key} at n={n}: expected a tensor of shape {shape}, got {_describe(got[key])}")
    assert isinstance(got["grads"], list) and all(isinstance(g, torch.Tensor) and tuple(g.shape) == (1, 1, n, d)
                                                  for g in got["grads"]), (
        f"dq, dk, dv at n={n}: expected tensors of shape {(1, 1, n, d)}, got {[_describe(g) for g in got['grads']]}")
    q, k, v, grad = flash_inputs(n, d, 0)
    rows = torch.cat([torch.arange(0, 96), torch.arange(n // 2, n // 2 + 32), torch.arange(n - 96, n)])
    o, lse, dq, dv_sum = truth_rows(q, k, v, grad, rows, causal)
    # the cap proves nothing unless the work was done: the values of sampled rows must be right
    for name, value, expected in [("o of flash_attention_forward", got["o"][..., rows, :], o),
                                  ("lse of flash_attention_forward", got["lse"][..., rows], lse),
                                  ("FlashAttention.apply output", got["out"][..., rows, :], o),
                                  ("dq", got["grads"][0][..., rows, :], dq),
                                  ("dv summed over keys", got["grads"][2].sum(dim=-2), dv_sum)]:
        check_tensor(value, expected, f"{name} at n={n} (sampled rows)", dtype=F32, n_terms=n + d, magnitude=8.0)


def _describe(value):
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


@pytest.mark.points(2)
@pytest.mark.rules("forward.causal-block-skipping")
def test_causal_skips_future_blocks(worker):
    """with is_causal, key blocks entirely in the future are never read: NaN keys and values in
    the last key block leave every earlier query row finite and right."""
    n, bq, bk = 256, 32, 64
    q, k, v = (randn(1, 2, n, 16, seed=s, dtype=F64) for s in (21, 22, 23))
    poisoned_k, poisoned_v = k.clone(), v.clone()
    poisoned_k[..., n - bk:, :] = float("nan")  # the last key block: after every query before it
    poisoned_v[..., n - bk:, :] = float("nan")
    got = worker.call("flash_attention.flash_attention_forward", q, poisoned_k, poisoned_v, True, bq, bk)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "flash_attention_forward must return (o, lse)"
    o, lse = got
    assert isinstance(o, torch.Tensor) and tuple(o.shape) == tuple(q.shape), (
        f"o: expected shape {tuple(q.shape)}, got {_describe(o)}")
    expected_o, expected_lse = truth(q, k, v, True)
    early = slice(0, n - bk)  # these rows never see the poisoned keys
    bad = torch.isnan(o[..., early, :]).any(dim=-1)
    assert not bad.any(), (
        f"{int(bad.sum())} of the {2 * (n - bk)} query rows before the last key block came out NaN: the forward "
        f"multiplied that block, which lies entirely in their future, into them (0 * NaN = NaN). With is_causal, "
        f"skip key blocks after the query block's last position instead of masking them")
    # rows that may attend a NaN key come out NaN, or 0 where the code guards against a NaN
    # row sum; finite values mean the NaN was scrubbed away, which would hide unskipped tiles
    late = o[..., n - bk:, :]
    assert (torch.isnan(late) | (late == 0)).all(), (
        "rows that may attend the NaN keys came out finite and nonzero: the forward replaced the NaN it "
        "was given (a scrubbed input hides future tiles that were computed); NaN keys must give NaN (or 0) rows")
    check_tensor(o[..., early, :], expected_o[..., early, :], "o of the rows before the last key block", dtype=F64,
                 n_terms=n)
    check_tensor(lse[..., early], expected_lse[..., early], "lse of the rows before the last key block", dtype=F64,
                 n_terms=16)
