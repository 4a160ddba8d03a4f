"""Hidden suite: exercises/training.py (lecture 05).

The loss against ``F.cross_entropy``; your ``AdamW`` driven by the grader's own small model
(worker side: ``autograder/adapters/training.py``) and its whole trajectory compared with
``torch.optim.AdamW`` on the same model, inputs and missing gradients, run here; the
schedule against the API's formula; ``clip_grad_norm_`` against
``torch.nn.utils.clip_grad_norm_``; ``get_batch`` against the API's exact ``randint`` call.
Each known mistake (``autograder/mistakes/training.py``) is computed here too and named
only when your numbers match it.
"""

import pytest
import torch
import torch.nn.functional as F

from autograder import static
from autograder.adapters.training import optimizer_trajectory
from autograder.compare import check_tensor, tolerance
from autograder.inputs import randn
from autograder.mistakes import training as mt

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16

# the API: "May not call F.cross_entropy, F.nll_loss, F.log_softmax, torch.log_softmax,
# torch.logsumexp" and "May not call torch.optim.Adam(W) or torch.optim._functional";
# matched against every attribute and imported name the entry point reaches
CE_BANNED = [r"cross_?entropy", r"nll", r"log_?softmax", r"logsumexp"]
ADAM_BANNED = [r"^adamw?$", r"^_functional$", r"^_(single|multi)_tensor_adamw?$", r"^_fused_adamw?_?$"]


def _targets(shape, vocab, seed, ignore=(), ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(vocab, shape, generator=g)
    flat = t.view(-1)
    for i in ignore:
        flat[i] = ignore_index
    return t


def _ce_reference(logits, targets, ignore_index=-100):
    """torch's own loss, in float64 (the expected value for every dtype)."""
    return F.cross_entropy(logits.double().flatten(0, -2), targets.flatten(), ignore_index=ignore_index)


def _check_ce(worker, logits, targets, what, **kwargs):
    got = worker.adapters.training.cross_entropy(logits, targets, **kwargs)
    check_tensor(got, _ce_reference(logits, targets, kwargs.get("ignore_index", -100)), what,
                 dtype=logits.dtype, n_terms=logits.shape[-1], magnitude=logits.abs().max().item(),
                 mistakes=lambda: mt.cross_entropy_mistakes(logits, targets, kwargs.get("ignore_index", -100)))


# ---------------------------------------------------------------------------------------
# cross_entropy
# ---------------------------------------------------------------------------------------
CE_CASES = {
    # name: (logits shape, dtype, flat indices whose target is ignored)
    "batch-seq-f64": ((3, 5, 11), F64, (1, 7, 8)),  # extra batch dims, padding ignored
    "rows-f32": ((9, 13), F32, (4,)),
    "one-row-f64": ((1, 6), F64, ()),
}


@pytest.mark.points(2)
@pytest.mark.rules("ce.value", "ce.ignore-mean", "ce.batch-dims", "ce.dtype")
@pytest.mark.parametrize("case", CE_CASES)
def test_cross_entropy_values(worker, case):
    """cross_entropy equals F.cross_entropy over (..., vocab) logits, ignored positions left out."""
    shape, dtype, ignored = CE_CASES[case]
    logits = randn(*shape, seed=11, dtype=dtype, scale=3.0)
    targets = _targets(shape[:-1], shape[-1], seed=12, ignore=ignored)
    _check_ce(worker, logits, targets, f"cross_entropy(logits {shape} {str(dtype)[6:]}, {len(ignored)} ignored)")


@pytest.mark.points(2)
@pytest.mark.rules("ce.stable")
def test_cross_entropy_large_logits(worker):
    """cross_entropy is finite for logits of size 1e4 (subtract the row max before exp)."""
    logits = randn(4, 3, 9, seed=13, dtype=F32, scale=1e4).abs()  # exp(1e4) is inf in any float
    targets = _targets((4, 3), 9, seed=14)
    _check_ce(worker, logits, targets, "cross_entropy(logits of size ~1e4)")


@pytest.mark.points(2)
@pytest.mark.rules("ce.ignore-index", "ce.ignore-mean")
def test_cross_entropy_ignore_index(worker):
    """ignore_index=2 (a real class id here): positions with target 2 leave the sum and the mean."""
    logits = randn(6, 4, 7, seed=15, dtype=F64, scale=2.0)
    targets = _targets((6, 4), 7, seed=16)  # some targets are 2 by chance, and more are set
    targets.view(-1)[[0, 5, 9, 10]] = 2
    _check_ce(worker, logits, targets, "cross_entropy(..., ignore_index=2)", ignore_index=2)


@pytest.mark.points(1)
@pytest.mark.rules("ce.dtype")
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_cross_entropy_half_precision(worker, dtype):
    """half-precision logits give a loss in their own dtype, accurate to it."""
    logits = randn(5, 6, 17, seed=17, dtype=dtype, scale=4.0)
    targets = _targets((5, 6), 17, seed=18, ignore=(3,))
    _check_ce(worker, logits, targets, f"cross_entropy(logits in {str(dtype)[6:]})")


@pytest.mark.points(1)
@pytest.mark.rules("ce.no-builtin")
def test_cross_entropy_is_written_by_hand(worker):
    """cross_entropy calls none of F.cross_entropy, F.nll_loss, log_softmax, logsumexp (read from your source)."""
    static.assert_source_avoids(worker, "training", "cross_entropy", CE_BANNED,
                                "the exercise asks you to write the loss from max, exp, sum and log")
    logits = randn(4, 5, seed=19, dtype=F32)
    _check_ce(worker, logits, _targets((4,), 5, seed=20), "cross_entropy(logits (4, 5))")


# ---------------------------------------------------------------------------------------
# AdamW: trajectories of the grader's model
# ---------------------------------------------------------------------------------------
def _init(seed, unused=False):
    shapes = {"w1": (6, 5), "b1": (6,), "gain": (6,), "w2": (3, 6), "b2": (3,)}
    if unused:
        shapes["unused"] = (4,)  # in the optimizer, never in the loss: it never has a gradient
    return {name: randn(*shape, seed=seed + i, dtype=F64, scale=0.5) + (1.0 if name == "gain" else 0.0)
            for i, (name, shape) in enumerate(shapes.items())}


def _spec(case):
    x, y = randn(16, 5, seed=31, dtype=F64), randn(16, 3, seed=32, dtype=F64)
    if case == "groups":
        # two groups that differ in every hyperparameter; betas not the defaults; a large
        # lr * weight_decay so that decaying before or after the step differs visibly
        return dict(init=_init(40), x=x, y=y, steps=6,
                    kwargs=dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.3),
                    groups=[dict(names=["w1", "w2"]),
                            dict(names=["b1", "b2", "gain"], lr=0.02, betas=(0.7, 0.9), eps=1e-4,
                                 weight_decay=0.05)])
    if case == "defaults":  # AdamW(params): lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
        return dict(init=_init(50), x=x, y=y, steps=5, kwargs={}, groups=[dict(names=list(_init(50)))])
    if case == "skip":
        # "unused" never has a gradient; "gain" has one for two steps, then none
        return dict(init=_init(60, unused=True), x=x, y=y, steps=6,
                    kwargs=dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.3),
                    groups=[dict(names=list(_init(60, unused=True)))],
                    drop={step: ["gain"] for step in range(3, 7)})
    raise KeyError(case)


def _torch_trajectory(spec):
    """The expected run: torch.optim.AdamW (single-tensor, the default on CPU) on the same spec."""
    return optimizer_trajectory(lambda params, **kw: torch.optim.AdamW(params, foreach=False, **kw), spec)


def _trajectory_tolerance(spec):
    """Float64 rounding of a trajectory: each step rounds every parameter a handful of times
    (decay, the two moments, the bias corrections, the division) and the gradients sum 16
    samples; a correct step written in another order differs by those roundings, carried
    into the next steps' gradients: ``tolerance(F64, n_terms=16)`` per step, summed over
    the steps (measured: 2e-16 after 50 steps, tests/test_training_reference.py)."""
    return spec["steps"] * tolerance(F64, n_terms=spec["x"].shape[0])


def _check_trajectory(got, spec, what):
    expected = _torch_trajectory(spec)
    assert got["names"] == expected["names"], f"{what}: the parameters came back as {got['names']}"
    check_tensor(got["params"], expected["params"], f"{what}: parameters after each step (row = step)",
                 tol=_trajectory_tolerance(spec),
                 mistakes=lambda: ((s, run["params"]) for s, run in mt.adamw_trajectories(spec)))
    return expected


@pytest.mark.points(4)
@pytest.mark.rules("adamw.optimizer", "adamw.decoupled", "adamw.decay-before", "adamw.bias-correction", "adamw.eps",
                   "adamw.groups", "adamw.torch-trajectory")
def test_adamw_trajectory_groups(worker):
    """six AdamW steps with two param groups (own lr, betas, eps, weight_decay) follow torch.optim.AdamW."""
    spec = _spec("groups")
    _check_trajectory(worker.adapters.training.adamw_trajectory(spec), spec, "AdamW with two param groups")


@pytest.mark.points(2)
@pytest.mark.rules("adamw.defaults", "adamw.torch-trajectory")
def test_adamw_trajectory_defaults(worker):
    """AdamW(params) uses the API's defaults lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01."""
    spec = _spec("defaults")
    _check_trajectory(worker.adapters.training.adamw_trajectory(spec), spec, "AdamW(params) with its defaults")


@pytest.mark.points(2)
@pytest.mark.rules("adamw.skip-no-grad")
def test_adamw_skips_params_without_grad(worker):
    """a parameter whose grad is None is left alone: no decay, no moment update, no step count."""
    spec = _spec("skip")
    got = worker.adapters.training.adamw_trajectory(spec)
    expected = _check_trajectory(got, spec, "AdamW with a parameter that never has a gradient and one that "
                                            "loses it after step 2")
    counted = got["state"].get("unused", {}).get("step")
    assert counted is None or float(counted) == 0, (
        f"AdamW counted {float(counted)} steps for a parameter that never had a gradient; skip it entirely"
        f"\n  This looks like a known mistake: {mt.ADAMW_NO_SKIP}")
    step = got["state"].get("gain", {}).get("step")
    assert step is not None and float(step) == float(expected["state"]["gain"]["step"]), (
        f"the step count of a parameter with a gradient in 2 of 6 steps is {step}, expected 2")


@pytest.mark.points(2)
@pytest.mark.rules("adamw.state-keys")
def test_adamw_state(worker):
    """after six steps each parameter's state holds step, exp_avg and exp_avg_sq equal to torch's."""
    spec = _spec("groups")
    got = worker.adapters.training.adamw_trajectory(spec)
    expected = _torch_trajectory(spec)
    for name in expected["names"]:
        state = got["state"].get(name)
        assert state is not None, f"AdamW has no state for parameter {name} after {spec['steps']} steps"
        missing = [k for k in ("step", "exp_avg", "exp_avg_sq") if k not in state]
        assert not missing, (f"the state of {name} has keys {state['keys']}; the API names them "
                             f"step, exp_avg, exp_avg_sq (missing {missing})")
        want = expected["state"][name]
        assert float(state["step"]) == float(want["step"]), (
            f"state['step'] of {name} is {float(state['step'])}, expected {float(want['step'])}")
        for key in ("exp_avg", "exp_avg_sq"):
            check_tensor(state[key], want[key], f"state[{key!r}] of {name}", tol=_trajectory_tolerance(spec))


@pytest.mark.points(1)
@pytest.mark.rules("adamw.closure")
def test_adamw_step_closure(worker):
    """step(closure) evaluates the closure, steps with its gradients and returns its loss."""
    init, x, y = _init(70), randn(16, 5, seed=71, dtype=F64), randn(16, 3, seed=72, dtype=F64)
    got = worker.adapters.training.adamw_closure(init, x, y, dict(lr=0.01))
    spec = dict(init=init, x=x, y=y, steps=1, kwargs=dict(lr=0.01), groups=[dict(names=list(init))])
    expected = _torch_trajectory(spec)
    assert got["returned"] is not None, "step(closure) returned None; it must return the closure's loss"
    check_tensor(got["returned"], expected["losses"][0], "the loss step(closure) returned")
    check_tensor(got["params"], expected["params"][1], "the parameters after step(closure)",
                 tol=_trajectory_tolerance(spec))


@pytest.mark.points(1)
@pytest.mark.rules("adamw.no-builtin")
def test_adamw_is_written_by_hand(worker):
    """AdamW does not call torch.optim.Adam(W) or torch.optim._functional (read from your source)."""
    static.assert_source_avoids(worker, "training", "AdamW", ADAM_BANNED,
                                "the exercise asks you to write the AdamW update yourself")
    spec = _spec("defaults")
    _check_trajectory(worker.adapters.training.adamw_trajectory({**spec, "steps": 2}), {**spec, "steps": 2},
                      "AdamW, two steps")


# ---------------------------------------------------------------------------------------
# lr_cosine_schedule
# ---------------------------------------------------------------------------------------
SCHEDULE = dict(max_lr=3e-3, min_lr=3e-4, warmup_steps=7, total_steps=30)


def _check_schedule(worker, steps, what):
    got = worker.adapters.training.schedule(steps, **SCHEDULE)
    expected = torch.tensor([mt.schedule_formula(s, **SCHEDULE) for s in steps], dtype=F64)
    # a handful of float64 roundings of values of order max_lr (cos, products, sums)
    check_tensor(got["values"], expected, f"lr_cosine_schedule at steps {steps[0]}..{steps[-1]} ({what})",
                 tol=tolerance(F64) * SCHEDULE["max_lr"],
                 mistakes=lambda: mt.schedule_mistakes(steps, **SCHEDULE))
    return got


@pytest.mark.points(2)
@pytest.mark.rules("schedule.warmup")
def test_schedule_warmup(worker):
    """the warm-up is max_lr * step / warmup_steps: 0 at step 0, max_lr at step warmup_steps."""
    _check_schedule(worker, list(range(0, 8)), "warm-up, warmup_steps=7")


@pytest.mark.points(2)
@pytest.mark.rules("schedule.cosine")
def test_schedule_cosine(worker):
    """the cosine falls from max_lr at warmup_steps to exactly min_lr at total_steps."""
    _check_schedule(worker, list(range(7, 31)), "cosine, warmup_steps=7, total_steps=30")


@pytest.mark.points(1)
@pytest.mark.rules("schedule.after-total")
def test_schedule_after_total(worker):
    """after total_steps the rate stays at min_lr."""
    _check_schedule(worker, [31, 32, 40, 45, 60], "after total_steps=30")


@pytest.mark.points(1)
@pytest.mark.rules("schedule.float")
def test_schedule_returns_float(worker):
    """lr_cosine_schedule returns a Python float (an optimizer's group['lr'] is a number)."""
    got = _check_schedule(worker, [0, 3, 7, 20, 30, 35], "types")
    wrong = sorted({t for t in got["types"] if t not in ("float", "int")})
    assert not wrong, f"lr_cosine_schedule returned {wrong[0]}, expected a float"


# ---------------------------------------------------------------------------------------
# clip_grad_norm_
# ---------------------------------------------------------------------------------------
def _grads(seed, scale):
    return [randn(4, 5, seed=seed, dtype=F64, scale=scale), None, randn(7, seed=seed + 1, dtype=F64, scale=scale),
            randn(2, 3, seed=seed + 2, dtype=F64, scale=scale * 4)]  # one gradient much larger


def _torch_clip(grads, max_norm):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(3 if g is None else g.shape, dtype=F64))
        p.grad = None if g is None else g.clone()
        params.append(p)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm, [p.grad for p in params if p.grad is not None]


def _check_clip(got, grads, norm, expected_grads, max_norm, what, eps=1e-6):
    # the norm: a float32 0-d tensor, accurate to float32 (accumulated over 33 squares)
    check_tensor(got["norm"], norm.to(F32), f"{what}: the returned norm", dtype=F32, n_terms=33)
    returned = got["grads"]
    assert isinstance(returned, list) and len(returned) == len(grads)
    missing = [i for i, (g, r) in enumerate(zip(grads, returned)) if (g is None) != (r is None)]
    assert not missing, f"{what}: parameter {missing[0]}'s gradient changed between None and a tensor"
    flat = torch.cat([r.reshape(-1) for r in returned if r is not None])
    check_tensor(flat, torch.cat([g.reshape(-1) for g in expected_grads]), f"{what}: the gradients afterwards",
                 n_terms=33, mistakes=lambda: mt.clip_mistakes(grads, max_norm, eps))


@pytest.mark.points(3)
@pytest.mark.rules("clip.global", "clip.norm-before", "clip.skip-no-grad", "clip.float32", "clip.torch")
def test_clip_grad_norm_global(worker):
    """one norm over all gradients (a parameter without one skipped), every gradient scaled alike, as torch's."""
    grads, max_norm = _grads(81, 1.0), 1.5
    got = worker.adapters.training.clip(grads, max_norm, as_generator=True)
    norm, expected = _torch_clip(grads, max_norm)
    _check_clip(got, grads, norm, expected, max_norm, "clip_grad_norm_(model.parameters(), 1.5)")


@pytest.mark.points(2)
@pytest.mark.rules("clip.eps")
def test_clip_grad_norm_eps(worker):
    """the scale is max_norm / (norm + eps) with the eps given."""
    grads, max_norm, eps = _grads(84, 0.3), 1.0, 0.5
    got = worker.adapters.training.clip(grads, max_norm, with_eps=eps)
    kept = [g for g in grads if g is not None]
    norm = torch.cat([g.reshape(-1) for g in kept]).norm()
    _check_clip(got, grads, norm, [g * (max_norm / (norm + eps)) for g in kept], max_norm,
                f"clip_grad_norm_(params, 1.0, eps=0.5) with norm {norm.item():.3f}", eps=eps)


@pytest.mark.points(2)
@pytest.mark.rules("clip.only-above")
def test_clip_grad_norm_below_max(worker):
    """gradients whose norm is below max_norm are left exactly as they are."""
    grads, max_norm = _grads(87, 0.1), 2.0
    got = worker.adapters.training.clip(grads, max_norm)
    norm, expected = _torch_clip(grads, max_norm)
    _check_clip(got, grads, norm, expected, max_norm, f"clip_grad_norm_(params, 2.0) with norm {norm.item():.3f}")


# ---------------------------------------------------------------------------------------
# get_batch
# ---------------------------------------------------------------------------------------
def _expected_batch(data, batch_size, context_length, seed):
    starts = mt.batch_starts(len(data), batch_size, context_length, seed)  # the API's randint
    x = torch.stack([data[s: s + context_length] for s in starts.tolist()])
    y = torch.stack([data[s + 1: s + 1 + context_length] for s in starts.tolist()])
    return x, y


def _check_batch(worker, data, batch_size, context_length, seed, what):
    got = worker.adapters.training.get_batch(data, batch_size, context_length, seed)
    assert "raised" not in got, (f"{what}: get_batch raised {got.get('raised')}; every start drawn from "
                                 f"randint(len(data) - context_length) leaves a full window and its targets")
    x, y = _expected_batch(data, batch_size, context_length, seed)
    check_tensor(got["x"], x, f"{what}: x", mistakes=lambda: mt.batch_mistakes(data, batch_size, context_length, seed))
    check_tensor(got["y"], y, f"{what}: y (x shifted by one)")


@pytest.mark.points(2)
@pytest.mark.rules("batch.randint", "batch.windows", "batch.long")
def test_get_batch_windows(worker):
    """x and y are the windows at torch.randint(len(data) - context_length, ...)'s starts, y shifted by one."""
    data = torch.randint(1000, (50,), generator=torch.Generator().manual_seed(90))
    _check_batch(worker, data, 6, 8, seed=5, what="get_batch(data of 50 tokens, 6, 8)")


@pytest.mark.points(2)
@pytest.mark.rules("batch.randint")
def test_get_batch_reaches_every_start(worker):
    """with 300 draws over 7 possible starts, every start (the last one too) appears, as the API's randint draws."""
    data = torch.arange(100, 112)
    _check_batch(worker, data, 300, 5, seed=6, what="get_batch(12 tokens, 300, 5)")
