"""Worker-side helpers of exercises/flash_attention.py: the memory test's run (the cap is set
from outside, see Worker.call_with_memory_budget).

Called from the suite as ``worker.adapters.flash_attention.NAME(...)``; see the package docstring."""
import torch


# Memory is not measured here, where the submission could reset or fake any counter: the
# grader caps this worker's address space from outside (Worker.call_with_memory_budget)
# after warm_up, and memory_run must finish under that cap with right values.
def warm_up(sub):
    """Trusted, before any submission code: page in the library code a tiled forward and an
    autograd.Function backward use (matmul, exp, logsumexp, autograd), so the grader's
    baseline already holds it. Imports nothing of the submission."""

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            s = q @ k.transpose(-1, -2)
            ctx.save_for_backward(q, k, v, torch.logsumexp(s, dim=-1))
            return torch.exp(s - s.amax(dim=-1, keepdim=True)) @ v

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _ = ctx.saved_tensors
            return grad @ v.transpose(-1, -2) @ k, grad @ v.transpose(-1, -2) @ q, grad

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 128, 64, generator=g, dtype=torch.float32).requires_grad_(True) for _ in range(3))
    Probe.apply(q, k, v).sum().backward()
    return 0


def inputs(n, d, seed):
    """q, k, v and the output gradient the memory test uses (the grader draws the same)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 1, n, d, generator=g) for _ in range(4)]


def memory_run(sub, n, d, is_causal, seed):
    """The student's forward, then FlashAttention.apply and its backward, at length n; every
    value goes back so that the grader can check the work was really done."""
    q, k, v, grad = inputs(n, d, seed)
    # 256 x 256 tiles (the API allows up to 1024): the cap is about what is held, and the API's
    # 64 x 64 default would spend seconds of grading time in Python per tile at this length
    o, lse = sub.load("flash_attention.flash_attention_forward")(q, k, v, is_causal, 256, 256)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    out = sub.load("flash_attention.FlashAttention").apply(*leaves, is_causal)
    out.backward(grad)
    return {"o": o, "lse": lse, "out": out.detach(), "grads": [t.grad for t in leaves]}
