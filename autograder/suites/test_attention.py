"""Hidden suite: exercises/attention.py (lectures 01 and 02).

Each test names in its comment the wrong implementation it is there to catch; the
repository's tests (tests/test_mistakes.py) prove that each of those loses points.
"""
import math

import pytest
import torch

from autograder import static
from autograder.mistakes import attention as mistakes
from autograder.compare import check_parameters, check_tensor
from autograder.inputs import randn, random_state_dict
from solutions import attention as ref

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


# ---------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------
SOFTMAX_CASES = {
    "vector": ((7,), -1, F64),
    "rows": ((3, 5), -1, F32),
    "dim0": ((3, 5), 0, F32),  # wrong axis
    "3d-dim1": ((2, 3, 17), 1, F64),  # wrong axis, odd length
    "length1": ((4, 1), -1, F32),
}


@pytest.mark.points(1)
@pytest.mark.rules("softmax.dim")
@pytest.mark.parametrize("case", SOFTMAX_CASES)
def test_softmax_values(worker, case):
    """softmax matches the reference along the requested dim."""
    shape, dim, dtype = SOFTMAX_CASES[case]
    x = randn(*shape, seed=1, dtype=dtype, scale=2.0)
    got = worker.call("attention.softmax", x, dim=dim)
    check_tensor(got, ref.softmax(x.double(), dim=dim), f"softmax(x of shape {shape}, dim={dim})",
                 dtype=dtype, n_terms=shape[dim], magnitude=x.abs().max().item(), mistakes=lambda: mistakes.softmax_mistakes(x, dim))


@pytest.mark.points(1)
@pytest.mark.rules("softmax.dim")
def test_softmax_non_contiguous(worker):
    """softmax works on a transposed (non-contiguous) input."""
    x = randn(6, 4, seed=2, dtype=F32).t()  # (4, 6), strides (1, 4)
    got = worker.call("attention.softmax", x, dim=-1)
    check_tensor(got, ref.softmax(x.double(), dim=-1), "softmax(x.t(), dim=-1)", dtype=F32,
                 n_terms=6, mistakes=lambda: mistakes.softmax_mistakes(x, -1))


@pytest.mark.points(2)
@pytest.mark.rules("softmax.stable")
def test_softmax_large_logits(worker):
    """softmax does not overflow on logits in the hundreds (subtract the max)."""
    x = randn(4, 9, seed=3, dtype=F32, scale=300.0)  # exp(300) is inf in float32
    got = worker.call("attention.softmax", x, dim=-1)
    check_tensor(got, ref.softmax(x.double(), dim=-1), "softmax(logits of size ~300)", dtype=F32,
                 n_terms=9, magnitude=x.abs().max().item(), mistakes=lambda: mistakes.softmax_mistakes(x, -1))


@pytest.mark.points(2)
@pytest.mark.rules("softmax.no-torch-softmax", "softmax.all-inf-rows")
def test_softmax_all_masked_rows(worker):
    """a row that is entirely -inf gives zeros, not NaN; partly masked rows stay right."""
    x = randn(4, 6, seed=4, dtype=F32)
    x[1] = float("-inf")
    x[2, :3] = float("-inf")
    got = worker.call("attention.softmax", x, dim=-1)
    check_tensor(got, ref.softmax(x.double(), dim=-1), "softmax(x with an all -inf row)", dtype=F32,
                 n_terms=6, mistakes=lambda: mistakes.softmax_mistakes(x, -1))


@pytest.mark.points(1)
@pytest.mark.rules("dtype.kept")
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_softmax_half_precision(worker, dtype):
    """softmax keeps a half-precision dtype and stays accurate to it."""
    x = randn(3, 10, seed=5, dtype=dtype, scale=3.0)
    got = worker.call("attention.softmax", x, dim=-1)
    check_tensor(got, ref.softmax(x.double(), dim=-1), f"softmax(x in {dtype})", dtype=dtype, n_terms=10,
                 magnitude=x.abs().max().item())


@pytest.mark.points(1)
@pytest.mark.rules("softmax.no-torch-softmax")
def test_softmax_is_written_by_hand(worker):
    """softmax does not call torch.softmax / F.softmax / Tensor.softmax (read from your source)."""
    # the source decides (the worker could hide a call from any runtime ban); the runtime
    # ban below stays as a second line
    static.assert_source_avoids(worker, "attention", "softmax", static.SOFTMAX,
                         "the exercise asks you to write softmax from exp and sum")
    x = randn(3, 5, seed=6, dtype=F32)
    got = worker.adapters.attention.call_without_builtin_softmax(target="attention.softmax", args=[x],
                                                                 kwargs={"dim": -1})
    check_tensor(got, ref.softmax(x.double(), dim=-1), "softmax(x)", dtype=F32, n_terms=5)


# ---------------------------------------------------------------------------------------
# causal_mask
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.rules("causal_mask.bool", "causal_mask.default-n_k", "causal_mask.diagonal")
@pytest.mark.parametrize("n", [1, 5, 8])
def test_causal_mask_square(worker, n):
    """causal_mask(n) is True on and below the diagonal (reversed or strict masks fail)."""
    got = worker.call("attention.causal_mask", n)
    check_tensor(got, ref.causal_mask(n), f"causal_mask({n})",
                 mistakes=lambda: mistakes.causal_mask_mistakes(n))


@pytest.mark.points(1)
@pytest.mark.rules("causal_mask.offset", "causal_mask.diagonal")
@pytest.mark.parametrize("n_q,n_k", [(1, 6), (3, 7)])
def test_causal_mask_with_cache_offset(worker, n_q, n_k):
    """causal_mask(n_q, n_k) with n_q < n_k places query i at position n_k - n_q + i."""
    got = worker.call("attention.causal_mask", n_q, n_k)
    check_tensor(got, ref.causal_mask(n_q, n_k), f"causal_mask({n_q}, {n_k})",
                 mistakes=lambda: mistakes.causal_mask_mistakes(n_q, n_k))


@pytest.mark.points(1)
@pytest.mark.rules("causal_mask.more-queries-than-keys")
def test_causal_mask_more_queries_than_keys(worker):
    """causal_mask(5, 3): queries 0 and 1 sit before the first key (all False), then the diagonal."""
    got = worker.call("attention.causal_mask", 5, 3)
    check_tensor(got, ref.causal_mask(5, 3), "causal_mask(5, 3) (query i at position n_k - n_q + i = i - 2)",
                 mistakes=lambda: mistakes.causal_mask_mistakes(5, 3))


# ---------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------------------
def score_magnitude(q, k, scale=None):
    """Largest |q.k * scale|: how much rounding the exp in softmax amplifies (see tolerance)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (q.double() @ k.double().transpose(-2, -1)).abs().max().item() * scale


def _sdpa_check(worker, q, k, v, what, dtype=None, **kwargs):
    got = worker.call("attention.scaled_dot_product_attention", q, k, v, **kwargs)
    expected = ref.scaled_dot_product_attention(q.double(), k.double(), v.double(), **kwargs)
    check_tensor(got, expected, what, dtype=dtype or q.dtype, n_terms=max(q.shape[-1], k.shape[-2]),
                 magnitude=score_magnitude(q, k, kwargs.get("scale")),
                 mistakes=lambda: mistakes.sdpa_mistakes(q, k, v, **kwargs))


SDPA_SHAPES = {
    # name: (q shape, k shape, v shape, dtype)
    "batch-heads": ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4), F64),  # n_q != n_k, d_v != d_k
    "no-batch": ((6, 16), (6, 16), (6, 16), F32),
    "length1": ((2, 1, 8), (2, 1, 8), (2, 1, 8), F32),
    "one-query": ((2, 1, 8), (2, 9, 8), (2, 9, 3), F64),
}


@pytest.mark.points(1)
@pytest.mark.rules("dtype.kept",
                   "precision.float64-end-to-end",
                   "sdpa.scale-default",
                   "sdpa.softmax-over-keys")
@pytest.mark.parametrize("case", SDPA_SHAPES)
def test_sdpa_values(worker, case):
    """attention matches the reference (scale 1/sqrt(d_k), softmax over keys)."""
    q_shape, k_shape, v_shape, dtype = SDPA_SHAPES[case]
    q = randn(*q_shape, seed=10, dtype=dtype, scale=1.5)
    k = randn(*k_shape, seed=11, dtype=dtype, scale=1.5)
    v = randn(*v_shape, seed=12, dtype=dtype)
    _sdpa_check(worker, q, k, v, f"attention(q {q_shape}, k {k_shape}, v {v_shape})")


@pytest.mark.points(1)
@pytest.mark.rules("sdpa.softmax-over-keys")
def test_sdpa_non_contiguous(worker):
    """attention works on transposed (non-contiguous) q, k and v."""
    q = randn(2, 6, 4, 8, seed=13, dtype=F32).transpose(1, 2)  # (2, 4, 6, 8), non-contiguous
    k = randn(2, 6, 4, 8, seed=14, dtype=F32).transpose(1, 2)
    v = randn(2, 6, 4, 8, seed=15, dtype=F32).transpose(1, 2)
    _sdpa_check(worker, q, k, v, "attention(q.transpose(1, 2), ...)")


@pytest.mark.points(1)
@pytest.mark.rules("sdpa.scale-argument")
def test_sdpa_explicit_scale(worker):
    """an explicit scale replaces 1/sqrt(d_k)."""
    q, k, v = (randn(2, 5, 8, seed=s, dtype=F64) for s in (16, 17, 18))
    _sdpa_check(worker, q, k, v, "attention(q, k, v, scale=0.7)", scale=0.7)


@pytest.mark.points(2)
@pytest.mark.rules("sdpa.mask-true-attends")
def test_sdpa_padding_mask(worker):
    """a boolean padding mask (b, 1, 1, n_k) broadcasts; True means 'may attend'."""
    q, k, v = (randn(2, 3, 5, 4, seed=s, dtype=F64) for s in (19, 20, 21))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)[:, None, None, :]
    _sdpa_check(worker, q, k, v, "attention(q, k, v, mask=padding (b, 1, 1, n_k))", mask=mask)


@pytest.mark.points(2)
@pytest.mark.rules("causal_mask.offset",
                   "causal_mask.diagonal",
                   "sdpa.scale-default",
                   "sdpa.softmax-over-keys")
@pytest.mark.parametrize("n_q,n_k", [(6, 6), (3, 7)], ids=["square", "decode-offset"])
def test_sdpa_causal(worker, n_q, n_k):
    """is_causal hides later keys from earlier queries (query i at position n_k - n_q + i)."""
    q = randn(2, 2, n_q, 8, seed=22, dtype=F64, scale=1.5)
    k = randn(2, 2, n_k, 8, seed=23, dtype=F64, scale=1.5)
    v = randn(2, 2, n_k, 8, seed=24, dtype=F64)
    _sdpa_check(worker, q, k, v, f"attention(n_q={n_q}, n_k={n_k}, is_causal=True)", is_causal=True)


@pytest.mark.points(1)
@pytest.mark.rules("sdpa.causal-and-mask")
def test_sdpa_causal_and_mask(worker):
    """is_causal and a mask combine by AND."""
    q, k, v = (randn(2, 1, 5, 4, seed=s, dtype=F64) for s in (25, 26, 27))
    mask = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    _sdpa_check(worker, q, k, v, "attention(q, k, v, mask=..., is_causal=True)", mask=mask, is_causal=True)


@pytest.mark.points(2)
@pytest.mark.rules("softmax.all-inf-rows", "sdpa.empty-rows-zero")
def test_sdpa_fully_masked_rows(worker):
    """a query with no allowed key returns zeros, never NaN."""
    q, k, v = (randn(1, 4, 6, seed=s, dtype=F32) for s in (28, 29, 30))
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[0, 2] = False  # query 2 may attend to nothing
    _sdpa_check(worker, q, k, v, "attention(q, k, v, mask with an all-False row)", mask=mask)


@pytest.mark.points(1)
@pytest.mark.rules("softmax.stable")
def test_sdpa_large_scores(worker):
    """attention stays finite when scores are large (hundreds): a stable softmax is used."""
    q = randn(2, 4, 8, seed=31, dtype=F32, scale=30.0)
    k = randn(2, 4, 8, seed=32, dtype=F32, scale=30.0)
    v = randn(2, 4, 8, seed=33, dtype=F32)
    got = worker.call("attention.scaled_dot_product_attention", q, k, v)
    expected = ref.scaled_dot_product_attention(q.double(), k.double(), v.double())
    check_tensor(got, expected, "attention(q, k, v with scores ~300)", dtype=F32, n_terms=8,
                 magnitude=score_magnitude(q, k),
                 mistakes=lambda: mistakes.sdpa_mistakes(q, k, v))


@pytest.mark.points(1)
@pytest.mark.rules("dtype.kept")
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_sdpa_half_precision(worker, dtype):
    """attention keeps a half-precision dtype and stays accurate to it."""
    q, k, v = (randn(2, 5, 8, seed=s, dtype=dtype) for s in (34, 35, 36))
    _sdpa_check(worker, q, k, v, f"attention(q, k, v in {dtype})", is_causal=True)


@pytest.mark.points(2)
@pytest.mark.rules("sdpa.gradients")
def test_sdpa_gradients(worker):
    """gradients flow through attention to q, k and v (no detach, no in-place on leaves)."""
    q, k, v = (randn(2, 5, 4, seed=s, dtype=F64) for s in (37, 38, 39))
    grad_out = randn(2, 5, 4, seed=40, dtype=F64)
    got = worker.adapters.function_grads(target="attention.scaled_dot_product_attention", args=[q, k, v],
                                         kwargs={"is_causal": True}, grad_output=grad_out)
    q_, k_, v_ = (t.clone().requires_grad_(True) for t in (q, k, v))
    ref.scaled_dot_product_attention(q_, k_, v_, is_causal=True).backward(grad_out)
    for name, index, expected in [("dq", 0, q_.grad), ("dk", 1, k_.grad), ("dv", 2, v_.grad)]:
        check_tensor(got["input_grads"][index], expected, f"{name} of causal attention", n_terms=5)


# ---------------------------------------------------------------------------------------
# repeat_kv
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.rules("repeat_kv.mapping")
@pytest.mark.parametrize("n_rep", [1, 2, 3])
def test_repeat_kv(worker, n_rep):
    """repeat_kv repeats each key/value head in place: output head h is input head h // n_rep."""
    x = randn(2, 2, 3, 4, seed=41, dtype=F32)
    got = worker.call("attention.repeat_kv", x, n_rep)
    check_tensor(got, ref.repeat_kv(x, n_rep), f"repeat_kv(x (2, 2, 3, 4), n_rep={n_rep})",
                 exact=True, mistakes=lambda: mistakes.repeat_kv_mistakes(x, n_rep))


# ---------------------------------------------------------------------------------------
# MultiHeadAttention
# ---------------------------------------------------------------------------------------
MHA_CONFIGS = {
    "mha-6-heads": dict(d_model=24, n_heads=6),
    "gqa-6-2-bias": dict(d_model=24, n_heads=6, n_kv_heads=2, bias=True),
    "gqa-6-3": dict(d_model=30, n_heads=6, n_kv_heads=3),
    "mqa-4-1": dict(d_model=16, n_heads=4, n_kv_heads=1),
}


def _mha_case(config, seed, dtype=F64):
    module = ref.MultiHeadAttention(**config).to(dtype)
    state = random_state_dict(module, seed=seed)
    module.load_state_dict(state)
    return module, state


def _mha_check(worker, config, x, what, seed=50, n_terms=None, **kwargs):
    module, state = _mha_case(config, seed, x.dtype)
    got = worker.adapters.module_forward(cls="attention.MultiHeadAttention", init_kwargs=config,
                                         state_dict=state, args=[x], kwargs=kwargs, dtype=x.dtype)
    with torch.no_grad():
        expected = module.double()(x.double(), **{k: (v.double() if k == "context" else v)
                                                   for k, v in kwargs.items()})
    check_tensor(got["out"] if isinstance(got, dict) else got, expected, what, dtype=x.dtype,
                 n_terms=n_terms or config["d_model"],
                 mistakes=lambda: mistakes.mha_mistakes(state, config, x, **kwargs))


@pytest.mark.points(1)
@pytest.mark.rules("mha.n_kv_heads-default", "mha.projection-bias")
@pytest.mark.parametrize("config", MHA_CONFIGS)
def test_mha_parameters(worker, config):
    """MultiHeadAttention has q_proj, k_proj, v_proj, o_proj with the API's shapes."""
    cfg = MHA_CONFIGS[config]
    got = worker.adapters.module_parameters(cls="attention.MultiHeadAttention", init_kwargs=cfg)
    expected = {name: tuple(p.shape) for name, p in ref.MultiHeadAttention(**cfg).named_parameters()}
    check_parameters(got, expected, f"MultiHeadAttention({cfg})")


@pytest.mark.points(2)
@pytest.mark.rules("sdpa.scale-default",
                   "sdpa.softmax-over-keys",
                   "repeat_kv.mapping",
                   "mha.projection-bias",
                   "mha.head-split",
                   "mha.head-merge",
                   "mha.output-projection",
                   "mha.no-rope-without-theta")
@pytest.mark.parametrize("config", MHA_CONFIGS)
def test_mha_forward(worker, config):
    """self-attention output matches the reference with the same weights (MHA, GQA, MQA)."""
    cfg = MHA_CONFIGS[config]
    x = randn(2, 5, cfg["d_model"], seed=51, dtype=F64)
    _mha_check(worker, cfg, x, f"MultiHeadAttention({cfg})(x)")


@pytest.mark.points(2)
@pytest.mark.rules("causal_mask.diagonal", "repeat_kv.mapping", "mha.head-split", "mha.head-merge")
def test_mha_causal(worker):
    """causal self-attention with grouped-query heads matches the reference."""
    cfg = MHA_CONFIGS["gqa-6-2-bias"]
    x = randn(2, 7, cfg["d_model"], seed=52, dtype=F64)
    _mha_check(worker, cfg, x, f"MultiHeadAttention({cfg})(x, is_causal=True)", is_causal=True)


@pytest.mark.points(1)
@pytest.mark.rules("sdpa.mask-true-attends")
def test_mha_padding_mask(worker):
    """a padding mask (b, 1, 1, n) reaches every head."""
    cfg = MHA_CONFIGS["mha-6-heads"]
    x = randn(2, 5, cfg["d_model"], seed=53, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    _mha_check(worker, cfg, x, "MultiHeadAttention(...)(x, mask=padding)", mask=mask)


@pytest.mark.points(2)
@pytest.mark.rules("mha.head-split", "mha.head-merge", "mha.cross-attention")
@pytest.mark.parametrize("config", ["mha-6-heads", "gqa-6-2-bias"])
def test_mha_cross_attention(worker, config):
    """cross-attention: queries from x, keys and values from a context of another length."""
    cfg = MHA_CONFIGS[config]
    x = randn(2, 3, cfg["d_model"], seed=54, dtype=F64)
    context = randn(2, 8, cfg["d_model"], seed=55, dtype=F64)
    _mha_check(worker, cfg, x, f"MultiHeadAttention({cfg})(x, context=...)", context=context)


@pytest.mark.points(1)
@pytest.mark.rules("dtype.kept")
def test_mha_float32(worker):
    """MultiHeadAttention runs in float32 and matches to float32 precision."""
    cfg = MHA_CONFIGS["gqa-6-2-bias"]
    x = randn(3, 6, cfg["d_model"], seed=56, dtype=F32)
    _mha_check(worker, cfg, x, "MultiHeadAttention(...) in float32", is_causal=True)


@pytest.mark.points(2)
@pytest.mark.rules("sdpa.gradients", "mha.output-projection")
def test_mha_gradients(worker):
    """gradients w.r.t. the input and every weight match the reference."""
    cfg = MHA_CONFIGS["gqa-6-2-bias"]
    module, state = _mha_case(cfg, seed=57)
    x = randn(2, 4, cfg["d_model"], seed=58, dtype=F64)
    grad_out = randn(2, 4, cfg["d_model"], seed=59, dtype=F64)
    got = worker.adapters.module_forward(cls="attention.MultiHeadAttention", init_kwargs=cfg, state_dict=state,
                                         args=[x], kwargs={"is_causal": True}, dtype=F64,
                                         grad_output=grad_out)
    x_ = x.clone().requires_grad_(True)
    module(x_, is_causal=True).backward(grad_out)
    check_tensor(got["input_grads"][0], x_.grad, "d(output)/d(x)", n_terms=cfg["d_model"])
    for name, p in module.named_parameters():
        check_tensor(got["param_grads"].get(name), p.grad, f"gradient of {name}", n_terms=cfg["d_model"])
