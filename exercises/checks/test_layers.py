"""Public suite: exercises/layers.py (lecture 04): LayerNorm, RMSNorm, GELU, SiLU,
FeedForward, SwiGLU. Norm weights and biases are random (never the default ones and
zeros) and some rows have a tiny variance, so eps and variance mistakes show."""
import pytest
import torch

from autograder import static
from autograder.compare import check_tensor
from autograder.inputs import randn, random_state_dict

F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16


def norm_input(*shape, seed, dtype=F64):
    """Rows with a mean far from 0, and two rows with a variance near or below eps."""
    x = randn(*shape, seed=seed, dtype=F64) + 2.5
    flat = x.view(-1, shape[-1])
    flat[0] = 0.7 + 1e-3 * flat[0]  # variance ~1e-6, near eps
    flat[-1] = -1.5 + 1e-4 * flat[-1]
    return x.to(dtype)


def cancellation(x, eps):
    """How much LayerNorm's x - mean amplifies rounding: |mean| / sqrt(var + eps) per row."""
    x = x.double()
    return (x.mean(-1).abs() / (x.var(-1, unbiased=False) + eps).sqrt()).max().item()


def _module_check(worker, reference, cls, init, x, what, seed, mistake_fn=None, n_terms=None, magnitude=1.0,
                  **call):
    def truth(s):
        module = getattr(s.layers, cls)(**init).to(x.dtype if x.dtype == F64 else F32)
        state = random_state_dict(module, seed=seed, std=0.5)
        module = module.double()
        module.load_state_dict(state)
        with torch.no_grad():
            out = module(x.double())
        return [state, out, list(mistake_fn(s, state, x)) if mistake_fn else None]

    state, expected, known = reference(truth)
    got = worker.adapters.module_forward(f"layers.{cls}", init, state, [x],
                      dtype=x.dtype if x.dtype in (F64, F32) else None, **call)
    check_tensor(got["out"], expected, what, dtype=x.dtype, n_terms=n_terms or x.shape[-1], magnitude=magnitude,
                 mistakes=(lambda: known) if known is not None else None)


@pytest.mark.points(1)
@pytest.mark.mirrors("norm_parameters", "ffn_parameters")
@pytest.mark.parametrize("cls,init", [("LayerNorm", {"d": 6}), ("RMSNorm", {"d": 6}),
                                      ("FeedForward", {"d_model": 6, "d_ff": 10, "bias": False}),
                                      ("SwiGLU", {"d_model": 6, "d_ff": 10})],
                         ids=["LayerNorm", "RMSNorm", "FeedForward-no-bias", "SwiGLU"])
def test_public_parameters(worker, reference, cls, init):
    """the modules have the API's parameter names and shapes (RMSNorm and SwiGLU have no bias)."""
    expected = reference(lambda s: {n: list(p.shape) for n, p in getattr(s.layers, cls)(**init).named_parameters()})
    expected = {n: tuple(shape) for n, shape in expected.items()}
    got = worker.adapters.module_parameters(f"layers.{cls}", init)
    params = {name: tuple(info["shape"]) for name, info in got["parameters"].items()}
    assert params == expected, f"{cls}({init}) parameters: expected {expected}, got {params}"


@pytest.mark.points(1)
@pytest.mark.mirrors("norm_default_eps")
@pytest.mark.parametrize("cls,eps", [("LayerNorm", 1e-5), ("RMSNorm", 1e-6)], ids=["LayerNorm", "RMSNorm"])
def test_public_norm_default_eps(worker, reference, cls, eps):
    """built without eps, LayerNorm uses 1e-5 and RMSNorm 1e-6."""
    x = norm_input(3, 10, seed=1201) * (1e-3 if cls == "RMSNorm" else 1.0)
    _module_check(worker, reference, cls, {"d": 10}, x, f"{cls}(10)(x) with the default eps={eps}", seed=1202,
                  magnitude=cancellation(x, eps))


@pytest.mark.points(2)
@pytest.mark.mirrors("layernorm_values")
@pytest.mark.parametrize("dtype,eps", [(F64, 1e-5), (F64, 0.2)], ids=["f64", "eps-0.2"])
def test_public_layernorm(worker, reference, dtype, eps):
    """LayerNorm: biased variance, eps inside the square root, then weight and bias."""
    x = norm_input(4, 9, seed=1203, dtype=dtype)
    _module_check(worker, reference, "LayerNorm", {"d": 9, "eps": eps}, x, f"LayerNorm(eps={eps})(x (4, 9))",
                  seed=1204, magnitude=cancellation(x, eps),
                  mistake_fn=lambda s, st, x: s.mistakes.layernorm_mistakes(x, st["weight"], st["bias"], eps))


@pytest.mark.points(1)
@pytest.mark.mirrors("layernorm_is_written_by_hand")
def test_public_layernorm_by_hand(worker, reference):
    """LayerNorm does not call F.layer_norm, torch.layer_norm or nn.LayerNorm (read from your source)."""
    static.assert_source_avoids(worker, "layers", "LayerNorm", static.LAYER_NORM,
                                "the exercise asks you to write LayerNorm from mean and variance")
    x = norm_input(3, 6, seed=1205)
    _module_check(worker, reference, "LayerNorm", {"d": 6}, x, "LayerNorm(6)(x)", seed=1206,
                  magnitude=cancellation(x, 1e-5), forbid=["torch.nn.functional.layer_norm", "torch.layer_norm"])


@pytest.mark.points(2)
@pytest.mark.mirrors("rmsnorm_values")
@pytest.mark.parametrize("dtype,eps", [(F32, 1e-6), (F64, 0.3)], ids=["f32", "eps-0.3"])
def test_public_rmsnorm(worker, reference, dtype, eps):
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight (no mean subtracted, no bias)."""
    x = norm_input(4, 9, seed=1207, dtype=dtype)
    _module_check(worker, reference, "RMSNorm", {"d": 9, "eps": eps}, x, f"RMSNorm(eps={eps})(x (4, 9))",
                  seed=1208, mistake_fn=lambda s, st, x: s.mistakes.rmsnorm_mistakes(x, st["weight"], eps))


@pytest.mark.points(1)
@pytest.mark.mirrors("norm_half_precision")
@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_public_norm_bfloat16(worker, reference, cls):
    """a norm in half precision (weights and input) returns that dtype."""
    x = norm_input(3, 16, seed=1209, dtype=BF16)

    def truth(s):
        module = getattr(s.layers, cls)(16).to(BF16)
        state = random_state_dict(module, seed=1210, std=0.5)
        module = module.double()
        module.load_state_dict({k: v.double() for k, v in state.items()})
        with torch.no_grad():
            return [state, module(x.double())]

    state, expected = reference(truth)
    got = worker.adapters.module_forward(f"layers.{cls}", {"d": 16}, state, [x], dtype=BF16)
    check_tensor(got["out"], expected, f"{cls}(16).to(bfloat16)(x in bfloat16)", dtype=BF16, n_terms=16,
                 magnitude=cancellation(x, 1e-5) if cls == "LayerNorm" else 4.0)


@pytest.mark.points(1)
@pytest.mark.mirrors("norm_gradients")
@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_public_norm_gradients(worker, reference, cls):
    """gradients w.r.t. the input, weight (and bias) match the reference."""
    x = norm_input(2, 6, seed=1211)
    grad_out = randn(2, 6, seed=1212, dtype=F64)

    def truth(s):
        module = getattr(s.layers, cls)(6).double()
        state = random_state_dict(module, seed=1213, std=0.5)
        module.load_state_dict(state)
        x_ = x.clone().requires_grad_(True)
        module(x_).backward(grad_out)
        return [state, x_.grad, {n: p.grad for n, p in module.named_parameters()}]

    state, dx, param_grads = reference(truth)
    got = worker.adapters.module_forward(f"layers.{cls}", {"d": 6}, state, [x], dtype=F64, grad_output=grad_out)
    amplification = cancellation(x, 1e-5) if cls == "LayerNorm" else 4.0
    check_tensor(got["input_grads"][0], dx, f"d{cls}(x)/dx", n_terms=6, magnitude=amplification)
    for name, grad in param_grads.items():
        # the normalised rows carry the same cancellation as the output (the bias gradient does not)
        amplified = cls == "LayerNorm" and name == "weight"
        check_tensor(got["param_grads"].get(name), grad, f"gradient of {cls}.{name}", n_terms=6,
                     magnitude=amplification if amplified else 1.0)


# ---------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.mirrors("gelu_tanh")
@pytest.mark.parametrize("dtype", [F64, BF16], ids=["float64", "bfloat16"])
def test_public_gelu_tanh(worker, reference, dtype):
    """gelu_tanh is GPT-2's tanh approximation of GELU (not the exact erf form)."""
    x = torch.linspace(-5, 5, 41, dtype=F64).to(dtype)
    expected = reference(lambda s: s.layers.gelu_tanh(x.double()))
    known = reference.mistakes(lambda s: s.mistakes.gelu_mistakes(x))
    got = worker.call("layers.gelu_tanh", x)
    check_tensor(got, expected, f"gelu_tanh(x in {dtype}, -5..5)", dtype=dtype, magnitude=5.0, mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("silu")
@pytest.mark.parametrize("dtype", [F32, BF16], ids=["float32", "bfloat16"])
def test_public_silu(worker, reference, dtype):
    """silu(x) = x * sigmoid(x), finite for large |x|."""
    x = torch.cat([torch.linspace(-6, 6, 25, dtype=F64), torch.tensor([-90.0, 90.0], dtype=F64)]).to(dtype)
    expected = reference(lambda s: s.layers.silu(x.double()))
    known = reference.mistakes(lambda s: s.mistakes.silu_mistakes(x))
    got = worker.call("layers.silu", x)
    check_tensor(got, expected, f"silu(x in {dtype}, -6..6 and +-90)", dtype=dtype, magnitude=6.0, mistakes=known)


ACTIVATION_BANS = {"gelu_tanh": ([r"gelu"], "write the tanh approximation from tanh and x**3"),
                   "silu": ([r"^silu_?$", r"^SiLU$"], "write x * sigmoid(x)")}


@pytest.mark.points(1)
@pytest.mark.mirrors("activation_is_written_by_hand")
@pytest.mark.parametrize("name", ACTIVATION_BANS)
def test_public_activation_by_hand(worker, reference, name):
    """gelu_tanh and silu are built from elementary ops, not F.gelu / F.silu (read from your source)."""
    banned, how = ACTIVATION_BANS[name]
    static.assert_source_avoids(worker, "layers", name, banned, f"the exercise asks you to {how}")
    x = torch.linspace(-3, 3, 13, dtype=F64)
    expected = reference(lambda s: getattr(s.layers, name)(x))
    check_tensor(worker.call(f"layers.{name}", x), expected, f"{name}(x)", magnitude=3.0)


# ---------------------------------------------------------------------------------------
# FeedForward and SwiGLU
# ---------------------------------------------------------------------------------------
@pytest.mark.points(2)
@pytest.mark.mirrors("feedforward_values")
def test_public_feedforward(worker, reference):
    """FeedForward = fc2(gelu_tanh(fc1(x)))."""
    x = randn(2, 3, 6, seed=1214, dtype=F64, scale=2.0)
    _module_check(worker, reference, "FeedForward", {"d_model": 6, "d_ff": 14}, x, "FeedForward(6, 14)(x)",
                  seed=1215, n_terms=14, mistake_fn=lambda s, st, x: s.mistakes.feedforward_mistakes(st, x))


@pytest.mark.points(2)
@pytest.mark.mirrors("swiglu_values")
def test_public_swiglu(worker, reference):
    """SwiGLU = down_proj(silu(gate_proj(x)) * up_proj(x))."""
    x = randn(2, 3, 6, seed=1216, dtype=F32, scale=2.0)
    _module_check(worker, reference, "SwiGLU", {"d_model": 6, "d_ff": 14}, x, "SwiGLU(6, 14)(x)", seed=1217,
                  n_terms=14, mistake_fn=lambda s, st, x: s.mistakes.swiglu_mistakes(st, x))
