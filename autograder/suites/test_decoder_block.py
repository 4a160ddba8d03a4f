"""Hidden suite: exercises/decoder_block.py (lecture 04): GPT-2 style and Llama style blocks,
Pre-LN and Post-LN, with random weights everywhere (norm weights included)."""

import pytest
import torch

from autograder.mistakes import decoder_block as mistakes
from autograder.mistakes.rope import ROPE_POSITIONS_IGNORED
from autograder.compare import (angle_tolerance, check_parameters, check_tensor, largest_angle, rope_input_size,
                                tolerance)
from autograder.inputs import randn, random_state_dict
from solutions.decoder_block import BlockConfig, DecoderBlock

F64, F32 = torch.float64, torch.float32

CONFIGS = {
    "gpt2-preln": dict(d_model=24, n_heads=6),
    "postln": dict(d_model=24, n_heads=6, prenorm=False),
    "llama-gqa-rope": dict(d_model=24, n_heads=6, n_kv_heads=2, d_ff=40, norm="rmsnorm", norm_eps=1e-6,
                           ffn="swiglu", rope_theta=10000.0, bias=False),
    "llama-postln": dict(d_model=24, n_heads=6, n_kv_heads=3, d_ff=40, norm="rmsnorm", ffn="swiglu",
                         rope_theta=500000.0, bias=False, prenorm=False),
}


def reference(config, seed):
    block = DecoderBlock(BlockConfig(**config)).double()
    state = random_state_dict(block, seed=seed, std=0.3)
    block.load_state_dict(state)
    return block.eval(), state


def block_tolerance(config, block, x, dtype, positions=None, n_terms=40, magnitude=1.0):
    """The precision contract's tolerance for ``block(x, positions)``: with RoPE the float32
    angles (the API's only float32 part) move a float64 result by up to the largest angle
    times eps32 times the size of the rotated q and k (``angle_tolerance``); without RoPE
    the plain ``tolerance``. A correct implementation with another frequency formula
    (Hugging Face's ``1 / theta ** (2i/d)``) differs from the reference by exactly that."""
    if config.get("rope_theta") is None:
        return tolerance(dtype, n_terms, magnitude)
    positions = torch.arange(x.shape[1]) if positions is None else positions
    size = rope_input_size(block, lambda: block(x.double(), positions=positions))
    return angle_tolerance(dtype, largest_angle(positions), size, n_terms, magnitude)


def run(worker, config, state, x, **call):
    """The student's block built from BlockConfig(**config) inside the worker."""
    return worker.adapters.decoder_block.forward(config=config, state_dict=state, x=x, dtype=x.dtype, **call)


@pytest.mark.points(1)
@pytest.mark.rules("config.norm_eps")
@pytest.mark.parametrize("name", ["gpt2-preln", "llama-gqa-rope"])
def test_block_uses_norm_eps(worker, name):
    """the norms use BlockConfig.norm_eps (0.5 here; inputs of small variance, so eps matters)."""
    config = {**CONFIGS[name], "norm_eps": 0.5}
    block, state = reference(config, seed=21)
    x = randn(2, 5, 24, seed=22, dtype=F64, scale=0.3)
    got = run(worker, config, state, x)
    with torch.no_grad():
        expected = block(x)
        default = reference({**config, "norm_eps": BlockConfig.norm_eps}, seed=21)[0](x)
    check_tensor(got["out"], expected, f"DecoderBlock({name}, norm_eps=0.5)(x)",
                 tol=block_tolerance(config, block, x, F64),
                 mistakes=lambda: [("the norms ignore BlockConfig.norm_eps (built with their default eps): "
                                    "pass eps=config.norm_eps", default)])


@pytest.mark.points(1)
@pytest.mark.rules("config.d_ff-default", "config.norm", "config.ffn", "config.bias")
@pytest.mark.parametrize("name", CONFIGS)
def test_block_parameters(worker, name):
    """DecoderBlock has norm1, attn, norm2, ffn with the API's names and shapes (d_ff None -> 4 d)."""
    got = worker.adapters.decoder_block.parameters(config=CONFIGS[name])
    expected = {n: tuple(p.shape) for n, p in DecoderBlock(BlockConfig(**CONFIGS[name])).named_parameters()}
    check_parameters(got, expected, f"DecoderBlock({name})")


@pytest.mark.points(3)
@pytest.mark.rules("config.rope_theta",
                   "config.prenorm",
                   "block.preln-attention-residual",
                   "block.preln-ffn-residual",
                   "block.postln",
                   "block.causal")
@pytest.mark.parametrize("name", CONFIGS)
def test_block_forward(worker, name):
    """the block's output matches the reference (Pre-LN or Post-LN as configured)."""
    block, state = reference(CONFIGS[name], seed=1)
    x = randn(2, 7, 24, seed=2, dtype=F64)
    got = run(worker, CONFIGS[name], state, x)
    with torch.no_grad():
        expected = block(x)
    check_tensor(got["out"], expected, f"DecoderBlock({name})(x)", tol=block_tolerance(CONFIGS[name], block, x, F64),
                 mistakes=lambda: mistakes.block_mistakes(block, x))


@pytest.mark.points(1)
@pytest.mark.rules("block.dtype-kept")
def test_block_float32(worker):
    """the block runs in float32 and matches to float32 precision."""
    block, state = reference(CONFIGS["llama-gqa-rope"], seed=3)
    x = randn(2, 6, 24, seed=4, dtype=F32)
    got = run(worker, CONFIGS["llama-gqa-rope"], {k: v.float() for k, v in state.items()}, x)
    with torch.no_grad():
        expected = block(x.double())
    check_tensor(got["out"], expected, "DecoderBlock(llama)(x) in float32", dtype=F32,
                 tol=block_tolerance(CONFIGS["llama-gqa-rope"], block, x, F32, magnitude=4.0), mistakes=lambda: mistakes.block_mistakes(block, x))


@pytest.mark.points(2)
@pytest.mark.rules("block.causal")
@pytest.mark.parametrize("name", ["gpt2-preln", "llama-gqa-rope"])
def test_block_is_causal(worker, name):
    """changing a later token never changes an earlier output."""
    _, state = reference(CONFIGS[name], seed=5)
    x = randn(1, 6, 24, seed=6, dtype=F64)
    changed = x.clone()
    changed[:, 4:] += randn(1, 2, 24, seed=7, dtype=F64)
    a = run(worker, CONFIGS[name], state, x)["out"]
    b = run(worker, CONFIGS[name], state, changed)["out"]
    for out in (a, b):
        assert isinstance(out, torch.Tensor) and out.shape == x.shape, "expected (1, 6, 24) outputs"
    moved = (a[:, :4] - b[:, :4]).abs().max().item()
    assert moved < 1e-12, (f"changing tokens 4 and 5 moved the outputs at positions 0-3 by {moved:.3g}: "
                           f"{mistakes.NOT_CAUSAL}")


@pytest.mark.points(2)
@pytest.mark.rules("config.prenorm")
@pytest.mark.parametrize("name", ["gpt2-preln", "postln"])
def test_block_gradients(worker, name):
    """gradients w.r.t. the input and every weight match the reference."""
    block, state = reference(CONFIGS[name], seed=8)
    x = randn(2, 5, 24, seed=9, dtype=F64)
    grad_out = randn(2, 5, 24, seed=10, dtype=F64)
    got = run(worker, CONFIGS[name], state, x, grad_output=grad_out)
    x_ = x.clone().requires_grad_(True)
    block(x_).backward(grad_out)
    check_tensor(got["input_grads"][0], x_.grad, f"d DecoderBlock({name}) / dx", n_terms=96, magnitude=8.0)
    for n, p in block.named_parameters():
        check_tensor(got["param_grads"].get(n), p.grad, f"gradient of {n}", n_terms=96, magnitude=8.0)


@pytest.mark.points(1)
@pytest.mark.rules("block.positions")
def test_block_positions_reach_rope(worker):
    """positions passed to the block reach the attention's RoPE."""
    config = CONFIGS["llama-gqa-rope"]
    block, state = reference(config, seed=11)
    x = randn(2, 5, 24, seed=12, dtype=F64)
    positions = torch.tensor([3, 4, 9, 10, 20])
    got = run(worker, config, state, x, kwargs={"positions": positions})
    with torch.no_grad():
        expected = block(x, positions=positions)
        ignored = block(x)
    check_tensor(got["out"], expected, "DecoderBlock(llama)(x, positions=[3, 4, 9, 10, 20])",
                 tol=block_tolerance(config, block, x, F64, positions),
                 mistakes=lambda: [(ROPE_POSITIONS_IGNORED, ignored)])
