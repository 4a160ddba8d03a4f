"""Hidden suite: exercises/rope.py and RoPE inside MultiHeadAttention (lecture 03).

The truth is RoPE in float64 (``mistakes.rope_reference``); a submission computes its
angles in float32 as the API asks, so the tolerance grows with the largest angle
(``angle_tolerance``). Each test's comment names the mistake it is there to catch;
tests/test_mistakes.py proves each one loses points.
"""
import pytest
import torch

from autograder.mistakes import rope as mistakes
from autograder.compare import angle_tolerance, check_tensor, largest_angle, rope_input_size
from autograder.inputs import randint, randn, random_state_dict
from solutions import attention as ref_attention

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


def uneven_positions(*shape, seed, high=50):
    """Sorted, gappy positions: arange would hide off-by-one and ignored-position mistakes."""
    return randint(0, high, *shape, seed=seed).sort(dim=-1).values


def _check_rope(worker, x, positions, what, theta=10000.0, interleaved=False, dtype=None):
    kwargs = {"theta": theta, "interleaved": interleaved}
    got = worker.call("rope.apply_rope", x, positions, **kwargs)
    expected = mistakes.rope_reference(x, positions, theta, interleaved)
    tol = angle_tolerance(dtype or x.dtype, positions.max().item(), x.abs().max().item())
    check_tensor(got, expected, what, dtype=dtype or x.dtype, tol=tol,
                 mistakes=lambda: mistakes.rope_mistakes(x, positions, theta, interleaved))


# ---------------------------------------------------------------------------------------
# rope_cos_sin
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.rules("rope_cos_sin.float32",
                   "rope_cos_sin.half-split",
                   "rope.frequencies",
                   "rope.angle-is-position-times-frequency")
@pytest.mark.parametrize("head_dim", [4, 8, 64])
def test_rope_cos_sin_values(worker, head_dim):
    """rope_cos_sin gives float32 cos/sin of p * theta^(-2i/d) in the half-split layout."""
    positions = uneven_positions(7, seed=1)
    got = worker.call("rope.rope_cos_sin", head_dim, positions)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "rope_cos_sin must return (cos, sin)"
    cos, sin = mistakes.rope_cos_sin_reference(head_dim, positions)
    tol = angle_tolerance(F32, positions.max().item())
    for which, name, actual, expected in [(0, "cos", got[0], cos), (1, "sin", got[1], sin)]:
        check_tensor(actual, expected, f"rope_cos_sin({head_dim}, positions)[{which}] ({name})",
                     dtype=F32, tol=tol,
                     mistakes=lambda w=which: mistakes.rope_cos_sin_mistakes(head_dim, positions, which=w))


@pytest.mark.points(1)
@pytest.mark.rules("rope.theta")
def test_rope_cos_sin_batched_positions_and_theta(worker):
    """positions of shape (b, s) give (b, s, d); theta is honoured (Llama 3 uses 500000)."""
    positions = uneven_positions(3, 5, seed=2, high=300)
    got = worker.call("rope.rope_cos_sin", 16, positions, theta=500000.0)
    cos, sin = mistakes.rope_cos_sin_reference(16, positions, 500000.0)
    tol = angle_tolerance(F32, positions.max().item())
    check_tensor(got[0], cos, "rope_cos_sin(16, positions (3, 5), theta=5e5)[0]", dtype=F32, tol=tol,
                 mistakes=lambda: mistakes.rope_cos_sin_mistakes(16, positions, 500000.0, which=0))
    check_tensor(got[1], sin, "rope_cos_sin(16, positions (3, 5), theta=5e5)[1]", dtype=F32, tol=tol,
                 mistakes=lambda: mistakes.rope_cos_sin_mistakes(16, positions, 500000.0, which=1))


# ---------------------------------------------------------------------------------------
# apply_rope
# ---------------------------------------------------------------------------------------
ROPE_CASES = {
    # name: (x shape, dtype) -- positions (s,) uneven
    "heads-d8-f64": ((2, 3, 6, 8), F64),
    "heads-d64-f32": ((1, 2, 5, 64), F32),
    "no-batch-d4": ((9, 4), F64),
    "length1": ((2, 1, 1, 16), F32),
}


@pytest.mark.points(2)
@pytest.mark.rules("rope_cos_sin.half-split",
                   "rope.frequencies",
                   "rope.angle-is-position-times-frequency",
                   "rope.half-split-default",
                   "rope.interleaved",
                   "rope.rotation-direction")
@pytest.mark.parametrize("case", ROPE_CASES)
def test_apply_rope_half_split(worker, case):
    """apply_rope (default layout) pairs dim i with i + d/2 and rotates by p * theta^(-2i/d)."""
    shape, dtype = ROPE_CASES[case]
    x = randn(*shape, seed=3, dtype=dtype)
    positions = uneven_positions(shape[-2], seed=4)
    _check_rope(worker, x, positions, f"apply_rope(x {shape}, positions)")


@pytest.mark.points(2)
@pytest.mark.rules("rope_cos_sin.half-split",
                   "rope.frequencies",
                   "rope.angle-is-position-times-frequency",
                   "rope.half-split-default",
                   "rope.interleaved")
@pytest.mark.parametrize("case", ["heads-d8-f64", "heads-d64-f32"])
def test_apply_rope_interleaved(worker, case):
    """interleaved=True pairs dims (2i, 2i+1), as in RoFormer and Meta's Llama."""
    shape, dtype = ROPE_CASES[case]
    x = randn(*shape, seed=5, dtype=dtype)
    positions = uneven_positions(shape[-2], seed=6)
    _check_rope(worker, x, positions, f"apply_rope(x {shape}, positions, interleaved=True)",
                interleaved=True)


@pytest.mark.points(1)
@pytest.mark.rules("rope.broadcast-positions")
@pytest.mark.parametrize("interleaved", [False, True], ids=["half-split", "interleaved"])
def test_apply_rope_per_sequence_positions(worker, interleaved):
    """positions of shape (b, 1, s) give each sequence its own positions, for every head."""
    x = randn(3, 2, 5, 8, seed=7, dtype=F64)
    positions = uneven_positions(3, 1, 5, seed=8)
    _check_rope(worker, x, positions, "apply_rope(x (3, 2, 5, 8), positions (3, 1, 5))",
                interleaved=interleaved)


@pytest.mark.points(1)
@pytest.mark.rules("rope.rotation-direction")
def test_apply_rope_large_positions(worker):
    """positions around 10^5 (long contexts) stay accurate with float32 angles."""
    x = randn(1, 2, 4, 32, seed=9, dtype=F32)
    positions = torch.tensor([99_990, 100_000, 100_003, 131_071])
    _check_rope(worker, x, positions, "apply_rope(x, positions ~1e5)")


@pytest.mark.points(1)
@pytest.mark.rules("rope.theta")
def test_apply_rope_theta(worker):
    """a non-default theta changes the frequencies theta^(-2i/d)."""
    x = randn(2, 6, 16, seed=10, dtype=F64)
    positions = uneven_positions(6, seed=11, high=2000)
    _check_rope(worker, x, positions, "apply_rope(x, positions, theta=500000)", theta=500000.0)


@pytest.mark.points(1)
@pytest.mark.rules("rope.dtype-kept")
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_apply_rope_half_precision(worker, dtype):
    """a half-precision input comes back in its own dtype (angles still in float32)."""
    x = randn(2, 2, 5, 8, seed=12, dtype=dtype)
    positions = uneven_positions(5, seed=13)
    _check_rope(worker, x, positions, f"apply_rope(x in {dtype}, positions)")


@pytest.mark.points(1)
@pytest.mark.rules("rope.angles-float32")
def test_apply_rope_half_precision_large_positions(worker):
    """bfloat16 x at positions in the thousands: the angles are still computed in float32
    (angles in bfloat16 lose whole radians there), the result comes back in bfloat16."""
    x = randn(2, 2, 6, 16, seed=32, dtype=BF16)
    positions = torch.tensor([1000, 2047, 2600, 3001, 4095, 5000])
    got = worker.call("rope.apply_rope", x, positions)
    expected = mistakes.rope_reference(x, positions)  # float64 angles; float32 ones are within tol
    tol = angle_tolerance(BF16, positions.max().item(), x.abs().max().item())
    # angles in bfloat16 (8 mantissa bits) round position 5000 to 4992: radians off, far beyond tol
    check_tensor(got, expected, "apply_rope(x in bfloat16, positions 1000-5000): are the angles in float32?",
                 dtype=BF16, tol=tol)


@pytest.mark.points(1)
@pytest.mark.rules("rope.odd-head-dim")
def test_apply_rope_odd_head_dim_raises(worker):
    """an odd head_dim raises ValueError (there is no pair for the last dim)."""
    raised = worker.adapters.raised(target="rope.apply_rope",
                                    args=[randn(2, 3, 7, seed=14, dtype=F32), torch.arange(3)])
    assert raised != "NotImplementedError", "not implemented: apply_rope raised NotImplementedError"
    assert raised == "ValueError", (f"apply_rope(x with head_dim 7, ...) should raise ValueError; "
                                    f"{'it raised ' + raised if raised else 'it returned a value'}")


@pytest.mark.points(1)
@pytest.mark.rules("rope.angle-is-position-times-frequency")
def test_rope_relative_property(worker):
    """<rope(q, m), rope(k, n)> depends only on m - n, in both layouts."""
    q, k = randn(1, 16, seed=15, dtype=F64), randn(1, 16, seed=16, dtype=F64)
    for interleaved in (False, True):
        dots = []
        for m, n in [(7, 3), (107, 103), (1003, 999)]:
            rq = worker.call("rope.apply_rope", q, torch.tensor([m]), interleaved=interleaved)
            rk = worker.call("rope.apply_rope", k, torch.tensor([n]), interleaved=interleaved)
            check_tensor(rq, mistakes.rope_reference(q, torch.tensor([m]), interleaved=interleaved),
                         f"apply_rope(q, [{m}], interleaved={interleaved})",
                         tol=angle_tolerance(F64, m, 4.0))
            dots.append((rq * rk).sum().item())
        # float32 angles at position ~1000 move each rotated vector by ~angle_tolerance
        allowed = 2 * angle_tolerance(F64, 1003) * q.norm().item() * k.norm().item()
        assert max(dots) - min(dots) < allowed, (
            f"the score of a rotated q and k at offset 4 changes with the absolute position "
            f"(interleaved={interleaved}): {dots}")


@pytest.mark.points(1)
@pytest.mark.rules("rope.is-a-rotation")
def test_rope_preserves_norm(worker):
    """a rotation keeps each vector's length, at any position."""
    x = randn(3, 7, 32, seed=30, dtype=F64)
    positions = uneven_positions(7, seed=31, high=100_000)
    got = worker.call("rope.apply_rope", x, positions)
    assert isinstance(got, torch.Tensor) and got.shape == x.shape, "apply_rope must keep the shape"
    # |cos|^2 + |sin|^2 = 1 up to float32 rounding of cos and sin
    check_tensor(got.norm(dim=-1), x.norm(dim=-1), "norms of apply_rope(x) vs norms of x",
                 tol=8 * torch.finfo(F32).eps)


# ---------------------------------------------------------------------------------------
# RoPE inside MultiHeadAttention
# ---------------------------------------------------------------------------------------
ROPE_MHA = dict(d_model=24, n_heads=6, n_kv_heads=2, rope_theta=10000.0)


def _mha_reference(state, x, **kwargs):
    module = ref_attention.MultiHeadAttention(**ROPE_MHA).double()
    module.load_state_dict(state)
    with torch.no_grad():
        return module(x, **kwargs)


def _mha_tolerance(state, x, **kwargs):
    """float32 angles up to the largest position (default arange(n_q)) move a float64 attention
    by up to the largest angle times eps32 times the size of the rotated q and k (``angle_tolerance``)."""
    positions = kwargs.get("positions", torch.arange(x.shape[1]))
    module = ref_attention.MultiHeadAttention(**ROPE_MHA).double()
    module.load_state_dict(state)
    size = rope_input_size(module, lambda: module(x, **kwargs))
    return angle_tolerance(F64, largest_angle(positions), size, n_terms=x.shape[-1])


@pytest.mark.points(2)
@pytest.mark.rules("rope.half-split-default",
                   "rope.interleaved",
                   "rope.rotation-direction",
                   "mha.rope-rotates-q-and-k",
                   "mha.rope-positions-per-sequence")
@pytest.mark.parametrize("positions", ["default", "per-sequence"])
def test_attention_applies_rope(worker, positions):
    """MultiHeadAttention(rope_theta=...) rotates q and k (default positions arange(n_q))."""
    state = random_state_dict(ref_attention.MultiHeadAttention(**ROPE_MHA).double(), seed=17)
    x = randn(2, 6, 24, seed=18, dtype=F64)
    kwargs = {"is_causal": True}
    if positions == "per-sequence":
        kwargs["positions"] = uneven_positions(2, 6, seed=19)
    got = worker.adapters.module_forward(cls="attention.MultiHeadAttention", init_kwargs=ROPE_MHA,
                                         state_dict=state, args=[x], kwargs=kwargs, dtype=F64)
    check_tensor(got["out"], _mha_reference(state, x, **kwargs),
                 f"MultiHeadAttention({ROPE_MHA})(x, positions={positions})",
                 tol=_mha_tolerance(state, x, **kwargs))


@pytest.mark.points(2)
@pytest.mark.rules("mha.rope-rotates-q-and-k", "mha.rope-default-positions", "mha.rope-before-caching")
def test_attention_rope_with_cache(worker):
    """with a cache, keys are stored after RoPE and new tokens continue at the cache length."""
    state = random_state_dict(ref_attention.MultiHeadAttention(**ROPE_MHA).double(), seed=20)
    prompt = randn(2, 5, 24, seed=21, dtype=F64)
    steps = [randn(2, 1, 24, seed=22 + i, dtype=F64) for i in range(3)]
    got = worker.adapters.rope.attention_with_cache(cls="attention.MultiHeadAttention", init_kwargs=ROPE_MHA,
                                                    state_dict=state, prompt=prompt, steps=steps,
                                                    dtype=F64)
    full = torch.cat([prompt, *steps], dim=1)  # one causal pass over everything: the truth
    expected = _mha_reference(state, full, is_causal=True)
    # stored keys: the rotated k_proj of every token, for each of the n_kv_heads (not n_heads)
    module = ref_attention.MultiHeadAttention(**ROPE_MHA).double()
    module.load_state_dict(state)
    raw_keys = module.k_proj(full).detach().view(2, 8, 2, 4).transpose(1, 2)  # (b, kv, s, hd)
    keys = mistakes.rope_reference(raw_keys, torch.arange(8))
    # the keys are rotated raw_keys at positions 0-7; the outputs carry those angles through attention
    key_tol = angle_tolerance(F64, largest_angle(torch.arange(8)), raw_keys.abs().max().item())
    tol = _mha_tolerance(state, full, is_causal=True)
    check_tensor(got["keys"], keys, "keys held by the cache after prefill + 3 steps", tol=key_tol,
                 mistakes=lambda: [
                     ("keys are cached before RoPE is applied", raw_keys),
                     # a decode step at position 0 is not rotated at all
                     (mistakes.ROPE_POSITIONS_IGNORED + ": each cached step must continue at the "
                      "cache's length", torch.cat([keys[:, :, :5], raw_keys[:, :, 5:]], dim=2))])
    outputs = torch.cat(got["outputs"], dim=1)
    check_tensor(outputs, expected, "outputs of prefill + 3 cached steps vs. one full causal pass",
                 tol=tol)


@pytest.mark.points(1)
@pytest.mark.rules("mha.cross-attention-no-rope")
def test_attention_cross_attention_has_no_rope(worker):
    """cross-attention (context given) uses no RoPE, even in a module built with rope_theta."""
    state = random_state_dict(ref_attention.MultiHeadAttention(**ROPE_MHA).double(), seed=33)
    x, context = randn(2, 6, 24, seed=34, dtype=F64), randn(2, 6, 24, seed=35, dtype=F64)
    got = worker.adapters.module_forward(cls="attention.MultiHeadAttention", init_kwargs=ROPE_MHA,
                                         state_dict=state, args=[x], kwargs={"context": context},
                                         dtype=F64)
    check_tensor(got["out"], _mha_reference(state, x, context=context),
                 f"MultiHeadAttention({ROPE_MHA})(x, context=context)")
