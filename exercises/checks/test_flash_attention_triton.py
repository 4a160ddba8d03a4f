"""Public suite: exercises/flash_attention_triton.py (lecture 06).

The kernels must do the work, and that is checked outside the process where your host code
runs: the worker runs your host code with every module-level kernel replaced by a recorder
(each launch: grid, arguments, which buffers are q, k, v, dO and which are new); the grader
takes the @triton.jit kernels alone out of your source (tl.* only) into a second worker that
never imports your code, gives the new buffers NaN, replays the launches on its own inputs
and checks what the kernels wrote. Without a GPU the kernels run in Triton's interpreter, at
small sizes, in float32.
"""
import math

import pytest
import torch

from autograder import static
from autograder.compare import check_tensor
from autograder.inputs import randn

F32 = torch.float32
CASES = {
    # name: (b, h, n_q, n_k, d, causal); non-powers of two leave partial tiles
    "odd-length": (1, 1, 27, 27, 16, False),
    "causal-decode-offset": (1, 1, 6, 23, 16, True),
}
NOT_FROM_A_KERNEL = ("NaN everywhere: no replayed kernel wrote it, or it was computed from a value no kernel "
                     "wrote (the grader replays only your kernels)")
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


def inputs(b, h, n_q, n_k, d, seed):
    return [randn(b, h, n, d, seed=seed + i, dtype=F32) for i, n in enumerate((n_q, n_k, n_k))]


def scores(q, k, causal):
    """Scaled scores in float64 from the definition, future keys at -inf when causal."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q), float("-inf"))
    return s


def truth(q, k, v, causal):
    s = scores(q, k, causal)
    return torch.softmax(s, -1) @ v.double(), torch.logsumexp(s, -1)


def magnitude(q, k, causal):
    """The largest |score| that enters an exp (compare.tolerance's magnitude)."""
    s = scores(q, k, causal)
    return s.masked_fill(torch.isinf(s), 0).abs().max().item()


@pytest.mark.points(2)
@pytest.mark.mirrors("triton_kernel_output", "triton_forward_lse")
@pytest.mark.parametrize("name", CASES)
def test_public_triton_forward(worker, reference, name):
    """triton_flash_attention's output, and triton_flash_attention_forward's o and lse, match attention
    (float32), as written by your kernels and replayed by the grader."""
    b, h, n_q, n_k, d, causal = CASES[name]
    q, k, v = inputs(b, h, n_q, n_k, d, seed=1801)
    known = reference.mistakes(lambda s: s.mistakes.flash_attention_triton.lse_mistakes(q, k, v, causal))
    expected_o, expected_lse = truth(q, k, v, causal)
    size = magnitude(q, k, causal)
    (got,) = run_kernels(worker, ATTENTION, q, k, v, causal)
    check_tensor(got, expected_o, f"triton_flash_attention ({name}) as written by its kernel", dtype=F32,
                 n_terms=n_k + d, magnitude=size)
    o, lse = run_kernels(worker, FORWARD, q, k, v, causal)
    check_tensor(o, expected_o, f"o of triton_flash_attention_forward ({name})", dtype=F32, n_terms=n_k + d,
                 magnitude=size)
    check_tensor(lse, expected_lse, f"lse of triton_flash_attention_forward ({name})", dtype=F32,
                 n_terms=n_k + d, magnitude=size, mistakes=known)


@pytest.mark.points(3)
@pytest.mark.mirrors("triton_backward")
@pytest.mark.parametrize("name", CASES)
def test_public_triton_backward(worker, reference, name):
    """TritonFlashAttention.apply's output and dq, dk, dv (your backward kernels, replayed after your
    forward kernel) match autograd of attention in float32."""
    b, h, n_q, n_k, d, causal = CASES[name]
    q, k, v = inputs(b, h, n_q, n_k, d, seed=1811)
    grad_o = randn(b, h, n_q, d, seed=1821, dtype=F32)
    known = [reference.mistakes(lambda s, i=i: s.mistakes.flash_attention_triton.backward_mistakes(
        q, k, v, grad_o, causal, which=i)) for i in range(3)]
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    expected_o = torch.softmax(scores(leaves[0], leaves[1], causal), -1) @ leaves[2]
    expected_o.backward(grad_o.double())
    out, *grads = run_kernels(worker, AUTOGRAD, q, k, v, causal, grad=grad_o)
    n_terms, size = max(n_q, n_k) + d, magnitude(q, k, causal)
    check_tensor(out, expected_o.detach(), f"TritonFlashAttention.apply output ({name})", dtype=F32,
                 n_terms=n_terms, magnitude=size)
    for index, (label, got) in enumerate(zip(("dq", "dk", "dv"), grads)):
        if isinstance(got, torch.Tensor) and got.numel() and bool(got.isnan().all()):
            raise AssertionError(f"{label} ({name}): {NOT_FROM_A_KERNEL}")
        check_tensor(got, leaves[index].grad, f"{label} of TritonFlashAttention's backward ({name}, causal={causal})",
                     dtype=F32, n_terms=n_terms, magnitude=size, mistakes=known[index])
