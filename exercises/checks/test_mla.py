"""Public suite: exercises/mla.py (Multi-head Latent Attention, lecture 07).

Your MultiHeadLatentAttention is built with the grader's weights (N(0, 0.3), norm gains near 1)
and compared in float64 with the reference on public inputs (seeds from 1700 up; the staff's
suite uses others, and also checks gradients, float32, a cache the grader fills, and that
absorb=True fits a memory cap no expanded keys fit in). It uses your RMSNorm (layers.py) and
apply_rope (rope.py): finish those first.
"""
import pytest
import torch

from autograder.compare import angle_tolerance, check_tensor, largest_angle
from autograder.inputs import randn, random_state_dict

F64 = torch.float64
MLA = "mla.MultiHeadLatentAttention"
CONFIG = dict(d_model=24, n_heads=3, kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=6, v_head_dim=6)


def _module(s, seed):
    module = s.mla.MultiHeadLatentAttention(**CONFIG).double()
    state = random_state_dict(module, seed=seed, std=0.3, norm_gains_near_one=True)
    module.load_state_dict(state)
    return module.eval(), state


def _truth(s, seed, x, **kwargs):
    """The reference's output, its weights, and the largest |q| or |k| that RoPE rotates (the
    size the float32 angles' rounding scales with: the precision contract's tolerance)."""
    module, state = _module(s, seed)
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.abs().max().item()))
             for n, m in module.named_modules() if n in ("q_proj", "kv_a_proj_with_mqa")]
    with torch.no_grad():
        out = module(x, **kwargs)
    for hook in hooks:
        hook.remove()
    return out, state, max(sizes)


def _tol(size, max_position):
    return angle_tolerance(F64, largest_angle(max_position), size, n_terms=24, magnitude=8.0)


@pytest.mark.points(1)
@pytest.mark.mirrors("mla_cache_bytes_worked_examples")
def test_public_mla_cache_bytes(worker):
    """mla_cache_bytes: one latent and one shared rotated key per token and layer (no factor 2)."""
    cases = [((27, 512, 64, 1000), {}, 27 * 1000 * 576 * 2), ((3, 6, 2, 5), {"batch_size": 2, "bytes_per_elem": 8},
                                                              3 * 2 * 5 * 8 * 8)]
    for args, kwargs, expected in cases:
        got = worker.call("mla.mla_cache_bytes", *args, **kwargs)
        assert got == expected, f"mla_cache_bytes{args} {kwargs}: expected {expected:,}, got {got!r}"


@pytest.mark.points(2)
@pytest.mark.mirrors("mla_forward", "mla_absorb_equals_expanded")
@pytest.mark.parametrize("absorb", [False, True], ids=["expanded", "absorbed"])
def test_public_mla_forward(worker, reference, absorb):
    """the output (float64, positions (5,) with gaps) equals the reference, with and without absorb."""
    x = randn(2, 5, CONFIG["d_model"], seed=1701, dtype=F64)
    positions = torch.tensor([0, 2, 3, 6, 7])
    expected, state, size = reference(lambda s: _truth(s, 1702, x, positions=positions))
    got = worker.adapters.module_forward(MLA, CONFIG, state, [x], {"positions": positions, "absorb": absorb}, dtype=F64)
    check_tensor(got["out"], expected, f"MultiHeadLatentAttention(x (2, 5), absorb={absorb})", tol=_tol(size, 7))


CACHE = dict(n_layers=2, batch_size=1, max_seq_len=6, kv_lora_rank=3, qk_rope_head_dim=2, dtype=F64)


def entries(seed, s):
    return randn(1, s, 3, seed=seed, dtype=F64), randn(1, s, 2, seed=seed + 100, dtype=F64)


@pytest.mark.points(2)
@pytest.mark.mirrors("mla_cache_update_returns_everything_stored", "mla_cache_seq_len")
def test_public_mla_cache_update(worker):
    """update appends along the sequence axis (dim 1) and returns everything stored; seq_len counts steps."""
    (l1, r1), (l2, r2) = entries(1703, 2), entries(1704, 1)
    ops = [("update", 0, l1, r1), ("update", 1, l1, r1), ("update", 0, l2, r2), ("update", 1, l2, r2)]
    got = worker.adapters.mla.mla_cache_session(CACHE, ops)["results"]
    for entry in got:
        assert "raised" not in entry, f"{entry['op']} raised {entry['raised']}: {entry['message']}"
    check_tensor(got[2]["latent"], torch.cat([l1, l2], dim=1), "latent_all after updates of 2 and 1 positions")
    check_tensor(got[2]["k_rope"], torch.cat([r1, r2], dim=1), "k_rope_all after updates of 2 and 1 positions")
    lengths = [e["seq_len"] for e in got]
    assert lengths == [0, 2, 2, 3], f"MLACache.seq_len after each layer's update: expected [0, 2, 2, 3], got {lengths}"


@pytest.mark.points(2)
@pytest.mark.mirrors("mla_cached_decoding")
def test_public_mla_cached_decoding(worker, reference):
    """a prefill of 3 tokens and 2 one-token steps through your MLACache give one full forward's output."""
    full = randn(1, 5, CONFIG["d_model"], seed=1705, dtype=F64)
    expected, state, size = reference(lambda s: _truth(s, 1706, full))
    got = worker.adapters.mla.mla_cached_outputs(CONFIG, state, full[:, :3], [full[:, 3:4], full[:, 4:5]], dtype=F64)
    outputs = got["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 3, "expected the outputs of 3 calls (prefill + 2 steps)"
    check_tensor(torch.cat(outputs, dim=1), expected, "prefill of 3 + 2 cached steps", tol=_tol(size, 4))
