"""Public suite: exercises/training.py (lecture 05): the loss, AdamW, the schedule, clipping
and batches. Each check catches a common first mistake on small public inputs: the loss
against F.cross_entropy (with logits of size 1000), three AdamW steps of a small model
against torch.optim.AdamW (weight decay, eps and lr large enough that L2 instead of
decoupled decay, a missing bias correction and eps inside the square root all show), the
warm-up and the end of the cosine, one global clipping norm, windows shifted by one."""
import pytest
import torch
import torch.nn.functional as F

from autograder.adapters.training import optimizer_trajectory
from autograder.compare import check_tensor, tolerance
from autograder.inputs import randn

F64, F32 = torch.float64, torch.float32


def _known(s):
    """The training exercise's known mistakes (staff side only; the release has recorded values)."""
    return s.mistakes.training


def _loss_check(worker, reference, logits, targets, what):
    expected = F.cross_entropy(logits.double().flatten(0, -2), targets.flatten())
    known = reference.mistakes(lambda s: _known(s).cross_entropy_mistakes(logits, targets))
    got = worker.adapters.training.cross_entropy(logits, targets)
    check_tensor(got, expected, what, dtype=logits.dtype, n_terms=logits.shape[-1],
                 magnitude=logits.abs().max().item(), mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("cross_entropy_values")
def test_public_loss_equals_torch(worker, reference):
    """cross_entropy of (2, 3, 5) logits with one padded (-100) target equals F.cross_entropy."""
    logits = randn(2, 3, 5, seed=101, dtype=F32, scale=2.0)
    targets = torch.tensor([[0, 4, -100], [2, 2, 1]])
    _loss_check(worker, reference, logits, targets, "cross_entropy(logits (2, 3, 5), one target ignored)")


@pytest.mark.points(1)
@pytest.mark.mirrors("cross_entropy_large_logits")
def test_public_loss_of_logits_near_1000(worker, reference):
    """cross_entropy stays finite for logits near 1000 (exp(1000) overflows: subtract the row max)."""
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [500.0, 501.0, 0.0]])
    _loss_check(worker, reference, logits, torch.tensor([0, 2]), "cross_entropy(logits near 1000)")


def _spec(steps):
    shapes = {"w1": (4, 3), "b1": (4,), "gain": (4,), "w2": (2, 4), "b2": (2,)}
    init = {n: randn(*shape, seed=110 + i, dtype=F64, scale=0.5) + (1.0 if n == "gain" else 0.0)
            for i, (n, shape) in enumerate(shapes.items())}
    # lr * weight_decay and eps large on purpose, so that the common mistakes move the weights visibly
    return dict(init=init, x=randn(8, 3, seed=120, dtype=F64), y=randn(8, 2, seed=121, dtype=F64), steps=steps,
                kwargs=dict(lr=0.1, betas=(0.8, 0.9), eps=0.05, weight_decay=0.5), groups=[dict(names=list(init))])


@pytest.mark.points(1)
@pytest.mark.mirrors("adamw_trajectory_groups", "adamw_trajectory_defaults")
def test_public_adamw_three_steps_equal_torch(worker, reference):
    """three AdamW steps of a small model equal torch.optim.AdamW's (decoupled decay, bias correction, eps)."""
    spec = _spec(3)
    expected = optimizer_trajectory(lambda p, **kw: torch.optim.AdamW(p, foreach=False, **kw), spec)
    known = reference.mistakes(lambda s: [(text, run["params"]) for text, run in _known(s).adamw_trajectories(spec)])
    got = worker.adapters.training.adamw_trajectory(spec)
    # float64 rounding of a few steps (see the hidden suite's trajectory tolerance)
    check_tensor(got["params"], expected["params"], "AdamW: parameters after each step (row = step)",
                 tol=spec["steps"] * tolerance(F64, n_terms=8), mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("adamw_state")
def test_public_adamw_state_has_the_api_names(worker):
    """after a step each parameter's state holds step, exp_avg and exp_avg_sq."""
    got = worker.adapters.training.adamw_trajectory(_spec(1))
    for name, state in got["state"].items():
        missing = [k for k in ("step", "exp_avg", "exp_avg_sq") if k not in state]
        assert not missing, f"the state of {name} has keys {state['keys']}; missing {missing}"
    assert sorted(got["state"]) == sorted(_spec(1)["init"]), "every parameter with a gradient has state"


@pytest.mark.points(1)
@pytest.mark.mirrors("schedule_warmup", "schedule_cosine", "schedule_after_total")
def test_public_schedule_from_0_to_12(worker, reference):
    """warm-up max_lr * step / warmup_steps (0 at step 0), cosine to exactly min_lr at total_steps, then min_lr."""
    kw = dict(max_lr=1.0, min_lr=0.2, warmup_steps=4, total_steps=10)
    steps = list(range(13))
    expected = reference(lambda s: torch.tensor([float(s.training.lr_cosine_schedule(t, **kw)) for t in steps],
                                                dtype=F64))
    known = reference.mistakes(lambda s: _known(s).schedule_mistakes(steps, **kw))
    got = worker.adapters.training.schedule(steps, **kw)
    check_tensor(got["values"], expected, "lr_cosine_schedule(step, 1.0, 0.2, 4, 10) at steps 0..12",
                 mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("clip_grad_norm_global")
def test_public_clipping_uses_one_norm(worker, reference):
    """gradients [3, 0] and [4] (global norm 5) clipped to 1 are all scaled by 1/5, as torch's."""
    grads = [torch.tensor([3.0, 0.0], dtype=F64), torch.tensor([4.0], dtype=F64)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    known = reference.mistakes(lambda s: _known(s).clip_mistakes(grads, 1.0))
    got = worker.adapters.training.clip(grads, 1.0)
    check_tensor(got["norm"], norm.float(), "the returned norm (before clipping)", dtype=F32)
    check_tensor(torch.cat(got["grads"]), torch.cat([p.grad for p in params]), "the gradients after clipping",
                 mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("get_batch_windows")
def test_public_batches_are_shifted_windows(worker, reference):
    """get_batch(data, 4, 6): (4, 6) long windows at torch.randint's starts, y = x shifted by one."""
    data = torch.arange(100, 130)
    x, y = reference(lambda s: s.training.get_batch(data, 4, 6, generator=torch.Generator().manual_seed(3)))
    got = worker.adapters.training.get_batch(data, 4, 6, 3)
    assert "raised" not in got, f"get_batch raised {got.get('raised')}"
    check_tensor(got["x"], x, "x")
    check_tensor(got["y"], y, "y (x shifted by one)")


# -- the rest of the API, on public inputs (the staff's suite: the same properties, other inputs) --
CE_BANNED = [r"cross_?entropy", r"nll", r"log_?softmax", r"logsumexp"]
ADAM_BANNED = [r"^adamw?$", r"^_functional$", r"^_(single|multi)_tensor_adamw?$", r"^_fused_adamw?_?$"]


@pytest.mark.points(1)
@pytest.mark.mirrors("cross_entropy_ignore_index", "cross_entropy_half_precision", "cross_entropy_is_written_by_hand")
def test_public_loss_ignore_index_half_and_by_hand(worker, reference):
    """ignore_index=3 drops those targets from the mean, a float16 loss stays float16, and no built-in
    loss is called (read from your source)."""
    from autograder import static

    static.assert_source_avoids(worker, "training", "cross_entropy", CE_BANNED,
                                "the exercise asks you to write the loss from max, exp, sum and log")
    logits = randn(4, 2, 6, seed=131, dtype=F64, scale=2.0)
    targets = torch.tensor([[3, 1], [0, 3], [5, 2], [3, 4]])
    expected = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=3)
    known = reference.mistakes(lambda s: _known(s).cross_entropy_mistakes(logits, targets, 3))
    got = worker.adapters.training.cross_entropy(logits, targets, ignore_index=3)
    check_tensor(got, expected, "cross_entropy(logits (4, 2, 6), targets, ignore_index=3)", n_terms=6,
                 magnitude=logits.abs().max().item(), mistakes=known)
    half = randn(3, 7, seed=132, dtype=torch.float16, scale=2.0)
    half_targets = torch.tensor([1, 6, 0])
    check_tensor(worker.adapters.training.cross_entropy(half, half_targets),
                 F.cross_entropy(half.double(), half_targets), "cross_entropy(logits in float16)",
                 dtype=torch.float16, n_terms=7, magnitude=half.abs().max().item())


def _spec_with(steps, **extra):
    return {**_spec(steps), **extra}


def _check_run(worker, reference, spec, what):
    expected = optimizer_trajectory(lambda p, **kw: torch.optim.AdamW(p, foreach=False, **kw), spec)
    known = reference.mistakes(lambda s: [(text, run["params"]) for text, run in _known(s).adamw_trajectories(spec)])
    got = worker.adapters.training.adamw_trajectory(spec)
    assert got["names"] == expected["names"], f"{what}: the parameters came back as {got['names']}"
    check_tensor(got["params"], expected["params"], f"{what}: parameters after each step (row = step)",
                 tol=spec["steps"] * tolerance(F64, n_terms=8), mistakes=known)
    return got, expected


@pytest.mark.points(1)
@pytest.mark.mirrors("adamw_trajectory_groups")
def test_public_adamw_two_groups(worker, reference):
    """two param groups, each with its own lr, betas, eps and weight_decay, follow torch.optim.AdamW."""
    spec = _spec_with(3, groups=[dict(names=["w1", "w2"]),
                                 dict(names=["b1", "b2", "gain"], lr=0.03, betas=(0.6, 0.8), eps=1e-3,
                                      weight_decay=0.1)])
    _check_run(worker, reference, spec, "AdamW with two param groups")


@pytest.mark.points(1)
@pytest.mark.mirrors("adamw_trajectory_defaults")
def test_public_adamw_defaults(worker, reference):
    """AdamW(params) uses lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01."""
    _check_run(worker, reference, _spec_with(3, kwargs={}), "AdamW(params) with its defaults")


@pytest.mark.points(1)
@pytest.mark.mirrors("adamw_skips_params_without_grad", "adamw_state")
def test_public_adamw_skips_params_without_grad(worker, reference):
    """a parameter without a gradient is left alone (no decay, no moments, no step count); state step,
    exp_avg and exp_avg_sq equal torch's."""
    spec = _spec_with(4, drop={step: ["gain"] for step in range(2, 5)})
    got, expected = _check_run(worker, reference, spec, "AdamW with a parameter that loses its gradient after step 1")
    no_skip = reference(lambda s: _known(s).ADAMW_NO_SKIP)
    step = got["state"].get("gain", {}).get("step")
    assert step is not None and float(step) == float(expected["state"]["gain"]["step"]), (
        f"the step count of a parameter with a gradient in 1 of 4 steps is {step}, expected 1"
        f"\n  This looks like a known mistake: {no_skip}")
    for name in expected["names"]:
        state = got["state"].get(name, {})
        missing = [k for k in ("step", "exp_avg", "exp_avg_sq") if k not in state]
        assert not missing, f"the state of {name} has keys {state.get('keys')}; missing {missing}"
        for key in ("exp_avg", "exp_avg_sq"):
            check_tensor(state[key], expected["state"][name][key], f"state[{key!r}] of {name}",
                         tol=spec["steps"] * tolerance(F64, n_terms=8))


@pytest.mark.points(1)
@pytest.mark.mirrors("adamw_step_closure", "adamw_is_written_by_hand")
def test_public_adamw_closure_and_by_hand(worker):
    """step(closure) returns the closure's loss and steps with its gradients; AdamW calls no torch.optim
    Adam(W) (read from your source)."""
    from autograder import static

    static.assert_source_avoids(worker, "training", "AdamW", ADAM_BANNED,
                                "the exercise asks you to write the AdamW update yourself")
    spec = _spec_with(1, kwargs=dict(lr=0.02))
    expected = optimizer_trajectory(lambda p, **kw: torch.optim.AdamW(p, foreach=False, **kw), spec)
    got = worker.adapters.training.adamw_closure(spec["init"], spec["x"], spec["y"], dict(lr=0.02))
    assert got["returned"] is not None, "step(closure) returned None; it must return the closure's loss"
    check_tensor(got["returned"], expected["losses"][0], "the loss step(closure) returned")
    check_tensor(got["params"], expected["params"][1], "the parameters after step(closure)",
                 tol=tolerance(F64, n_terms=8))


@pytest.mark.points(1)
@pytest.mark.mirrors("schedule_returns_float")
def test_public_schedule_returns_float(worker):
    """lr_cosine_schedule returns a Python float (an optimizer's group['lr'] is a number)."""
    got = worker.adapters.training.schedule([0, 2, 5, 9], max_lr=1.0, min_lr=0.1, warmup_steps=3, total_steps=8)
    wrong = sorted({t for t in got["types"] if t not in ("float", "int")})
    assert not wrong, f"lr_cosine_schedule returned {wrong[0]}, expected a float"


def _torch_clip(grads, max_norm):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(3 if g is None else g.shape, dtype=F64))
        p.grad = None if g is None else g.clone()
        params.append(p)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm, [p.grad for p in params if p.grad is not None]


@pytest.mark.points(1)
@pytest.mark.mirrors("clip_grad_norm_eps", "clip_grad_norm_below_max")
def test_public_clipping_eps_none_and_below_max(worker, reference):
    """a parameter without a gradient is skipped; the scale is max_norm / (norm + eps) with the eps
    given; gradients whose norm is below max_norm stay exactly as they are."""
    grads = [randn(3, 2, seed=141, dtype=F64), None, randn(4, seed=142, dtype=F64, scale=3.0)]
    kept = [g for g in grads if g is not None]
    norm = torch.cat([g.reshape(-1) for g in kept]).norm()
    known = reference.mistakes(lambda s: _known(s).clip_mistakes(grads, 1.0, 0.4))
    got = worker.adapters.training.clip(grads, 1.0, with_eps=0.4)
    returned = got["grads"]
    assert isinstance(returned, list) and len(returned) == 3 and returned[1] is None and returned[0] is not None, (
        "clip_grad_norm_ must leave a parameter without a gradient as it is (grad None) and clip the others")
    check_tensor(got["norm"], norm.float(), "the returned norm (before clipping)", dtype=F32, n_terms=10)
    check_tensor(torch.cat([r.reshape(-1) for r in returned if r is not None]),
                 torch.cat([(g * (1.0 / (norm + 0.4))).reshape(-1) for g in kept]),
                 f"the gradients after clip_grad_norm_(params, 1.0, eps=0.4) with norm {norm.item():.3f}",
                 n_terms=10, mistakes=known)
    small = [randn(5, seed=143, dtype=F64, scale=0.05), randn(2, 2, seed=144, dtype=F64, scale=0.05)]
    norm, expected = _torch_clip(small, 3.0)
    got = worker.adapters.training.clip(small, 3.0)
    check_tensor(torch.cat([r.reshape(-1) for r in got["grads"]]), torch.cat([g.reshape(-1) for g in expected]),
                 f"gradients of norm {norm.item():.3f} with max_norm 3 (left as they are)", n_terms=9)


@pytest.mark.points(1)
@pytest.mark.mirrors("get_batch_reaches_every_start")
def test_public_batches_reach_every_start(worker, reference):
    """with 200 draws over 5 possible starts, every start (the last one too) appears, as the API's randint draws."""
    data = torch.arange(500, 509)
    x, y = reference(lambda s: s.training.get_batch(data, 200, 4, generator=torch.Generator().manual_seed(7)))
    known = reference.mistakes(lambda s: _known(s).batch_mistakes(data, 200, 4, 7))
    got = worker.adapters.training.get_batch(data, 200, 4, 7)
    assert "raised" not in got, (f"get_batch raised {got.get('raised')}; every start drawn from "
                                 f"randint(len(data) - context_length) leaves a full window and its targets")
    check_tensor(got["x"], x, "get_batch(9 tokens, 200, 4): x", mistakes=known)
    check_tensor(got["y"], y, "get_batch(9 tokens, 200, 4): y (x shifted by one)")
