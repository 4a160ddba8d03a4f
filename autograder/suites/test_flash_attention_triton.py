"""Hidden suite: exercises/flash_attention_triton.py (lecture 06).

The kernel must do the work, and that is proven outside the process where the host code
runs: (1) the worker runs your triton_flash_attention with every module-level kernel
replaced by a recorder, which notes each launch (grid, arguments, which buffers are q, k, v
and which are new); (2) the grader takes the @triton.jit kernels alone out of your source
(checking that they use only tl.*, their arguments and literal constants) into a second
worker that never imports your code, gives the new buffers NaN, replays the launches
on its own q, k, v and grades what the kernels wrote. A torch fallback on the host, or a
kernel that copies an answer the host computed, scores nothing.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by the
grader for the worker), at small sizes and in float32: the interpreter mishandles bfloat16
(grading notes).
"""
import math

import pytest
import torch

from autograder import static
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
MAX_LAUNCHES, MAX_SCALARS, MAX_BUFFER_BYTES = 64, 48, 64 << 20


def check_record(record, n_out):
    """What the recorder reported is only a plan for the replay; still, keep it small and
    well-formed, so it can carry no answer: scalars are few (fewer than the output has
    elements), new buffers are bounded, and the result lies in a new buffer."""
    launches, buffers = record["launches"], record["buffers"]
    assert launches, ("triton_flash_attention returned without launching a @triton.jit kernel: attention must be "
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
        assert buffer["role"] in ("q", "k", "v", "new") and 0 <= buffer["nbytes"] <= MAX_BUFFER_BYTES, buffer
    out = record["out"]
    assert "buffer" in out and buffers[out["buffer"]]["role"] == "new", (
        "triton_flash_attention must return a new tensor that its kernel wrote (not q, k or v)")
    used = {a["buffer"] for launch in launches for a in [*launch["args"], *launch["kwargs"].values()] if "buffer" in a}
    assert out["buffer"] in used, "the returned tensor was never passed to a kernel: the kernel must write the output"


def run_kernels(worker, q, k, v, causal):
    path = worker.source_path("flash_attention_triton")
    if path is None:
        return worker.call("flash_attention_triton.triton_flash_attention", q, k, v, causal)  # the worker explains
    record = worker.call("@triton_record", q, k, v, causal, timeout=60)  # the host function first
    source, findings = static.triton_kernels(path.read_text(encoding="utf-8", errors="replace"))
    unimplemented = [f.what for f in findings if f.what.startswith("not implemented")]
    assert not unimplemented, unimplemented[0]
    assert not findings, static.describe(findings, "flash_attention_triton.py:")
    check_record(record, q.shape[0] * q.shape[1] * q.shape[2] * v.shape[3])
    return worker.call_clean("@triton_replay", source, record["launches"], record["buffers"],
                                       record["out"], q, k, v, timeout=120)


@pytest.mark.points(2)
@pytest.mark.parametrize("name", CASES)
def test_triton_kernel_output(worker, name):
    """the Triton kernel's output matches attention (float32), replayed by the grader's launcher."""
    b, h, n_q, n_k, d, causal = CASES[name]
    q, k, v = (randn(b, h, n, d, seed=s, dtype=torch.float32) for s, n in ((1, n_q), (2, n_k), (3, n_k)))
    got = run_kernels(worker, q, k, v, causal)
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(d)
    if causal:
        s = s.masked_fill(torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q), float("-inf"))
    expected = torch.softmax(s, -1) @ v.double()
    magnitude = s.masked_fill(torch.isinf(s), 0).abs().max().item()
    check_tensor(got, expected, f"triton_flash_attention ({name}, {b}x{h}x{n_q}x{d}) as written by its kernel",
                 dtype=torch.float32, n_terms=n_k + d, magnitude=magnitude)
