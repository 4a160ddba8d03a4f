"""The tolerances in autograder.compare hold for correct implementations written in other
ways and at other precisions, and are far below what known mistakes produce.

Measured on this machine (largest error / allowed error over the draws below):
correct implementations reach 0.30 (float32), 0.15 (bfloat16), 0.11 (float16): 3-9x inside.
Known mistakes sit 60,000x (float32) and 13x (float16) outside. In bfloat16 a missing
1/sqrt(d_k) can be as little as 1.6x outside: bfloat16 tests check dtype and coarse values,
while the float32/float64 tests are the ones that tell the mistakes apart.
"""
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from autograder import mistakes
from autograder.compare import angle_tolerance, tolerance
from autograder.inputs import randn
from solutions import attention as ref
from solutions import rope as ref_rope
from tests.conftest import FIXTURES


def _load(name, module="attention"):
    spec = importlib.util.spec_from_file_location(f"variant_{name}_{module}", FIXTURES / "variants" / name / f"{module}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EINSUM, LOOPS = _load("einsum"), _load("loops")
COMPLEX = _load("complex", "rope")
CORRECT = {
    "reference": ref.scaled_dot_product_attention,
    "einsum-native-precision": EINSUM.scaled_dot_product_attention,
    "loops-upcast-to-float32": LOOPS.scaled_dot_product_attention,
    "torch-sdpa": lambda q, k, v, is_causal=False: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal),
}
SHAPES = [(8, 5), (16, 6), (64, 32)]  # (d_k, n), the range the hidden suite uses and beyond


def ratio(actual, expected, tol):
    """Largest |actual - expected| / (tol + tol * |expected|): above 1 fails a test."""
    a, e = actual.double(), expected.double()
    return ((a - e).abs() / (tol * (1 + e.abs()))).max().item()


def draws(dtype, n_seeds):
    for seed in range(n_seeds):
        for d, n in SHAPES:
            q, k, v = (randn(2, n, d, seed=1000 + 3 * seed + i, dtype=dtype, scale=1.5) for i in range(3))
            expected = ref.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
            magnitude = (q.double() @ k.double().transpose(-2, -1)).abs().max().item() / math.sqrt(d)
            yield q, k, v, expected, tolerance(dtype, max(d, n), magnitude)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_correct_implementations_stay_well_inside_the_tolerance(dtype):
    worst = {name: 0.0 for name in CORRECT}
    for q, k, v, expected, tol in draws(dtype, n_seeds=40):
        for name, sdpa in CORRECT.items():
            worst[name] = max(worst[name], ratio(sdpa(q, k, v, is_causal=True), expected, tol))
    assert max(worst.values()) < 0.5, worst  # a 2x margin over the worst of 120 draws


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_known_mistakes_are_far_outside_the_tolerance(dtype):
    best = {}
    for q, k, v, expected, tol in draws(dtype, n_seeds=10):
        for text, wrong in mistakes.sdpa_mistakes(q, k, v, is_causal=True):
            if text in (mistakes.NAN_ROWS, mistakes.SOFTMAX_NO_MAX):
                continue  # equal to the right answer on rows with an allowed key and small scores
            best[text] = min(best.get(text, math.inf), ratio(wrong, expected, tol))
    assert min(best.values()) > (1.2 if dtype == torch.bfloat16 else 5), best


# ---------------------------------------------------------------------------------------
# RoPE: angles in float32, the tolerance grows with the position (angle_tolerance)
# ---------------------------------------------------------------------------------------
def _hugging_face_rope(x, positions):
    """Hugging Face Llama's rotate_half RoPE, with cos/sin cast to x's dtype as it does."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    d = x.shape[-1]
    rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=2 * d, num_attention_heads=2, head_dim=d))
    cos, sin = rotary(x, positions[None])
    return apply_rotary_pos_emb(x, x, cos.to(x.dtype), sin.to(x.dtype))[0]


ROPE_IMPLEMENTATIONS = {
    "reference": lambda x, p: ref_rope.apply_rope(x, p),
    "complex-numbers": lambda x, p: COMPLEX.apply_rope(x, p),
    "hugging-face-native-dtype": _hugging_face_rope,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_rope_implementations_stay_inside_the_angle_tolerance(dtype):
    worst = {name: 0.0 for name in ROPE_IMPLEMENTATIONS}
    for seed in range(20):
        for d, high in [(8, 50), (64, 100_000), (128, 5000)]:
            x = randn(2, 2, 5, d, seed=seed, dtype=dtype)
            positions = torch.randint(0, high, (5,), generator=torch.Generator().manual_seed(seed)).sort().values
            expected = mistakes.rope_reference(x, positions)
            tol = angle_tolerance(dtype, positions.max().item(), x.abs().max().item())
            for name, apply in ROPE_IMPLEMENTATIONS.items():
                worst[name] = max(worst[name], ratio(apply(x, positions), expected, tol))
    # measured: at most 0.19 (Hugging Face in bfloat16), 0.04 in float32
    assert max(worst.values()) < 0.5, worst


def test_rope_mistakes_are_far_outside_the_angle_tolerance():
    x = randn(2, 2, 5, 64, seed=0, dtype=torch.float32)
    positions = torch.tensor([3, 10, 11, 40, 41])
    expected = mistakes.rope_reference(x, positions)
    tol = angle_tolerance(torch.float32, 41, x.abs().max().item())
    for text, wrong in mistakes.rope_mistakes(x, positions):
        assert ratio(wrong, expected, tol) > 100, text


# ---------------------------------------------------------------------------------------
# The precision contract inside models: float64 blocks, GPTs and Seq2Seq models carry only
# their float32 angle tables. The worst table the contract allows (every angle off by
# 3 eps32 relative, cos/sin rounded to float32) and two real frequency formulas stay inside
# angle_tolerance (largest angle, size of the rotated q and k); the suites' mistakes do not.
# ---------------------------------------------------------------------------------------
import solutions.rope as rope_module  # noqa: E402
from autograder.compare import largest_angle, rope_input_size  # noqa: E402
from autograder.inputs import random_state_dict  # noqa: E402
from solutions import layers as ref_layers  # noqa: E402
from solutions import seq2seq as ref_seq2seq  # noqa: E402
from solutions.decoder_block import BlockConfig, DecoderBlock  # noqa: E402
from solutions.gpt import GPT, GPTConfig  # noqa: E402

EPS32 = torch.finfo(torch.float32).eps


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _contract_worst_rope(x, positions, theta=10000.0, interleaved=False):
    """float32 angles each moved by 3 eps32 relative (random sign), cos/sin rounded to float32."""
    d = x.shape[-1]
    angles = positions.float()[..., None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    sign = torch.randint(0, 2, angles.shape, generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    angles = angles.double() * (1 + 3 * EPS32 * sign)
    return _rotate(x, angles.cos().float().to(x.dtype), angles.sin().float().to(x.dtype))


def _hugging_face_formula_rope(x, positions, theta=10000.0, interleaved=False):
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    angles = positions.float()[..., None] * inv_freq
    return _rotate(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype))


def _meta_complex_rope(x, positions, theta=10000.0, interleaved=False):
    half = x.shape[-1] // 2
    freqs = 1.0 / (theta ** (torch.arange(0, 2 * half, 2)[:half].float() / (2 * half)))
    freqs_cis = torch.polar(torch.ones_like(positions.float()[..., None] * freqs), positions.float()[..., None] * freqs)
    out = torch.complex(x[..., :half], x[..., half:]) * freqs_cis.to(torch.complex128)
    return torch.cat([out.real, out.imag], dim=-1)


OTHER_ROPES = {"contract-worst": _contract_worst_rope, "hugging-face-formula": _hugging_face_formula_rope,
               "meta-complex": _meta_complex_rope}
LLAMA_BLOCKS = {  # the decoder_block suite's RoPE configurations
    "llama-gqa-rope": dict(d_model=24, n_heads=6, n_kv_heads=2, d_ff=40, norm="rmsnorm", norm_eps=1e-6,
                           ffn="swiglu", rope_theta=10000.0, bias=False),
    "llama-postln": dict(d_model=24, n_heads=6, n_kv_heads=3, d_ff=40, norm="rmsnorm", ffn="swiglu",
                         rope_theta=500000.0, bias=False, prenorm=False),
}


def _with_rope(monkeypatch, rope, run):
    with monkeypatch.context() as patch:
        patch.setattr(rope_module, "apply_rope", rope)
        return run()


def _rope_models():
    """(name, model, run, positions): the float64 RoPE computations the suites check."""
    for name, config in LLAMA_BLOCKS.items():
        block = DecoderBlock(BlockConfig(**config)).double().eval()
        block.load_state_dict(random_state_dict(block, seed=1, std=0.3))
        x = randn(2, 7, 24, seed=2, dtype=torch.float64)
        for positions in (torch.arange(7), torch.tensor([3, 4, 9, 10, 20, 200, 2000])):
            yield f"block-{name}-{positions.max().item()}", block, lambda b=block, x=x, p=positions: b(x, positions=p), positions
    model = GPT(GPTConfig(vocab_size=53, max_seq_len=16, n_layers=2, learned_positions=False, tie_weights=False,
                          block=BlockConfig(**LLAMA_BLOCKS["llama-gqa-rope"]))).double().eval()
    model.load_state_dict(random_state_dict(model, seed=1, std=0.3))
    idx = torch.randint(0, 53, (2, 9), generator=torch.Generator().manual_seed(2))
    yield "gpt-llama", model, lambda: model(idx), torch.arange(9)


def test_rope_models_stay_inside_the_angle_tolerance(monkeypatch):
    worst = {}
    for name, model, run, positions in _rope_models():
        with torch.no_grad():
            expected = run()
        tol = angle_tolerance(torch.float64, largest_angle(positions), rope_input_size(model, run), n_terms=40)
        for rope_name, rope in OTHER_ROPES.items():
            with torch.no_grad():
                got = _with_rope(monkeypatch, rope, run)
            worst[(name, rope_name)] = ratio(got, expected, tol)
    # measured: at most 0.065 (the contract's worst table, llama-postln); Meta's complex RoPE
    # 0.0016, Hugging Face's formula 6e-5; against the old float64 tolerance: 2.7e4 to 1.6e10
    assert max(worst.values()) < 0.5, worst
    # and the old float64 tolerance was below what the contract allows (the false fails)
    assert max(v for (n, r), v in worst.items() if r == "contract-worst") > 0.01


def test_block_and_gpt_mistakes_are_far_outside_the_angle_tolerance():
    for name, model, run, positions in _rope_models():
        if not name.startswith("block") or positions.max() > 6:
            continue
        x = randn(2, 7, 24, seed=2, dtype=torch.float64)
        with torch.no_grad():
            expected = model(x)
        tol = angle_tolerance(torch.float64, 6, rope_input_size(model, lambda: model(x)), n_terms=40)
        for text, wrong in mistakes.block_mistakes(model, x):
            assert ratio(wrong, expected, tol) > 100, (name, text)  # measured: >= 3.8e4


def _seq2seq(prenorm):
    module = ref_seq2seq.Seq2SeqTransformer(src_vocab=23, tgt_vocab=19, d_model=24, n_heads=4, n_layers=2, d_ff=40,
                                            max_len=32, prenorm=prenorm).double().eval()
    state = random_state_dict(module, seed=6, std=0.3, norm_gains_near_one=True)
    module.load_state_dict(state)
    g = torch.Generator().manual_seed(7)
    src, tgt = torch.randint(1, 23, (3, 8), generator=g), torch.randint(1, 19, (3, 6), generator=g)
    return module, src, tgt


def _tables(max_len=32, d=24):
    """Correct float32 sinusoidal tables: computed in float64 and rounded (the Annotated
    Transformer), and the contract's worst (angles off by 3 eps32, cos/sin in float32)."""
    position = torch.arange(max_len, dtype=torch.float64)[:, None]
    angles = position * torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * -(math.log(10000.0) / d))
    sign = torch.randint(0, 2, angles.shape, generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    worst = angles.float().double() * (1 + 3 * EPS32 * sign)
    for name, a in (("float64-rounded", angles), ("contract-worst", worst)):
        pe = torch.zeros(max_len, d, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = a.sin(), a.cos()
        yield name, pe.float()


@pytest.mark.parametrize("prenorm", [False, True])
def test_seq2seq_tables_stay_inside_the_angle_tolerance(prenorm):
    module, src, tgt = _seq2seq(prenorm)
    with torch.no_grad():
        expected = module(src, tgt)
    tol = angle_tolerance(torch.float64, largest_angle(max(src.shape[1], tgt.shape[1]) - 1), 1.0, n_terms=40,
                          magnitude=8.0)
    reference_table = module.positions.clone()
    worst = {}
    for name, table in _tables():
        module.positions.copy_(table)
        with torch.no_grad():
            worst[name] = ratio(module(src, tgt), expected, tol)
    module.positions.copy_(reference_table)
    # measured: 0.015 / 0.036 (float64-rounded, Post-LN / Pre-LN), 0.08 / 0.18 (contract-worst)
    assert max(worst.values()) < 0.5, worst
    # the suite's named mistake (no sqrt(d_model) scale) sits far outside
    original = module.embed
    module.embed = lambda tokens, table: table(tokens) + module.positions[: tokens.shape[1]].double()
    with torch.no_grad():
        unscaled = module(src, tgt)
    module.embed = original
    assert ratio(unscaled, expected, tol) > 1000  # measured: >= 2.2e5


def test_layernorm_weight_gradient_tolerance_allows_the_cancellation():
    """The weight gradient sums grad * (x - mean) / sqrt(var + eps): rows of small variance
    amplify rounding by |mean| / sqrt(var + eps), as in the output (test_layers.cancellation)."""
    x = randn(3, 8, seed=10) + 3.0
    x[0] = 0.5 + 1e-3 * x[0]
    x[-1] = -2.0 + 1e-4 * x[-1]
    grad = randn(3, 8, seed=11)
    module = ref_layers.LayerNorm(8).double()
    module.load_state_dict(random_state_dict(module, seed=9, std=0.5))
    amplification = (x.mean(-1).abs() / (x.var(-1, unbiased=False) + 1e-5).sqrt()).max().item()
    tol = tolerance(torch.float64, 8, amplification)

    def weight_grad(norm):
        w = module.weight.detach().clone().requires_grad_(True)
        norm(x, w).backward(grad)
        return w.grad

    expected = weight_grad(lambda x, w: module.__class__.forward(_with_weight(module, w), x))
    correct = {
        "F.layer_norm": weight_grad(lambda x, w: F.layer_norm(x, (8,), w, module.bias.detach(), 1e-5)),
        "var(unbiased=False)": weight_grad(lambda x, w: (x - x.mean(-1, keepdim=True)) / torch.sqrt(
            x.var(-1, keepdim=True, unbiased=False) + 1e-5) * w + module.bias.detach()),
    }
    worst = {name: ratio(g, expected, tol) for name, g in correct.items()}
    assert max(worst.values()) < 0.5, worst  # measured: 0.2
    # without the amplification these correct gradients fail (the false fail this fixes)
    assert max(ratio(g, expected, tolerance(torch.float64, 8)) for g in correct.values()) > 1
    # a variance mistake stays far outside
    unbiased = weight_grad(lambda x, w: (x - x.mean(-1, keepdim=True)) / torch.sqrt(
        x.var(-1, keepdim=True, unbiased=True) + 1e-5) * w + module.bias.detach())
    assert ratio(unbiased, expected, tol) > 100


def _with_weight(module, weight):
    clone = ref_layers.LayerNorm(8).double()
    clone.bias = torch.nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    del clone.weight
    clone.weight = weight
    return clone
