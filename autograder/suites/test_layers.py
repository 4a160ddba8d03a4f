"""Hidden suite: exercises/layers.py (lecture 04): LayerNorm, RMSNorm, GELU, SiLU,
FeedForward, SwiGLU. Norm weights and biases are random, never the default ones and zeros,
and some rows have a tiny variance, so eps and variance mistakes show."""
import pytest
import torch

from autograder import static
from autograder.mistakes import layers as mistakes
from autograder.compare import check_parameters, check_tensor
from autograder.inputs import randn, random_state_dict
from solutions import layers as ref

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


def norm_input(*shape, seed, dtype=F64):
    """Rows with a mean far from 0, and two rows with a variance far below eps."""
    x = randn(*shape, seed=seed, dtype=F64) + 3.0
    flat = x.view(-1, shape[-1])
    flat[0] = 0.5 + 1e-3 * flat[0]  # variance ~1e-6, near eps
    flat[-1] = -2.0 + 1e-4 * flat[-1]
    return x.to(dtype)


def cancellation(x, eps):
    """How much LayerNorm's x - mean amplifies rounding: |mean| / sqrt(var + eps) per row.
    A row at -2 with spread 1e-4 loses three digits to the subtraction (see tolerance)."""
    x = x.double()
    return (x.mean(-1).abs() / (x.var(-1, unbiased=False) + eps).sqrt()).max().item()


def _module_check(worker, cls, init, x, what, seed, mistake_fn=None, n_terms=None, magnitude=1.0, **call):
    module = getattr(ref, cls)(**init).to(x.dtype if x.dtype == F64 else F32)
    state = random_state_dict(module, seed=seed, std=0.5)
    module = module.double()
    module.load_state_dict(state)
    got = worker.adapters.module_forward(cls=f"layers.{cls}", init_kwargs=init, state_dict=state, args=[x],
                                         dtype=x.dtype if x.dtype in (F64, F32) else None, **call)
    with torch.no_grad():
        expected = module(x.double())
    check_tensor(got["out"], expected, what, dtype=x.dtype, n_terms=n_terms or x.shape[-1],
                 magnitude=magnitude, mistakes=(lambda: mistake_fn(state, x)) if mistake_fn else None)
    return state


# ---------------------------------------------------------------------------------------
# LayerNorm and RMSNorm
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.rules("rmsnorm.weight-only")
@pytest.mark.parametrize("cls,init,expected", [
    ("LayerNorm", {"d": 12}, {"weight": (12,), "bias": (12,)}),
    ("RMSNorm", {"d": 12}, {"weight": (12,)}),
], ids=["LayerNorm", "RMSNorm"])
def test_norm_parameters(worker, cls, init, expected):
    """LayerNorm has weight and bias of shape (d,); RMSNorm only a weight."""
    got = worker.adapters.module_parameters(cls=f"layers.{cls}", init_kwargs=init)
    check_parameters(got, expected, f"{cls}(d=12)")


@pytest.mark.points(1)
@pytest.mark.rules("layernorm.default-eps", "rmsnorm.default-eps")
@pytest.mark.parametrize("cls,eps", [("LayerNorm", 1e-5), ("RMSNorm", 1e-6)], ids=["LayerNorm", "RMSNorm"])
def test_norm_default_eps(worker, cls, eps):
    """built without eps, LayerNorm uses 1e-5 and RMSNorm 1e-6 (every other test passes eps)."""
    # rows of variance ~1e-6 (LayerNorm), and for RMSNorm rows of mean square ~1e-7: the default eps shows
    x = norm_input(3, 16, seed=40) * (1e-3 if cls == "RMSNorm" else 1.0)
    _module_check(worker, cls, {"d": 16}, x, f"{cls}(16)(x) with the default eps={eps}", seed=41,
                  magnitude=cancellation(x, eps))


@pytest.mark.points(2)
@pytest.mark.rules("layernorm.biased-variance", "layernorm.eps-inside-root")
@pytest.mark.parametrize("shape,dtype,eps", [((2, 5, 16), F64, 1e-5), ((6, 7), F32, 1e-5), ((3, 8), F64, 0.1)],
                         ids=["3d-f64", "2d-f32", "eps-0.1"])
def test_layernorm_values(worker, shape, dtype, eps):
    """LayerNorm: biased variance, eps inside the square root, then weight and bias."""
    x = norm_input(*shape, seed=1, dtype=dtype)
    _module_check(worker, "LayerNorm", {"d": shape[-1], "eps": eps}, x, f"LayerNorm(eps={eps})(x {shape})",
                  seed=2, magnitude=cancellation(x, eps), mistake_fn=lambda s, x: mistakes.layernorm_mistakes(x, s["weight"], s["bias"], eps))


@pytest.mark.points(1)
@pytest.mark.rules("layernorm.no-F-layer_norm")
def test_layernorm_is_written_by_hand(worker):
    """LayerNorm does not call F.layer_norm, torch.layer_norm or nn.LayerNorm (read from your source)."""
    static.assert_source_avoids(worker, "layers", "LayerNorm", static.LAYER_NORM,
                         "the exercise asks you to write LayerNorm from mean and variance")
    x = norm_input(4, 8, seed=3)
    _module_check(worker, "LayerNorm", {"d": 8}, x, "LayerNorm(8)(x)", seed=4, magnitude=cancellation(x, 1e-5),
                  forbid=["torch.nn.functional.layer_norm", "torch.layer_norm"])


@pytest.mark.points(2)
@pytest.mark.rules("rmsnorm.formula", "rmsnorm.float64-stays")
@pytest.mark.parametrize("shape,dtype,eps", [((2, 5, 16), F64, 1e-6), ((6, 7), F32, 1e-6), ((3, 8), F64, 0.5)],
                         ids=["3d-f64", "2d-f32", "eps-0.5"])
def test_rmsnorm_values(worker, shape, dtype, eps):
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight (no mean subtracted, no bias)."""
    x = norm_input(*shape, seed=5, dtype=dtype)
    _module_check(worker, "RMSNorm", {"d": shape[-1], "eps": eps}, x, f"RMSNorm(eps={eps})(x {shape})",
                  seed=6, mistake_fn=lambda s, x: mistakes.rmsnorm_mistakes(x, s["weight"], eps))


@pytest.mark.points(1)
@pytest.mark.rules("layernorm.dtype-kept", "rmsnorm.cast-back")
@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_norm_half_precision(worker, cls, dtype):
    """a norm in half precision (weights and input) returns that dtype."""
    module = getattr(ref, cls)(32).to(dtype)
    state = random_state_dict(module, seed=7, std=0.5)
    x = norm_input(4, 32, seed=8, dtype=dtype)
    got = worker.adapters.module_forward(cls=f"layers.{cls}", init_kwargs={"d": 32}, state_dict=state, args=[x],
                                         dtype=dtype)
    module = module.double()
    module.load_state_dict({k: v.double() for k, v in state.items()})
    with torch.no_grad():
        expected = module(x.double())
    check_tensor(got["out"], expected, f"{cls}(32).to({dtype})(x in {dtype})", dtype=dtype,
                 n_terms=32, magnitude=cancellation(x, 1e-5) if cls == "LayerNorm" else 4.0)


@pytest.mark.points(1)
@pytest.mark.rules("layernorm.gradients")
@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_norm_gradients(worker, cls):
    """gradients w.r.t. the input, weight (and bias) match the reference."""
    module = getattr(ref, cls)(8).double()
    state = random_state_dict(module, seed=9, std=0.5)
    module.load_state_dict(state)
    x = norm_input(3, 8, seed=10)
    grad_out = randn(3, 8, seed=11, dtype=F64)
    got = worker.adapters.module_forward(cls=f"layers.{cls}", init_kwargs={"d": 8}, state_dict=state, args=[x],
                                         dtype=F64, grad_output=grad_out)
    x_ = x.clone().requires_grad_(True)
    module(x_).backward(grad_out)
    check_tensor(got["input_grads"][0], x_.grad, f"d{cls}(x)/dx", n_terms=8,
                 magnitude=cancellation(x, 1e-5) if cls == "LayerNorm" else 4.0)
    for name, p in module.named_parameters():
        # d weight = sum over rows of grad * (x - mean) / sqrt(var + eps): the normalised rows
        # carry the same cancellation as the output (the bias gradient, sum of grad, does not)
        amplified = cls == "LayerNorm" and name == "weight"
        check_tensor(got["param_grads"].get(name), p.grad, f"gradient of {cls}.{name}", n_terms=8,
                     magnitude=cancellation(x, 1e-5) if amplified else 1.0)


# ---------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.rules("gelu_tanh.formula", "feedforward.formula")
@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=["float64", "float32", "bfloat16"])
def test_gelu_tanh(worker, dtype):
    """gelu_tanh is GPT-2's tanh approximation of GELU (not the exact erf form)."""
    x = torch.linspace(-6, 6, 97, dtype=F64).to(dtype)
    got = worker.call("layers.gelu_tanh", x)
    check_tensor(got, ref.gelu_tanh(x.double()), f"gelu_tanh(x in {dtype}, -6..6)", dtype=dtype,
                 magnitude=6.0, mistakes=lambda: mistakes.gelu_mistakes(x))


@pytest.mark.points(1)
@pytest.mark.rules("silu.formula")
@pytest.mark.parametrize("dtype", [F64, F32, BF16], ids=["float64", "float32", "bfloat16"])
def test_silu(worker, dtype):
    """silu(x) = x * sigmoid(x), finite for large |x|."""
    x = torch.cat([torch.linspace(-8, 8, 65, dtype=F64), torch.tensor([-100.0, 100.0], dtype=F64)]).to(dtype)
    got = worker.call("layers.silu", x)
    check_tensor(got, ref.silu(x.double()), f"silu(x in {dtype}, -8..8 and +-100)", dtype=dtype,
                 magnitude=8.0, mistakes=lambda: mistakes.silu_mistakes(x))


ACTIVATION_BANS = {"gelu_tanh": ([r"gelu"], "write the tanh approximation from tanh and x**3"),
                   "silu": ([r"^silu_?$", r"^SiLU$"], "write x * sigmoid(x)")}


@pytest.mark.points(1)
@pytest.mark.rules("activations.elementary-ops")
@pytest.mark.parametrize("name", ACTIVATION_BANS)
def test_activation_is_written_by_hand(worker, name):
    """gelu_tanh and silu are built from elementary ops, not F.gelu / F.silu / nn.GELU / nn.SiLU (read from
    your source)."""
    banned, how = ACTIVATION_BANS[name]
    static.assert_source_avoids(worker, "layers", name, banned, f"the exercise asks you to {how}")
    x = torch.linspace(-4, 4, 33, dtype=F64)
    check_tensor(worker.call(f"layers.{name}", x), getattr(ref, name)(x), f"{name}(x)", magnitude=4.0)


# ---------------------------------------------------------------------------------------
# FeedForward and SwiGLU
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.rules("feedforward.bias", "swiglu.no-bias")
@pytest.mark.parametrize("cls,init", [("FeedForward", {"d_model": 8, "d_ff": 20}),
                                      ("FeedForward", {"d_model": 8, "d_ff": 20, "bias": False}),
                                      ("SwiGLU", {"d_model": 8, "d_ff": 20})],
                         ids=["ffn-bias", "ffn-no-bias", "swiglu"])
def test_ffn_parameters(worker, cls, init):
    """FeedForward has fc1, fc2 (bias as asked); SwiGLU gate_proj, up_proj, down_proj, no bias."""
    got = worker.adapters.module_parameters(cls=f"layers.{cls}", init_kwargs=init)
    expected = {name: tuple(p.shape) for name, p in getattr(ref, cls)(**init).named_parameters()}
    check_parameters(got, expected, f"{cls}({init})")


@pytest.mark.points(2)
@pytest.mark.rules("gelu_tanh.formula", "feedforward.formula")
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
def test_feedforward_values(worker, dtype):
    """FeedForward = fc2(gelu_tanh(fc1(x)))."""
    x = randn(2, 5, 8, seed=12, dtype=dtype, scale=2.0)
    _module_check(worker, "FeedForward", {"d_model": 8, "d_ff": 20}, x, "FeedForward(8, 20)(x)", seed=13,
                  n_terms=20, mistake_fn=mistakes.feedforward_mistakes)


@pytest.mark.points(2)
@pytest.mark.rules("silu.formula", "swiglu.formula")
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
def test_swiglu_values(worker, dtype):
    """SwiGLU = down_proj(silu(gate_proj(x)) * up_proj(x))."""
    x = randn(2, 5, 8, seed=14, dtype=dtype, scale=2.0)
    _module_check(worker, "SwiGLU", {"d_model": 8, "d_ff": 20}, x, "SwiGLU(8, 20)(x)", seed=15,
                  n_terms=20, mistake_fn=mistakes.swiglu_mistakes)
