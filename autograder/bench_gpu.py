"""The Triton exercise on a GPU: graded in float16 and bfloat16, then timed against torch SDPA's
flash backend (``python -m autograder bench --gpu``; also ``python -m autograder.bench_gpu``).

One short prepared script (well under 5 minutes on one GPU):
1. grade: the submission's triton_flash_attention_forward and TritonFlashAttention (forward
   and backward) on CUDA tensors in float16 and bfloat16, against attention computed from the
   definition in float32 on the same (rounded) inputs; tolerances from the dtype
   (autograder.compare.tolerance: the half-precision eps for rounding, float32 accumulation);
2. measure: forward and backward time of the submission's kernels and of SDPA's flash
   backend at n = 1024 ... 16384 (float16, d = 64, causal and not), in ms and TFLOP/s.

Unlike ``grade``, this imports the submission into this process: run it on the reference
or on code you trust (the CPU grader's record/replay is what grades untrusted code).
Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import torch

from autograder.compare import tolerance

ROOT = Path(__file__).resolve().parent.parent
GRADE_CASES = [
    # (b, h, n_q, n_k, d, causal): partial tiles (n not a multiple of 64) and n_q != n_k
    (1, 2, 257, 257, 64, False),
    (1, 2, 257, 257, 64, True),
    (2, 1, 100, 300, 64, True),
    (1, 2, 128, 128, 128, False),
]
BENCH_LENGTHS = [1024, 2048, 4096, 8192, 16384]
BENCH_BATCH, BENCH_HEADS, BENCH_D = 2, 16, 64  # 32 heads of 64: a GPT-2-medium-sized layer


def load_submission(folder: Path):
    path = folder / "flash_attention_triton.py"
    spec = importlib.util.spec_from_file_location("bench_flash_attention_triton", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(q, k, v, grad_o, causal):
    """o, lse and (dq, dk, dv) in float32 from the definition, by autograd."""
    q, k, v = (t.float().detach().requires_grad_(True) for t in (q, k, v))
    n_q, n_k = q.shape[-2], k.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        future = torch.arange(n_k, device=q.device)[None, :] > torch.arange(n_q, device=q.device)[:, None] + n_k - n_q
        s = s.masked_fill(future, float("-inf"))
    lse = torch.logsumexp(s, -1)
    o = torch.softmax(s, -1) @ v
    o.backward(grad_o.float())
    return o.detach(), lse.detach(), (q.grad, k.grad, v.grad), s.masked_fill(torch.isinf(s), 0).abs().max().item()


def worst(got, expected, tol):
    """The largest error beyond ``tol + tol * |expected|`` (<= 0: within), and the largest error."""
    a, e = got.double(), expected.double()
    error = (a - e).abs()
    return (error - tol - tol * e.abs()).max().item(), error.max().item()


def grade(module) -> bool:
    print("grading on", torch.cuda.get_device_name(), "(reference: float32 from the definition)")
    print(f"{'dtype':9} {'case':28} {'value':5} {'max error':>10} {'allowed':>9}  result")
    ok = True
    for dtype in (torch.float16, torch.bfloat16):
        for b, h, n_q, n_k, d, causal in GRADE_CASES:
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(b, h, n, d, device="cuda", generator=g).to(dtype) for n in (n_q, n_k, n_k))
            grad_o = torch.randn(b, h, n_q, d, device="cuda", generator=g).to(dtype)
            o_ref, lse_ref, grads_ref, size = reference(q, k, v, grad_o, causal)
            o, lse = module.triton_flash_attention_forward(q, k, v, causal)
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            module.TritonFlashAttention.apply(*leaves, causal).backward(grad_o)
            # each value is rounded to the dtype once more than the float32 reference
            tol = tolerance(dtype, n_terms=max(n_q, n_k) + d, magnitude=size)
            values = [("o", o, o_ref), ("lse", lse, lse_ref)] + [
                (name, t.grad, r) for name, t, r in zip(("dq", "dk", "dv"), leaves, grads_ref)]
            for name, got, expected in values:
                beyond, error = worst(got, expected, tol)
                passed = got.dtype == (torch.float32 if name == "lse" else dtype) and beyond <= 0
                ok &= passed
                case = f"{b}x{h}x{n_q}x{n_k}x{d}{' causal' if causal else ''}"
                print(f"{str(dtype)[6:]:9} {case:28} {name:5} {error:10.2e} {tol:9.2e}  {'ok' if passed else 'FAIL'}")
    return ok


def flops(n, causal, backward=False):
    """Matmul FLOPs of attention: forward QK^T and PV (2 * 2 * n^2 * d per head), the
    backward 2.5x that (five matmuls: S again, dV, dP, dQ, dK); causal halves both."""
    forward = 4 * BENCH_BATCH * BENCH_HEADS * n * n * BENCH_D * (0.5 if causal else 1.0)
    return forward * (2.5 if backward else 1.0)


def no_grad(function, *args, **kwargs):
    """``function(*args, **kwargs)`` without building a graph: forward time alone."""
    def run():
        with torch.no_grad():
            return function(*args, **kwargs)
    return run


def bench(module) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    print(f"\ntiming: float16, b={BENCH_BATCH}, h={BENCH_HEADS}, d={BENCH_D} (triton.testing.do_bench, median ms)")
    print(f"{'n':>6} {'causal':6} {'pass':8} {'triton ms':>10} {'TFLOP/s':>8} {'sdpa ms':>9} {'TFLOP/s':>8} "
          f"{'ratio':>6}")
    for n in BENCH_LENGTHS:
        for causal in (False, True):
            q, k, v, grad_o = (torch.randn(BENCH_BATCH, BENCH_HEADS, n, BENCH_D, device="cuda", dtype=torch.float16,
                                           requires_grad=i < 3) for i in range(4))
            out = module.TritonFlashAttention.apply(q, k, v, causal)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                rows = {
                    "forward": (no_grad(module.triton_flash_attention_forward, q, k, v, causal),
                                no_grad(torch.nn.functional.scaled_dot_product_attention, q, k, v, is_causal=causal)),
                    "backward": (lambda: out.backward(grad_o, retain_graph=True),
                                 lambda: ref.backward(grad_o, retain_graph=True)),
                }
                for what, (ours, theirs) in rows.items():
                    ms = do_bench(ours, warmup=10, rep=50, grad_to_none=[q, k, v])
                    ms_sdpa = do_bench(theirs, warmup=10, rep=50, grad_to_none=[q, k, v])
                    work = flops(n, causal, backward=what == "backward")
                    print(f"{n:6d} {str(causal):6} {what:8} {ms:10.3f} {work / ms / 1e9:8.1f} {ms_sdpa:9.3f} "
                          f"{work / ms_sdpa / 1e9:8.1f} {ms / ms_sdpa:6.2f}")
            del q, k, v, grad_o, out, ref
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder bench --gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--submission", type=Path, default=ROOT / "solutions",
                        help="folder with flash_attention_triton.py (default: solutions/; trusted code only)")
    parser.add_argument("--grade-only", action="store_true", help="skip the timing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench --gpu: no CUDA device here (torch.cuda.is_available() is False); nothing was graded or "
              "timed on a GPU. The CPU grader runs the Triton kernels in Triton's interpreter instead.")
        return 0
    if os.environ.get("TRITON_INTERPRET"):
        print("bench --gpu: unset TRITON_INTERPRET to run the kernels on the GPU")
        return 2
    start = time.monotonic()
    module = load_submission(args.submission)
    ok = grade(module)
    if not args.grade_only:
        bench(module)
    print(f"\n{'all values within tolerance' if ok else 'SOME VALUES FAILED'}; {time.monotonic() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
