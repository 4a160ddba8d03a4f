"""Public suite: exercises/decoder_block.py (lecture 04): GPT-2 style and Llama style blocks,
Pre-LN and Post-LN, with random weights everywhere (norm weights included). The block uses
your attention.py and layers.py: finish those first."""
import pytest
import torch

from autograder.compare import angle_tolerance, check_tensor, largest_angle, rope_input_size, tolerance
from autograder.inputs import randn, random_state_dict

F64, F32 = torch.float64, torch.float32

CONFIGS = {
    "gpt2-preln": dict(d_model=16, n_heads=4),
    "postln": dict(d_model=16, n_heads=4, prenorm=False),
    "llama-gqa-rope": dict(d_model=16, n_heads=4, n_kv_heads=2, d_ff=24, norm="rmsnorm", norm_eps=1e-6,
                           ffn="swiglu", rope_theta=10000.0, bias=False),
}


def _block(s, config, state=None, seed=None):
    block = s.decoder_block.DecoderBlock(s.decoder_block.BlockConfig(**config)).double()
    state = random_state_dict(block, seed=seed, std=0.3) if state is None else state
    block.load_state_dict(state)
    return block.eval(), state


def _tolerance(config, block, x, dtype, positions=None, n_terms=24, magnitude=1.0):
    """The precision contract's tolerance: with RoPE the float32 angles move a float64 result by up
    to the largest angle times eps32 times the size of the rotated q and k; else the plain one."""
    if config.get("rope_theta") is None:
        return tolerance(dtype, n_terms, magnitude)
    positions = torch.arange(x.shape[1]) if positions is None else positions
    size = rope_input_size(block, lambda: block(x.double(), positions=positions))
    return angle_tolerance(dtype, largest_angle(positions), size, n_terms, magnitude)


def run(worker, config, state, x, **call):
    """Your block built from BlockConfig(**config) inside the worker."""
    return worker.adapters.decoder_block.forward(config, state, x, dtype=x.dtype, **call)


@pytest.mark.points(1)
@pytest.mark.mirrors("block_parameters")
@pytest.mark.parametrize("name", ["gpt2-preln", "llama-gqa-rope"])
def test_public_block_parameters(worker, reference, name):
    """DecoderBlock has norm1, attn, norm2, ffn with the API's names and shapes (d_ff None -> 4 d)."""
    config = CONFIGS[name]
    expected = reference(lambda s: {n: list(p.shape) for n, p in
                                    s.decoder_block.DecoderBlock(s.decoder_block.BlockConfig(**config)).named_parameters()})
    expected = {n: tuple(shape) for n, shape in expected.items()}
    got = worker.adapters.decoder_block.parameters(config)
    params = {n: tuple(info["shape"]) for n, info in got["parameters"].items()}
    assert params == expected, (f"DecoderBlock({name}) parameters differ: missing "
                                f"{sorted(set(expected) - set(params))}, unexpected {sorted(set(params) - set(expected))}, "
                                f"shapes {[(n, params[n], expected[n]) for n in params if n in expected and params[n] != expected[n]]}")


@pytest.mark.points(1)
@pytest.mark.mirrors("block_uses_norm_eps")
def test_public_block_uses_norm_eps(worker, reference):
    """the norms use BlockConfig.norm_eps (0.4 here; inputs of small variance, so eps matters)."""
    config = {**CONFIGS["gpt2-preln"], "norm_eps": 0.4}
    x = randn(1, 4, 16, seed=1301, dtype=F64, scale=0.3)

    def truth(s):
        block, state = _block(s, config, seed=1302)
        default = _block(s, {**config, "norm_eps": s.decoder_block.BlockConfig.norm_eps}, state=state)[0]
        with torch.no_grad():
            return [state, block(x), default(x), _tolerance(config, block, x, F64)]

    state, expected, default, tol = reference(truth)
    got = run(worker, config, state, x)
    check_tensor(got["out"], expected, "DecoderBlock(gpt2-preln, norm_eps=0.4)(x)", tol=tol,
                 mistakes=lambda: [("the norms ignore BlockConfig.norm_eps (built with their default eps): "
                                    "pass eps=config.norm_eps", default)])


@pytest.mark.points(3)
@pytest.mark.mirrors("block_forward")
@pytest.mark.parametrize("name", CONFIGS)
def test_public_block_forward(worker, reference, name):
    """the block's output matches the reference (Pre-LN or Post-LN as configured)."""
    x = randn(2, 5, 16, seed=1303, dtype=F64)

    def truth(s):
        block, state = _block(s, CONFIGS[name], seed=1304)
        with torch.no_grad():
            out = block(x)
        return [state, out, _tolerance(CONFIGS[name], block, x, F64), list(s.mistakes.block_mistakes(block, x))]

    state, expected, tol, known = reference(truth)
    got = run(worker, CONFIGS[name], state, x)
    check_tensor(got["out"], expected, f"DecoderBlock({name})(x)", tol=tol, mistakes=lambda: known)


@pytest.mark.points(1)
@pytest.mark.mirrors("block_float32")
def test_public_block_float32(worker, reference):
    """the block runs in float32 and matches to float32 precision."""
    config = CONFIGS["llama-gqa-rope"]
    x = randn(1, 4, 16, seed=1305, dtype=F32)

    def truth(s):
        block, state = _block(s, config, seed=1306)
        with torch.no_grad():
            out = block(x.double())
        return [state, out, _tolerance(config, block, x, F32, magnitude=4.0)]

    state, expected, tol = reference(truth)
    got = run(worker, config, {k: v.float() for k, v in state.items()}, x)
    check_tensor(got["out"], expected, "DecoderBlock(llama)(x) in float32", dtype=F32, tol=tol)


@pytest.mark.points(2)
@pytest.mark.mirrors("block_is_causal")
def test_public_block_is_causal(worker, reference):
    """changing a later token never changes an earlier output."""
    config = CONFIGS["llama-gqa-rope"]
    state, not_causal = reference(lambda s: [_block(s, config, seed=1307)[1], s.mistakes.NOT_CAUSAL])
    x = randn(1, 5, 16, seed=1308, dtype=F64)
    changed = x.clone()
    changed[:, 3:] += randn(1, 2, 16, seed=1309, dtype=F64)
    a = run(worker, config, state, x)["out"]
    b = run(worker, config, state, changed)["out"]
    for out in (a, b):
        assert isinstance(out, torch.Tensor) and out.shape == x.shape, "expected (1, 5, 16) outputs"
    moved = (a[:, :3] - b[:, :3]).abs().max().item()
    assert moved < 1e-12, f"changing tokens 3 and 4 moved the outputs at positions 0-2 by {moved:.3g}: {not_causal}"


@pytest.mark.points(2)
@pytest.mark.mirrors("block_gradients")
@pytest.mark.parametrize("name", ["postln"])
def test_public_block_gradients(worker, reference, name):
    """gradients w.r.t. the input and every weight match the reference."""
    x = randn(1, 4, 16, seed=1310, dtype=F64)
    grad_out = randn(1, 4, 16, seed=1311, dtype=F64)

    def truth(s):
        block, state = _block(s, CONFIGS[name], seed=1312)
        x_ = x.clone().requires_grad_(True)
        block(x_).backward(grad_out)
        return [state, x_.grad, {n: p.grad for n, p in block.named_parameters()}]

    state, dx, param_grads = reference(truth)
    got = run(worker, CONFIGS[name], state, x, grad_output=grad_out)
    check_tensor(got["input_grads"][0], dx, f"d DecoderBlock({name}) / dx", n_terms=64, magnitude=8.0)
    for n, grad in param_grads.items():
        check_tensor(got["param_grads"].get(n), grad, f"gradient of {n}", n_terms=64, magnitude=8.0)


@pytest.mark.points(1)
@pytest.mark.mirrors("block_positions_reach_rope")
def test_public_block_positions_reach_rope(worker, reference):
    """positions passed to the block reach the attention's RoPE."""
    config = CONFIGS["llama-gqa-rope"]
    x = randn(1, 4, 16, seed=1313, dtype=F64)
    positions = torch.tensor([2, 5, 6, 13])

    def truth(s):
        block, state = _block(s, config, seed=1314)
        with torch.no_grad():
            return [state, block(x, positions=positions), block(x), _tolerance(config, block, x, F64, positions),
                    s.mistakes.ROPE_POSITIONS_IGNORED]

    state, expected, ignored, tol, sentence = reference(truth)
    got = run(worker, config, state, x, kwargs={"positions": positions})
    check_tensor(got["out"], expected, "DecoderBlock(llama)(x, positions=[2, 5, 6, 13])", tol=tol,
                 mistakes=lambda: [(sentence, ignored)])
