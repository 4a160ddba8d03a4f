"""Hidden suite: exercises/flash_attention_triton.py (lecture 06).

The kernels must do the work, and that is proven outside the process where the host code
runs: (1) the worker runs your host code (triton_flash_attention, triton_flash_attention_forward,
or TritonFlashAttention.apply and its backward) with every module-level kernel replaced by a
recorder, which notes each launch (grid, arguments, which buffers are q, k, v, dO and which
are new); (2) the grader takes the @triton.jit kernels alone out of your source (checking that
they use only tl.*, their arguments and literal constants) into a second worker that never
imports your code, gives the new buffers NaN, replays the launches in order on its own q, k,
v, dO and grades what the kernels wrote: o, lse, and dq, dk, dv (whose kernels read the o and
lse the replayed forward kernel wrote). A torch fallback on the host, or a kernel that copies
an answer the host computed, scores nothing.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by the
grader for the worker), at small sizes and in float32: the interpreter mishandles bfloat16
(grading notes). Tolerances (autograder.compare.tolerance) come from float32: the
accumulations run over n_k keys (o, dq), n_q queries (dk, dv) and d dims (scores, dP).
"""
import pytest
import torch

from autograder import static
from autograder.compare import check_tensor
from autograder.inputs import randn
from autograder.mistakes import flash_attention_triton as mistakes

F32 = torch.float32
CASES = {
    # name: (b, h, n_q, n_k, d, causal); non-powers of two leave partial tiles
    "square": (1, 2, 32, 32, 16, False),
    "odd-length": (2, 1, 37, 37, 16, False),
    "causal": (1, 2, 33, 33, 32, True),
    "causal-decode-offset": (1, 2, 7, 30, 16, True),
    "cross-lengths": (1, 1, 20, 45, 16, False),
}
LSE_CASES = ["odd-length", "causal", "causal-decode-offset"]
BACKWARD_CASES = {
    # name: (b, h, n_q, n_k, d, causal)
    "full": (1, 2, 37, 37, 16, False),
    "causal": (1, 2, 35, 35, 16, True),
    "causal-decode-offset": (1, 1, 9, 30, 16, True),
    "cross-lengths": (1, 1, 20, 45, 16, False),
}
MAX_LAUNCHES, MAX_SCALARS, MAX_BUFFER_BYTES = 64, 48, 64 << 20
# the host code the recorder runs (adapters/flash_attention_triton.py's ENTRIES), and its results
ATTENTION = "flash_attention_triton.triton_flash_attention"
FORWARD = "flash_attention_triton.triton_flash_attention_forward"
AUTOGRAD = "flash_attention_triton.TritonFlashAttention"
ENTRY_NAMES = {ATTENTION: ["triton_flash_attention's output"],
               FORWARD: ["o of triton_flash_attention_forward", "lse of triton_flash_attention_forward"],
               AUTOGRAD: ["TritonFlashAttention.apply's output", "dq", "dk", "dv"]}


def check_record(record, entry, n_out):
    """What the recorder reported is only a plan for the replay; still, keep it small and
    well-formed, so it can carry no answer: scalars are few (fewer than the output has
    elements), new buffers are bounded, and every result lies in a new buffer a kernel got."""
    launches, buffers = record["launches"], record["buffers"]
    assert launches, ("your host code returned without launching a @triton.jit kernel: attention must be "
                      "computed by the kernel (launch a module-level kernel as kernel[grid](...))")
    assert len(launches) <= MAX_LAUNCHES, f"{len(launches)} kernel launches; at most {MAX_LAUNCHES} are replayed"
    for launch in launches:
        scalars = [a for a in [*launch["args"], *launch["kwargs"].values()] if "buffer" not in a]
        assert len(scalars) <= min(MAX_SCALARS, n_out - 1), (
            f"launch of {launch['kernel']} passes {len(scalars)} scalar arguments; a kernel takes its data from "
            f"tensors (at most {MAX_SCALARS} scalars)")
        assert 1 <= len(launch["grid"]) <= 3 and all(1 <= g <= 1 << 16 for g in launch["grid"]), (
            f"launch of {launch['kernel']} has grid {launch['grid']}")
    for buffer in buffers:
        assert buffer["role"] in ("q", "k", "v", "do", "new") and 0 <= buffer["nbytes"] <= MAX_BUFFER_BYTES, buffer
    used = {a["buffer"] for launch in launches for a in [*launch["args"], *launch["kwargs"].values()] if "buffer" in a}
    for name, out in zip(ENTRY_NAMES[entry], record["out"]):
        assert "buffer" in out and buffers[out["buffer"]]["role"] == "new", (
            f"{name} must be a new tensor that a kernel wrote (not q, k, v or dO)")
        assert out["buffer"] in used, (
            f"{name} was never passed to a kernel: it must be computed by one (a host-side torch result is not "
            f"replayed)")


def run_kernels(worker, entry, q, k, v, causal, grad=None):
    """Record ``entry``'s launches in the worker, replay them in the clean worker: a list of
    what the kernels wrote (ENTRY_NAMES[entry])."""
    path = worker.source_path("flash_attention_triton")
    if path is None:  # no file: the worker explains
        return worker.call("flash_attention_triton.triton_flash_attention", q, k, v, causal)
    extra = {} if grad is None else {"grad": grad}
    record = worker.adapters.flash_attention_triton.triton_record(entry, q, k, v, causal, timeout=60, **extra)
    source, findings = static.triton_kernels(path.read_text(encoding="utf-8", errors="replace"))
    unimplemented = [f.what for f in findings if f.what.startswith("not implemented")]
    assert not unimplemented, unimplemented[0]
    assert not findings, static.describe(findings, "flash_attention_triton.py:")
    check_record(record, entry, q.shape[0] * q.shape[1] * q.shape[2] * v.shape[3])
    return worker.call_clean(worker.adapters.flash_attention_triton.triton_replay, entry, source, record["launches"],
                             record["buffers"], record["out"], q, k, v, timeout=120, **extra)


def inputs(b, h, n_q, n_k, d, seed=1):
    return [randn(b, h, n, d, seed=seed + i, dtype=F32) for i, n in enumerate((n_q, n_k, n_k))]


def magnitude(q, k, causal):
    """The largest |score| that enters an exp (compare.tolerance's magnitude)."""
    s = mistakes.scores(q, k, None, causal)
    return s.masked_fill(torch.isinf(s), 0).abs().max().item()


@pytest.mark.points(2)
@pytest.mark.rules("forward.in-a-triton-kernel")
@pytest.mark.parametrize("name", CASES)
def test_triton_kernel_output(worker, name):
    """triton_flash_attention's output matches attention (float32), replayed by the grader's launcher."""
    b, h, n_q, n_k, d, causal = CASES[name]
    q, k, v = inputs(b, h, n_q, n_k, d)
    (got,) = run_kernels(worker, ATTENTION, q, k, v, causal)
    expected, _ = mistakes.truth(q, k, v, causal)
    check_tensor(got, expected, f"triton_flash_attention ({name}, {b}x{h}x{n_q}x{d}) as written by its kernel",
                 dtype=F32, n_terms=n_k + d, magnitude=magnitude(q, k, causal))


@pytest.mark.points(1)
@pytest.mark.rules("forward.lse")
@pytest.mark.parametrize("name", LSE_CASES)
def test_triton_forward_lse(worker, name):
    """triton_flash_attention_forward returns o and lse = logsumexp of the scaled scores (b, h, n_q)
    float32, both written by the kernel."""
    b, h, n_q, n_k, d, causal = CASES[name]
    q, k, v = inputs(b, h, n_q, n_k, d)
    o, lse = run_kernels(worker, FORWARD, q, k, v, causal)
    expected_o, expected_lse = mistakes.truth(q, k, v, causal)
    size = magnitude(q, k, causal)
    check_tensor(o, expected_o, f"o of triton_flash_attention_forward ({name})", dtype=F32, n_terms=n_k + d,
                 magnitude=size)
    check_tensor(lse, expected_lse, f"lse of triton_flash_attention_forward ({name})", dtype=F32,
                 n_terms=n_k + d, magnitude=size, mistakes=lambda: mistakes.lse_mistakes(q, k, v, causal))


@pytest.mark.points(3)
@pytest.mark.rules("backward.triton-kernels", "backward.D", "backward.scale", "backward.dk-dv", "backward.causal")
@pytest.mark.parametrize("name", BACKWARD_CASES)
def test_triton_backward(worker, name):
    """TritonFlashAttention.apply's output and dq, dk, dv (its backward kernels, replayed after its
    forward kernel) match autograd of attention in float32: causal and not, n_q != n_k."""
    b, h, n_q, n_k, d, causal = BACKWARD_CASES[name]
    q, k, v = inputs(b, h, n_q, n_k, d, seed=11)
    grad_o = randn(b, h, n_q, d, seed=21, dtype=F32)
    out, *grads = run_kernels(worker, AUTOGRAD, q, k, v, causal, grad=grad_o)
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    expected_o, _ = mistakes.truth(*leaves, causal)
    expected_o.backward(grad_o.double())
    # dq sums n_k terms, dk and dv n_q, each after a d-term dot product (dP, S)
    n_terms, size = max(n_q, n_k) + d, magnitude(q, k, causal)
    check_tensor(out, expected_o.detach(), f"TritonFlashAttention.apply output ({name})", dtype=F32,
                 n_terms=n_terms, magnitude=size)
    for index, (label, got) in enumerate(zip(("dq", "dk", "dv"), grads)):
        if isinstance(got, torch.Tensor) and got.numel() and bool(got.isnan().all()):
            raise AssertionError(f"{label} ({name}): {mistakes.NOT_FROM_A_KERNEL}")
        check_tensor(got, leaves[index].grad, f"{label} of TritonFlashAttention's backward ({name}, "
                                              f"{b}x{h}x{n_q}x{n_k}x{d}, causal={causal})",
                     dtype=F32, n_terms=n_terms, magnitude=size,
                     mistakes=lambda i=index: mistakes.backward_mistakes(q, k, v, grad_o, causal, which=i))
