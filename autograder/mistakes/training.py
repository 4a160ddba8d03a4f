"""Known mistakes of the training exercise, computed in the grader: each gives what the
wrong implementation returns on the grader's inputs, with the sentence a student reads when
the submission matches it (``compare.check_tensor(..., mistakes=...)``)."""
from __future__ import annotations

import math

import torch

from ..adapters.training import optimizer_trajectory

# -- cross_entropy ----------------------------------------------------------------------
CE_NOT_STABLE = ("the loss overflows for large logits: subtract each row's maximum before exp "
                 "(logsumexp(z) = c + log(sum(exp(z - c))) with c = max(z))")
CE_IGNORED_IN_MEAN = ("positions whose target is ignore_index still count in the mean's denominator: "
                      "divide by the number of kept positions")
CE_IGNORE_INDEX_FIXED = "ignore_index is not used: positions with the given ignore_index still count"

# -- AdamW ------------------------------------------------------------------------------
ADAMW_L2 = ("the weight decay is added to the gradient (Adam + L2): AdamW decays the parameter "
            "itself, p -= lr * weight_decay * p, outside the adaptive step")
ADAMW_DECAY_AFTER = ("the weight decay is applied after the Adam update: torch.optim.AdamW decays "
                     "the parameter first, then takes the step")
ADAMW_NO_BIAS_CORRECTION = {
    "first": "the first moment is not bias-corrected: m_hat = m / (1 - beta1^t)",
    "second": "the second moment is not bias-corrected: v_hat = v / (1 - beta2^t)",
    "both": "neither moment is bias-corrected: m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t)",
}
ADAMW_EPS_IN_SQRT = "eps sits inside the square root: the step divides by sqrt(v_hat) + eps"
ADAMW_NO_SKIP = ("parameters without a gradient are not skipped (treated as a zero gradient): "
                 "their decay, moments and step count must stay as they are")

# -- lr_cosine_schedule -----------------------------------------------------------------
WARMUP_OFF_BY_ONE = ("the warm-up is off by one: the rate is max_lr * step / warmup_steps "
                     "(0 at step 0, max_lr at step warmup_steps)")
COSINE_NEVER_MIN = ("the cosine never reaches min_lr: progress is (step - warmup_steps) / "
                    "(total_steps - warmup_steps), 1 at step total_steps")

# -- clip_grad_norm_ --------------------------------------------------------------------
CLIP_PER_PARAMETER = ("each gradient is clipped by its own norm: clip_grad_norm_ takes one global norm "
                      "over all gradients together and scales every one by the same factor")
CLIP_NO_EPS = "the gradients are scaled by max_norm / norm: the API divides by norm + eps"
CLIP_ALWAYS = ("gradients are scaled although their norm does not exceed max_norm: clip only when "
               "norm > max_norm (a clip never enlarges a gradient)")

# -- get_batch --------------------------------------------------------------------------
BATCH_PAST_END = ("the starts are drawn from randint(len(data) - context_length + 1): the last start's "
                  "target runs past the end; use randint(len(data) - context_length, ...)")
BATCH_MISSES_LAST = ("the starts are drawn from randint(len(data) - context_length - 1): the last start "
                     "len(data) - context_length - 1 is never drawn; use randint(len(data) - context_length, ...)")


def cross_entropy_mistakes(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    # without the max, in the logits' own dtype (so it overflows as such code does)
    naive = logits.exp().sum(-1).log() - logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    yield CE_NOT_STABLE, naive[keep].mean()
    z = logits.double()
    losses = torch.logsumexp(z, -1) - z.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    yield CE_IGNORED_IN_MEAN, (losses * keep).sum() / keep.numel()
    if ignore_index != -100:
        every = targets.clamp_min(0)
        fixed = targets != -100
        all_losses = torch.logsumexp(z, -1) - z.gather(-1, every.unsqueeze(-1)).squeeze(-1)
        yield CE_IGNORE_INDEX_FIXED, all_losses[fixed].mean()


class MistakenAdamW(torch.optim.Optimizer):
    """AdamW with the knobs the known mistakes turn (the grader's code, float64 inputs)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, *, l2=False,
                 decay_after=False, correct_first=True, correct_second=True, eps_in_sqrt=False, no_skip=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.knobs = dict(l2=l2, decay_after=decay_after, correct_first=correct_first,
                          correct_second=correct_second, eps_in_sqrt=eps_in_sqrt, no_skip=no_skip)

    @torch.no_grad()
    def step(self, closure=None):
        k = self.knobs
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None and not k["no_skip"]:
                    continue
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                if k["l2"]:
                    grad = grad + wd * p
                elif not k["decay_after"]:
                    p.mul_(1 - lr * wd)
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                m_hat = m / (1 - b1 ** t) if k["correct_first"] else m
                v_hat = v / (1 - b2 ** t) if k["correct_second"] else v
                denom = (v_hat + eps).sqrt() if k["eps_in_sqrt"] else v_hat.sqrt() + eps
                update = lr * m_hat / denom
                if k["decay_after"] and not k["l2"]:
                    p.sub_(update)
                    p.mul_(1 - lr * wd)
                else:
                    p.sub_(update)


ADAMW_KNOBS = [
    (ADAMW_L2, dict(l2=True)),
    (ADAMW_DECAY_AFTER, dict(decay_after=True)),
    (ADAMW_NO_BIAS_CORRECTION["first"], dict(correct_first=False)),
    (ADAMW_NO_BIAS_CORRECTION["second"], dict(correct_second=False)),
    (ADAMW_NO_BIAS_CORRECTION["both"], dict(correct_first=False, correct_second=False)),
    (ADAMW_EPS_IN_SQRT, dict(eps_in_sqrt=True)),
    (ADAMW_NO_SKIP, dict(no_skip=True)),
]


def adamw_trajectories(spec):
    """(sentence, trajectory) of every known AdamW mistake on the grader's spec: all computed
    here, with the same model, inputs and schedule of missing gradients."""
    for sentence, knobs in ADAMW_KNOBS:
        def make(params, _knobs=knobs, **kwargs):
            return MistakenAdamW(params, **kwargs, **_knobs)
        yield sentence, optimizer_trajectory(make, spec)


def schedule_formula(step, max_lr, min_lr, warmup_steps, total_steps, *, warmup_shift=0, cosine_span=None):
    """The API's schedule, with the knobs of its mistakes."""
    if step < warmup_steps:
        return max_lr * (step + warmup_shift) / warmup_steps
    if step > total_steps:
        return min_lr
    span = total_steps - warmup_steps if cosine_span is None else cosine_span
    return min_lr + 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / span)) * (max_lr - min_lr)


def schedule_mistakes(steps, max_lr, min_lr, warmup_steps, total_steps):
    def values(**knobs):
        return torch.tensor([schedule_formula(s, max_lr, min_lr, warmup_steps, total_steps, **knobs)
                             for s in steps], dtype=torch.float64)
    yield WARMUP_OFF_BY_ONE, values(warmup_shift=1)
    yield WARMUP_OFF_BY_ONE, values(warmup_shift=-1)
    yield COSINE_NEVER_MIN, values(cosine_span=total_steps)
    yield COSINE_NEVER_MIN, values(cosine_span=total_steps - warmup_steps + 1)


def _acc(grads):
    return torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32


def clip_mistakes(grads, max_norm, eps=1e-6):
    """Gradients after each known clipping mistake, flattened and concatenated in order
    (None entries, parameters without a gradient, left out)."""
    kept = [g for g in grads if g is not None]
    acc = _acc(kept)
    norm = torch.stack([g.to(acc).pow(2).sum() for g in kept]).sum().sqrt()

    def flat(gs):
        return torch.cat([g.reshape(-1).double() for g in gs])

    per = [g * (max_norm / (g.to(acc).norm() + eps)) if g.to(acc).norm() > max_norm else g for g in kept]
    yield CLIP_PER_PARAMETER, flat(per)
    if norm > max_norm:
        yield CLIP_NO_EPS, flat([g * (max_norm / norm) for g in kept])
    else:
        yield CLIP_ALWAYS, flat([g * (max_norm / (norm + eps)) for g in kept])


def batch_starts(n, batch_size, context_length, seed, shift=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(n - context_length + shift, (batch_size,), generator=generator)


def batch_mistakes(data, batch_size, context_length, seed):
    """x of each known mistake (x always exists; a start past the end breaks only y)."""
    for sentence, shift in ((BATCH_PAST_END, 1), (BATCH_MISSES_LAST, -1)):
        starts = batch_starts(len(data), batch_size, context_length, seed, shift)
        yield sentence, torch.stack([data[s: s + context_length] for s in starts.tolist()])
