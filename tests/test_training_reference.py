"""The training reference (solutions/training.py) against PyTorch's own: AdamW against
torch.optim.AdamW over 50 steps (parameters and state), cross_entropy against
F.cross_entropy, clip_grad_norm_ against torch.nn.utils.clip_grad_norm_, the schedule
against its formula, get_batch against torch.randint with the same generator."""
import math

import pytest
import torch
import torch.nn.functional as F

from solutions import training as ref

F64 = torch.float64


def _model(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.LayerNorm(8), torch.nn.GELU(),
                                torch.nn.Linear(8, 3)).to(F64)
    model.add_module("unused", torch.nn.Linear(2, 2).to(F64))  # never in the loss: no gradient
    return model


def _groups(model):
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return [dict(params=decay, weight_decay=0.2),
            dict(params=no_decay, weight_decay=0.0, lr=3e-3, betas=(0.7, 0.95), eps=1e-6)]


def _loss(model, x, y):
    h = x
    for layer in list(model)[:4]:
        h = layer(h)
    return ((h - y) ** 2).mean()


def test_adamw_equals_torch_over_50_steps():
    ours_model, torch_model = _model(0), _model(0)
    ours = ref.AdamW(_groups(ours_model), lr=2e-2, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.1)
    theirs = torch.optim.AdamW(_groups(torch_model), lr=2e-2, betas=(0.85, 0.99), eps=1e-7, weight_decay=0.1,
                               foreach=False)
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for step in range(50):
        x, y = torch.randn(12, 5, generator=g, dtype=F64), torch.randn(12, 3, generator=g, dtype=F64)
        for model, opt in ((ours_model, ours), (torch_model, theirs)):
            opt.zero_grad()
            _loss(model, x, y).backward()
            if step % 7 == 3:  # now and then a parameter has no gradient this step
                model[0].bias.grad = None
            opt.step()
        for a, b in zip(ours_model.parameters(), torch_model.parameters()):
            worst = max(worst, (a - b).abs().max().item())
    # float64: the two differ only by the rounding of the same formula written in another
    # order (measured 2e-16 after 50 steps); 1e-13 leaves room and is 1e-9 of what any
    # mistake of autograder/mistakes/training.py moves a parameter in one step
    assert worst < 1e-13, worst
    for a, b in zip(ours_model.parameters(), torch_model.parameters()):
        sa, sb = ours.state.get(a, {}), theirs.state.get(b, {})
        assert bool(sa) == bool(sb)  # the unused layer has state in neither
        if sb:
            assert float(sa["step"]) == float(sb["step"])
            torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-13, atol=1e-17)
    assert float(ours.state[ours_model[0].bias]["step"]) < 50  # the skipped steps were not counted


def test_adamw_closure_returns_the_loss():
    model = _model(2)
    opt = ref.AdamW(model.parameters())
    x, y = torch.randn(4, 5, dtype=F64), torch.randn(4, 3, dtype=F64)

    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and torch.isfinite(loss)


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(eps=-1e-8)])
def test_adamw_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match="AdamW"):
        ref.AdamW([torch.nn.Parameter(torch.zeros(2))], **bad)


@pytest.mark.parametrize("shape,dtype", [((7, 11), torch.float32), ((2, 3, 9), F64), ((1, 4), F64),
                                         ((3, 5, 2, 6), torch.float32)])
def test_cross_entropy_equals_torch(shape, dtype):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(*shape, generator=g, dtype=F64) * 3).to(dtype)
    targets = torch.randint(shape[-1], shape[:-1], generator=g)
    targets.view(-1)[0] = -100
    if targets.numel() == 1:
        targets.view(-1)[0] = 1
    expected = F.cross_entropy(logits.flatten(0, -2), targets.flatten())
    got = ref.cross_entropy(logits, targets)
    assert got.dtype == dtype and got.shape == ()
    tol = 1e-13 if dtype == F64 else 2e-6
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_cross_entropy_ignore_index_and_large_logits():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 10, generator=g) * 1e4  # exp overflows float32 beyond ~88
    targets = torch.randint(10, (6,), generator=g)
    targets[[1, 4]] = 3
    got = ref.cross_entropy(logits, targets, ignore_index=3)
    expected = F.cross_entropy(logits, targets, ignore_index=3)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expected)  # float32's own tolerance at values ~1e4


def test_cross_entropy_half_keeps_dtype():
    logits = torch.randn(4, 7, 13).to(torch.bfloat16)
    targets = torch.randint(13, (4, 7))
    got = ref.cross_entropy(logits, targets)
    assert got.dtype == torch.bfloat16
    expected = F.cross_entropy(logits.double().flatten(0, 1), targets.flatten())
    torch.testing.assert_close(got.double(), expected, rtol=2 ** -7, atol=0)  # one bfloat16 rounding


def test_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same leading shape"):
        ref.cross_entropy(torch.zeros(3, 4), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipped, and untouched
def test_clip_grad_norm_equals_torch(max_norm):
    g = torch.Generator().manual_seed(5)
    shapes = [(4, 3), (5,), None, (2, 2, 2)]
    ours, theirs = [], []
    for shape in shapes:
        grad = None if shape is None else torch.randn(*shape, generator=g)
        for out in (ours, theirs):
            p = torch.nn.Parameter(torch.zeros(shape or (1,)))
            p.grad = None if grad is None else grad.clone()
            out.append(p)
    norm = ref.clip_grad_norm_(iter(ours), max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert norm.dtype == torch.float32 and norm.shape == ()
    torch.testing.assert_close(norm, expected)
    for a, b in zip(ours, theirs):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad)


def test_clip_grad_norm_float64_and_eps():
    p = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    p.grad = torch.tensor([3.0, 4.0, 0.0], dtype=F64)  # norm 5
    norm = ref.clip_grad_norm_([p], 1.0, eps=1.0)
    assert norm.item() == 5.0 and norm.dtype == torch.float32
    torch.testing.assert_close(p.grad, torch.tensor([0.5, 2 / 3, 0.0], dtype=F64), rtol=1e-15, atol=0)


def test_lr_cosine_schedule_boundaries():
    kw = dict(max_lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=12)
    assert ref.lr_cosine_schedule(0, **kw) == 0.0
    assert ref.lr_cosine_schedule(2, **kw) == 0.5
    assert ref.lr_cosine_schedule(4, **kw) == 1.0  # the end of the warm-up is max_lr
    assert math.isclose(ref.lr_cosine_schedule(8, **kw), 0.1 + 0.5 * 0.9, rel_tol=1e-15)  # half way
    assert math.isclose(ref.lr_cosine_schedule(12, **kw), 0.1, rel_tol=1e-15)  # exactly min_lr at the end
    assert ref.lr_cosine_schedule(13, **kw) == 0.1 and ref.lr_cosine_schedule(100, **kw) == 0.1
    for step in range(4, 13):
        formula = 0.1 + 0.5 * (1 + math.cos(math.pi * (step - 4) / 8)) * 0.9
        assert math.isclose(ref.lr_cosine_schedule(step, **kw), formula, rel_tol=1e-15)
    assert all(isinstance(ref.lr_cosine_schedule(s, **kw), float) for s in (0, 5, 20))


def test_get_batch_starts_equal_randint():
    data = torch.arange(1000, 1020)
    x, y = ref.get_batch(data, 64, 6, generator=torch.Generator().manual_seed(7))
    starts = torch.randint(20 - 6, (64,), generator=torch.Generator().manual_seed(7))
    assert x.shape == y.shape == (64, 6) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 0] - 1000, starts)
    assert torch.equal(y, x + 1)  # consecutive ids: y is x shifted by one
    assert int(starts.max()) == 13  # the last start (20 - 6 - 1) is drawn; its target is data[19]
    assert torch.equal(y[starts == 13][0], data[14:20])


def test_get_batch_rejects_short_data():
    with pytest.raises(ValueError, match="longer than context_length"):
        ref.get_batch(torch.arange(5), 2, 5)
