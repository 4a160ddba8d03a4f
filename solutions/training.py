"""Exercise: the pieces of a training loop (lecture 05).

The loss (cross-entropy of the next token), the optimizer (AdamW: Adam's bias-corrected
moments plus decoupled weight decay), the learning-rate schedule (linear warm-up, then a
cosine down to ``min_lr``), gradient clipping by the global norm, and random batches of
training windows. Each is what nanoGPT and Stanford CS336 write by hand, and each must
give the same numbers as PyTorch's own (``F.cross_entropy``, ``torch.optim.AdamW``,
``torch.nn.utils.clip_grad_norm_``).

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: float64 logits give a float64 loss computed in float64; half-precision logits are
reduced in float32 and the loss returned in their dtype; AdamW keeps its moments in each
parameter's dtype; the clipping norm is accumulated in float32 (float64 for float64
gradients) and returned as a float32 0-d tensor.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token loss: ``logsumexp(logits) - logits[target]`` over the kept positions.

    logits: (..., vocab); targets: (...) long, the same leading shape. Positions whose
    target is ``ignore_index`` (padding) count neither in the sum nor in the mean's
    denominator. Returns a 0-d tensor in the logits' dtype.

    Stable for logits of any size: with ``c = max(logits)`` of the row,
    ``logsumexp(z) = c + log(sum(exp(z - c)))``, and every ``z - c <= 0`` so no exp
    overflows; the ``c`` cancels in ``logsumexp(z) - z[target]``.
    Equals ``F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=...)``.
    Do not call F.cross_entropy, F.nll_loss, F.log_softmax, torch.log_softmax or
    torch.logsumexp. Hint: ``gather`` picks each row's target logit.
    """
    if logits.dim() < 1 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"cross_entropy expects logits (..., vocab) and targets (...) with the same leading "
                         f"shape; got logits {tuple(logits.shape)} and targets {tuple(targets.shape)}")
    ### BEGIN SOLUTION
    work = logits.float() if logits.dtype in HALF else logits  # half logits are reduced in float32
    shifted = work - work.amax(dim=-1, keepdim=True)  # (..., vocab), every entry <= 0
    log_z = shifted.exp().sum(dim=-1).log()  # (...,) logsumexp minus the row max
    keep = targets != ignore_index  # (...,)
    safe = torch.where(keep, targets, torch.zeros_like(targets))  # ignored rows gather index 0, then drop out
    target_logit = shifted.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...,) minus the same max
    losses = (log_z - target_logit)[keep]  # (n_kept,)
    return losses.mean().to(logits.dtype)
    ### END SOLUTION


# ---------------------------------------------------------------------------------------
# the optimizer
# ---------------------------------------------------------------------------------------
class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    For every parameter ``p`` with a gradient ``g``, at step ``t = 1, 2, ...``:

        p  <- p - lr * weight_decay * p           # decoupled decay, first, on the parameter
        m  <- beta1 * m + (1 - beta1) * g          # first moment
        v  <- beta2 * v + (1 - beta2) * g * g      # second moment
        m_hat = m / (1 - beta1^t)                  # bias corrections: m and v start at 0
        v_hat = v / (1 - beta2^t)
        p  <- p - lr * m_hat / (sqrt(v_hat) + eps) # eps outside the square root

    The decay is never added to the gradient (that is Adam + L2, where the decay would be
    divided by sqrt(v_hat) too). Parameters whose ``.grad`` is None are skipped entirely:
    no decay, no moment update, no step count. Per-parameter state:
    ``state["step"]`` (t), ``state["exp_avg"]`` (m) and ``state["exp_avg_sq"]`` (v).
    Hyperparameters are read per param group, so groups may differ in lr, betas, eps and
    weight_decay. Do not call torch.optim.Adam(W) or torch.optim._functional.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        if lr < 0:
            raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW: betas must lie in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"AdamW: eps and weight_decay must be >= 0, got eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ### BEGIN SOLUTION
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue  # skipped: its moments and step count stay as they are
                grad = p.grad
                state = self.state[p]
                if not state:  # first step of this parameter
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * weight_decay)  # decoupled decay, before the Adam update (as torch)
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = m / (1 - beta1 ** t)
                v_hat = v / (1 - beta2 ** t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
        ### END SOLUTION
        return loss


# ---------------------------------------------------------------------------------------
# the learning-rate schedule
# ---------------------------------------------------------------------------------------
def lr_cosine_schedule(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``max_lr``, cosine decay to ``min_lr``, then ``min_lr`` (a float).

        step < warmup_steps:                 max_lr * step / warmup_steps   (0 at step 0)
        warmup_steps <= step <= total_steps: min_lr + 0.5 * (1 + cos(pi * progress)) * (max_lr - min_lr),
                                             where progress is (step - warmup_steps) / (total_steps - warmup_steps),
        step > total_steps:                  min_lr

    So the schedule is max_lr at ``step == warmup_steps`` and exactly min_lr at
    ``step == total_steps``.
    """
    ### BEGIN SOLUTION
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step > total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    ### END SOLUTION


# ---------------------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------------------
def clip_grad_norm_(parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float,
                    eps: float = 1e-6) -> torch.Tensor:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    The norm is taken over every gradient at once, ``sqrt(sum over params of sum(g ** 2))``
    (one norm for the whole model, not one per parameter), before clipping. Only when it
    exceeds ``max_norm`` is every gradient multiplied in place by ``max_norm / (norm + eps)``
    (the eps keeps the division finite); otherwise nothing changes. Parameters whose
    ``.grad`` is None are skipped. Returns the norm as a float32 0-d tensor, as
    ``torch.nn.utils.clip_grad_norm_`` does.
    """
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    ### BEGIN SOLUTION
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    acc = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    norm = torch.stack([g.to(acc).pow(2).sum() for g in grads]).sum().sqrt()  # one norm for all
    if norm > max_norm:
        scale = max_norm / (norm + eps)  # 0-d, in the accumulation dtype
        for g in grads:
            g.mul_(scale.to(g.dtype))
    return norm.to(torch.float32)
    ### END SOLUTION


# ---------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------
def get_batch(data: torch.Tensor, batch_size: int, context_length: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``context_length`` tokens and their next tokens.

    data: (n,) long token ids. Draws the starts with exactly
    ``starts = torch.randint(n - context_length, (batch_size,), generator=generator)``, so
    every start 0 .. n - context_length - 1 is possible and the last target
    ``data[start + context_length]`` always exists. Returns ``x, y``, both
    (batch_size, context_length) long: ``x[i] = data[s : s + context_length]`` and
    ``y[i] = data[s + 1 : s + 1 + context_length]`` (the same window shifted by one).
    """
    if data.dim() != 1 or data.shape[0] <= context_length:
        raise ValueError(f"get_batch expects 1-D data longer than context_length={context_length}; "
                         f"got shape {tuple(data.shape)}")
    ### BEGIN SOLUTION
    starts = torch.randint(len(data) - context_length, (batch_size,), generator=generator)
    x = torch.stack([data[s: s + context_length] for s in starts.tolist()])  # (batch_size, context_length)
    y = torch.stack([data[s + 1: s + 1 + context_length] for s in starts.tolist()])  # shifted by one
    return x.long(), y.long()
    ### END SOLUTION
