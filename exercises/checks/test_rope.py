"""Public suite: exercises/rope.py and RoPE inside MultiHeadAttention (lecture 03).

RoPE's truth is computed in float64; your angles are float32 as the API asks, so the
tolerance grows with the largest angle (``angle_tolerance``). head_dim is at least 4
everywhere: with head_dim 2 the half-split and interleaved layouts coincide.
"""
import pytest
import torch

from autograder.compare import angle_tolerance, check_tensor, largest_angle, rope_input_size
from autograder.inputs import randn, random_state_dict

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16


def uneven_positions(*shape, seed, high=40):
    """Sorted, gappy positions: arange would hide off-by-one and ignored-position mistakes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g).sort(dim=-1).values


def _check_rope(worker, reference, x, positions, what, theta=10000.0, interleaved=False):
    expected = reference(lambda s: s.mistakes.rope_reference(x, positions, theta, interleaved))
    known = reference.mistakes(lambda s: s.mistakes.rope_mistakes(x, positions, theta, interleaved))
    got = worker.call("rope.apply_rope", x, positions, theta=theta, interleaved=interleaved)
    tol = angle_tolerance(x.dtype, positions.max().item(), x.abs().max().item())
    check_tensor(got, expected, what, dtype=x.dtype, tol=tol, mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("rope_cos_sin_values")
@pytest.mark.parametrize("head_dim", [6, 16])
def test_public_rope_cos_sin(worker, reference, head_dim):
    """rope_cos_sin gives float32 cos/sin of p * theta^(-2i/d) in the half-split layout."""
    positions = uneven_positions(6, seed=1101)
    tables = reference(lambda s: list(s.mistakes.rope_cos_sin_reference(head_dim, positions)))
    known = [reference.mistakes(lambda s, w=w: s.mistakes.rope_cos_sin_mistakes(head_dim, positions, which=w))
             for w in (0, 1)]
    got = worker.call("rope.rope_cos_sin", head_dim, positions)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "rope_cos_sin must return (cos, sin)"
    tol = angle_tolerance(F32, positions.max().item())
    for which, name in enumerate(("cos", "sin")):
        check_tensor(got[which], tables[which], f"rope_cos_sin({head_dim}, positions)[{which}] ({name})",
                     dtype=F32, tol=tol, mistakes=known[which])


@pytest.mark.points(1)
@pytest.mark.mirrors("rope_cos_sin_batched_positions_and_theta")
def test_public_rope_cos_sin_batched_and_theta(worker, reference):
    """positions of shape (b, s) give (b, s, d); theta is honoured."""
    positions = uneven_positions(2, 4, seed=1102, high=200)
    tables = reference(lambda s: list(s.mistakes.rope_cos_sin_reference(8, positions, 50000.0)))
    known = [reference.mistakes(lambda s, w=w: s.mistakes.rope_cos_sin_mistakes(8, positions, 50000.0, which=w))
             for w in (0, 1)]
    got = worker.call("rope.rope_cos_sin", 8, positions, theta=50000.0)
    assert isinstance(got, (tuple, list)) and len(got) == 2, "rope_cos_sin must return (cos, sin)"
    tol = angle_tolerance(F32, positions.max().item())
    for which in (0, 1):
        check_tensor(got[which], tables[which], f"rope_cos_sin(8, positions (2, 4), theta=5e4)[{which}]",
                     dtype=F32, tol=tol, mistakes=known[which])


ROPE_CASES = {"heads-d8-f64": ((1, 2, 5, 8), F64), "no-batch-d4-f32": ((6, 4), F32)}


@pytest.mark.points(2)
@pytest.mark.mirrors("apply_rope_half_split")
@pytest.mark.parametrize("case", ROPE_CASES)
def test_public_apply_rope_half_split(worker, reference, case):
    """apply_rope (default layout) pairs dim i with i + d/2 and rotates by p * theta^(-2i/d)."""
    shape, dtype = ROPE_CASES[case]
    x = randn(*shape, seed=1103, dtype=dtype)
    positions = uneven_positions(shape[-2], seed=1104)
    _check_rope(worker, reference, x, positions, f"apply_rope(x {shape}, positions)")


@pytest.mark.points(2)
@pytest.mark.mirrors("apply_rope_interleaved")
def test_public_apply_rope_interleaved(worker, reference):
    """interleaved=True pairs dims (2i, 2i+1), as in RoFormer and Meta's Llama."""
    x = randn(1, 2, 5, 8, seed=1105, dtype=F64)
    positions = uneven_positions(5, seed=1106)
    _check_rope(worker, reference, x, positions, "apply_rope(x (1, 2, 5, 8), positions, interleaved=True)",
                interleaved=True)


@pytest.mark.points(1)
@pytest.mark.mirrors("apply_rope_per_sequence_positions")
def test_public_apply_rope_per_sequence_positions(worker, reference):
    """positions of shape (b, 1, s) give each sequence its own positions, for every head."""
    x = randn(2, 2, 4, 8, seed=1107, dtype=F64)
    positions = uneven_positions(2, 1, 4, seed=1108)
    _check_rope(worker, reference, x, positions, "apply_rope(x (2, 2, 4, 8), positions (2, 1, 4))")


@pytest.mark.points(1)
@pytest.mark.mirrors("apply_rope_large_positions", "apply_rope_theta")
def test_public_apply_rope_large_positions_and_theta(worker, reference):
    """positions around 10^5 stay accurate with float32 angles; a non-default theta is honoured."""
    x = randn(1, 3, 16, seed=1109, dtype=F32)
    positions = torch.tensor([70_001, 90_000, 120_000])
    _check_rope(worker, reference, x, positions, "apply_rope(x, positions ~1e5, theta=20000)", theta=20000.0)


@pytest.mark.points(1)
@pytest.mark.mirrors("apply_rope_half_precision", "apply_rope_half_precision_large_positions")
def test_public_apply_rope_bfloat16(worker, reference):
    """bfloat16 x comes back in bfloat16, its angles still computed in float32 (positions in the thousands)."""
    x = randn(1, 2, 4, 8, seed=1110, dtype=BF16)
    positions = torch.tensor([1500, 2999, 3500, 4500])
    expected = reference(lambda s: s.mistakes.rope_reference(x, positions))
    got = worker.call("rope.apply_rope", x, positions)
    # angles in bfloat16 (8 mantissa bits) round position 4500 by ~16: radians off, far beyond tol
    check_tensor(got, expected, "apply_rope(x in bfloat16, positions 1500-4500): are the angles in float32?",
                 dtype=BF16, tol=angle_tolerance(BF16, positions.max().item(), x.abs().max().item()))


@pytest.mark.points(1)
@pytest.mark.mirrors("apply_rope_odd_head_dim_raises")
def test_public_apply_rope_odd_head_dim(worker):
    """an odd head_dim raises ValueError (there is no pair for the last dim)."""
    raised = worker.adapters.raised("rope.apply_rope", [randn(3, 5, seed=1111, dtype=F32), torch.arange(3)])
    assert raised != "NotImplementedError", "not implemented: apply_rope raised NotImplementedError"
    assert raised == "ValueError", (f"apply_rope(x with head_dim 5, ...) should raise ValueError; "
                                    f"{'it raised ' + raised if raised else 'it returned a value'}")


@pytest.mark.points(1)
@pytest.mark.mirrors("rope_relative_property", "rope_preserves_norm")
def test_public_rope_relative_and_norm(worker):
    """<rope(q, m), rope(k, n)> depends only on m - n (both layouts), and lengths are kept."""
    q, k = randn(1, 8, seed=1112, dtype=F64), randn(1, 8, seed=1113, dtype=F64)
    for interleaved in (False, True):
        dots = []
        for m, n in [(9, 2), (509, 502)]:
            rq = worker.call("rope.apply_rope", q, torch.tensor([m]), interleaved=interleaved)
            rk = worker.call("rope.apply_rope", k, torch.tensor([n]), interleaved=interleaved)
            for name, value, original in (("q", rq, q), ("k", rk, k)):
                assert isinstance(value, torch.Tensor) and value.shape == original.shape, (
                    f"apply_rope({name}) must keep the shape {tuple(original.shape)}")
                # |cos|^2 + |sin|^2 = 1 up to float32 rounding of cos and sin
                check_tensor(value.norm(dim=-1), original.norm(dim=-1), f"norm of apply_rope({name})",
                             tol=8 * torch.finfo(F32).eps)
            dots.append((rq * rk).sum().item())
        allowed = 2 * angle_tolerance(F64, 509) * q.norm().item() * k.norm().item()
        assert max(dots) - min(dots) < allowed, (
            f"the score of a rotated q and k at offset 7 changes with the absolute position "
            f"(interleaved={interleaved}): {dots}")


# ---------------------------------------------------------------------------------------
# RoPE inside MultiHeadAttention
# ---------------------------------------------------------------------------------------
ROPE_MHA = dict(d_model=16, n_heads=4, n_kv_heads=2, rope_theta=10000.0)


def _mha(s, state):
    module = s.attention.MultiHeadAttention(**ROPE_MHA).double()
    module.load_state_dict(state)
    return module


def _mha_reference(reference, state, x, **kwargs):
    """The reference's output and the tolerance its float32 angles allow (``angle_tolerance``)."""
    def run(s):
        module = _mha(s, state)
        with torch.no_grad():
            out = module(x, **kwargs)
        size = rope_input_size(module, lambda: module(x, **kwargs))
        return [out, size]

    out, size = reference(run)
    positions = kwargs.get("positions", torch.arange(x.shape[1]))
    return out, angle_tolerance(F64, largest_angle(positions), size, n_terms=x.shape[-1])


def _weights(reference, seed):
    return reference(lambda s: random_state_dict(s.attention.MultiHeadAttention(**ROPE_MHA).double(), seed=seed))


@pytest.mark.points(2)
@pytest.mark.mirrors("attention_applies_rope")
@pytest.mark.parametrize("positions", ["default", "per-sequence"])
def test_public_attention_applies_rope(worker, reference, positions):
    """MultiHeadAttention(rope_theta=...) rotates q and k (default positions arange(n_q))."""
    state = _weights(reference, 1114)
    x = randn(2, 5, 16, seed=1115, dtype=F64)
    kwargs = {"is_causal": True}
    if positions == "per-sequence":
        kwargs["positions"] = uneven_positions(2, 5, seed=1116)
    expected, tol = _mha_reference(reference, state, x, **kwargs)
    got = worker.adapters.module_forward("attention.MultiHeadAttention", ROPE_MHA, state, [x], kwargs, dtype=F64)
    check_tensor(got["out"], expected, f"MultiHeadAttention({ROPE_MHA})(x, positions={positions})", tol=tol)


@pytest.mark.points(2)
@pytest.mark.mirrors("attention_rope_with_cache")
def test_public_attention_rope_with_cache(worker, reference):
    """with a cache, keys are stored after RoPE and new tokens continue at the cache length."""
    state = _weights(reference, 1117)
    prompt = randn(1, 4, 16, seed=1118, dtype=F64)
    steps = [randn(1, 1, 16, seed=1119 + i, dtype=F64) for i in range(2)]
    full = torch.cat([prompt, *steps], dim=1)  # one causal pass over everything: the truth
    expected, tol = _mha_reference(reference, state, full, is_causal=True)

    def stored_keys(s):
        raw = _mha(s, state).k_proj(full).detach().view(1, 6, 2, 4).transpose(1, 2)  # (b, kv, s, hd)
        return [raw, s.mistakes.rope_reference(raw, torch.arange(6)), s.mistakes.ROPE_POSITIONS_IGNORED]

    raw_keys, keys, ignored = reference(stored_keys)
    got = worker.adapters.rope.attention_with_cache("attention.MultiHeadAttention", ROPE_MHA, state, prompt, steps,
                      dtype=F64)
    key_tol = angle_tolerance(F64, largest_angle(torch.arange(6)), raw_keys.abs().max().item())
    check_tensor(got["keys"], keys, "keys held by the cache after prefill + 2 steps", tol=key_tol,
                 mistakes=lambda: [("keys are cached before RoPE is applied", raw_keys),
                                   (ignored + ": each cached step must continue at the cache's length",
                                    torch.cat([keys[:, :, :4], raw_keys[:, :, 4:]], dim=2))])
    check_tensor(torch.cat(got["outputs"], dim=1), expected,
                 "outputs of prefill + 2 cached steps vs. one full causal pass", tol=tol)


@pytest.mark.points(1)
@pytest.mark.mirrors("attention_cross_attention_has_no_rope")
def test_public_attention_cross_attention_has_no_rope(worker, reference):
    """cross-attention (context given) uses no RoPE, even in a module built with rope_theta."""
    state = _weights(reference, 1121)
    x, context = randn(1, 4, 16, seed=1122, dtype=F64), randn(1, 4, 16, seed=1123, dtype=F64)
    expected, _ = _mha_reference(reference, state, x, context=context)
    got = worker.adapters.module_forward("attention.MultiHeadAttention", ROPE_MHA, state, [x], {"context": context},
                      dtype=F64)
    check_tensor(got["out"], expected, f"MultiHeadAttention({ROPE_MHA})(x, context=context)")
