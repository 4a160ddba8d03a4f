"""Public suite: exercises/attention.py (lectures 01 and 02).

Each test checks one property of the API on public inputs (seeds from 1000 up; the staff's
suite uses others) and names the known mistake your values match. Run one function alone:
``python3 course.py grade --exercise attention -k softmax``.
"""
import math

import pytest
import torch

from autograder import static
from autograder.compare import check_tensor
from autograder.inputs import randn

F64, F32, BF16, F16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


# ---------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------
SOFTMAX_CASES = {"rows": ((4, 6), -1, F32), "dim0": ((5, 3), 0, F64), "3d-dim1": ((2, 5, 3), 1, F32)}


def _softmax_check(worker, reference, x, dim, what, dtype=None):
    expected = reference(lambda s: s.attention.softmax(x.double(), dim=dim))
    known = reference.mistakes(lambda s: s.mistakes.softmax_mistakes(x, dim))
    got = worker.call("attention.softmax", x, dim=dim)
    check_tensor(got, expected, what, dtype=dtype or x.dtype, n_terms=x.shape[dim],
                 magnitude=x[torch.isfinite(x)].abs().max().item(), mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("softmax_values")
@pytest.mark.parametrize("case", SOFTMAX_CASES)
def test_public_softmax(worker, reference, case):
    """softmax matches the reference along the requested dim (weights sum to 1 along it)."""
    shape, dim, dtype = SOFTMAX_CASES[case]
    x = randn(*shape, seed=1001, dtype=dtype, scale=2.0)
    _softmax_check(worker, reference, x, dim, f"softmax(x of shape {shape}, dim={dim})")


@pytest.mark.points(1)
@pytest.mark.mirrors("softmax_non_contiguous")
def test_public_softmax_transposed_input(worker, reference):
    """softmax works on a transposed (non-contiguous) input."""
    x = randn(5, 3, seed=1002, dtype=F32).t()  # (3, 5), strides (1, 3)
    _softmax_check(worker, reference, x, -1, "softmax(x.t(), dim=-1)")


@pytest.mark.points(2)
@pytest.mark.mirrors("softmax_large_logits")
def test_public_softmax_large_logits(worker, reference):
    """softmax does not overflow on logits in the hundreds (subtract the row maximum)."""
    x = randn(3, 7, seed=1003, dtype=F32, scale=250.0)  # exp(250) is inf in float32
    _softmax_check(worker, reference, x, -1, "softmax(logits of size ~250)")


@pytest.mark.points(2)
@pytest.mark.mirrors("softmax_all_masked_rows")
def test_public_softmax_all_masked_row(worker, reference):
    """a row that is entirely -inf gives zeros, not NaN; a partly masked row and a row of large
    logits stay right."""
    x = randn(3, 5, seed=1004, dtype=F32)
    x[0] = float("-inf")
    # logits in the hundreds: only a softmax without the max overflows here (exp(310) is inf in
    # float32), so an all-masked row gone NaN is not taken for an overflow
    x[1] = torch.tensor([310.0, 290.0, -40.0, 305.0, 0.0])
    x[2, 1:3] = float("-inf")
    _softmax_check(worker, reference, x, -1, "softmax(x with an all -inf row)")


@pytest.mark.points(1)
@pytest.mark.mirrors("softmax_half_precision")
def test_public_softmax_bfloat16(worker, reference):
    """softmax keeps a half-precision dtype and stays accurate to it."""
    x = randn(2, 9, seed=1005, dtype=BF16, scale=3.0)
    _softmax_check(worker, reference, x, -1, "softmax(x in bfloat16)")


@pytest.mark.points(1)
@pytest.mark.mirrors("softmax_is_written_by_hand")
def test_public_softmax_by_hand(worker, reference):
    """softmax does not call torch.softmax / F.softmax / Tensor.softmax (read from your source)."""
    static.assert_source_avoids(worker, "attention", "softmax", static.SOFTMAX,
                                "the exercise asks you to write softmax from exp and sum")
    x = randn(2, 6, seed=1006, dtype=F32)
    expected = reference(lambda s: s.attention.softmax(x.double(), dim=-1))
    got = worker.adapters.attention.call_without_builtin_softmax("attention.softmax", [x], {"dim": -1})
    check_tensor(got, expected, "softmax(x)", dtype=F32, n_terms=6)


# ---------------------------------------------------------------------------------------
# causal_mask
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.mirrors("causal_mask_square", "causal_mask_with_cache_offset", "causal_mask_more_queries_than_keys")
@pytest.mark.parametrize("n_q,n_k", [(4, None), (2, 5), (4, 2)], ids=["square", "offset", "more-queries"])
def test_public_causal_mask(worker, reference, n_q, n_k):
    """causal_mask(n_q, n_k) is True where key position <= query position (query i at n_k - n_q + i)."""
    args = (n_q,) if n_k is None else (n_q, n_k)
    expected = reference(lambda s: s.attention.causal_mask(*args))
    known = reference.mistakes(lambda s: s.mistakes.causal_mask_mistakes(*args))
    got = worker.call("attention.causal_mask", *args)
    check_tensor(got, expected, f"causal_mask{args}", mistakes=known)


# ---------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------------------
def score_magnitude(q, k, scale=None):
    """Largest |q.k * scale|: how much rounding the exp in softmax amplifies (see tolerance)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return (q.double() @ k.double().transpose(-2, -1)).abs().max().item() * scale


def _sdpa_check(worker, reference, q, k, v, what, **kwargs):
    expected = reference(lambda s: s.attention.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                                                            **kwargs))
    known = reference.mistakes(lambda s: s.mistakes.sdpa_mistakes(q, k, v, **kwargs))
    got = worker.call("attention.scaled_dot_product_attention", q, k, v, **kwargs)
    check_tensor(got, expected, what, dtype=q.dtype, n_terms=max(q.shape[-1], k.shape[-2]),
                 magnitude=score_magnitude(q, k, kwargs.get("scale")), mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("sdpa_values")
def test_public_sdpa(worker, reference):
    """attention matches the reference (scale 1/sqrt(d_k), softmax over keys), n_q != n_k, d_v != d_k."""
    q = randn(2, 2, 4, 8, seed=1010, dtype=F64, scale=1.5)
    k = randn(2, 2, 6, 8, seed=1011, dtype=F64, scale=1.5)
    v = randn(2, 2, 6, 5, seed=1012, dtype=F64)
    _sdpa_check(worker, reference, q, k, v, "attention(q (2, 2, 4, 8), k (2, 2, 6, 8), v (2, 2, 6, 5))")


@pytest.mark.points(1)
@pytest.mark.mirrors("sdpa_non_contiguous")
def test_public_sdpa_transposed_inputs(worker, reference):
    """attention works on transposed (non-contiguous) q, k and v."""
    q, k, v = (randn(1, 5, 3, 4, seed=s, dtype=F32).transpose(1, 2) for s in (1013, 1014, 1015))
    _sdpa_check(worker, reference, q, k, v, "attention(q.transpose(1, 2), ...)")


@pytest.mark.points(1)
@pytest.mark.mirrors("sdpa_explicit_scale")
def test_public_sdpa_scale_argument(worker, reference):
    """an explicit scale replaces 1/sqrt(d_k)."""
    q, k, v = (randn(3, 4, seed=s, dtype=F64) for s in (1016, 1017, 1018))
    _sdpa_check(worker, reference, q, k, v, "attention(q, k, v, scale=0.3)", scale=0.3)


@pytest.mark.points(2)
@pytest.mark.mirrors("sdpa_padding_mask")
def test_public_sdpa_padding_mask(worker, reference):
    """a boolean padding mask (b, 1, 1, n_k) broadcasts; True means 'may attend'."""
    q, k, v = (randn(2, 2, 4, 4, seed=s, dtype=F64) for s in (1019, 1020, 1021))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)[:, None, None, :]
    _sdpa_check(worker, reference, q, k, v, "attention(q, k, v, mask=padding (b, 1, 1, n_k))", mask=mask)


@pytest.mark.points(2)
@pytest.mark.mirrors("sdpa_causal")
@pytest.mark.parametrize("n_q,n_k", [(5, 5), (2, 6)], ids=["square", "decode-offset"])
def test_public_sdpa_causal(worker, reference, n_q, n_k):
    """is_causal hides later keys from earlier queries (query i at position n_k - n_q + i)."""
    q = randn(1, 2, n_q, 8, seed=1022, dtype=F64, scale=1.5)
    k = randn(1, 2, n_k, 8, seed=1023, dtype=F64, scale=1.5)
    v = randn(1, 2, n_k, 8, seed=1024, dtype=F64)
    _sdpa_check(worker, reference, q, k, v, f"attention(n_q={n_q}, n_k={n_k}, is_causal=True)", is_causal=True)


@pytest.mark.points(1)
@pytest.mark.mirrors("sdpa_causal_and_mask")
def test_public_sdpa_causal_with_mask(worker, reference):
    """is_causal and a mask combine by AND."""
    q, k, v = (randn(2, 1, 4, 4, seed=s, dtype=F64) for s in (1025, 1026, 1027))
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)[:, None, None, :]
    _sdpa_check(worker, reference, q, k, v, "attention(q, k, v, mask=..., is_causal=True)", mask=mask,
                is_causal=True)


@pytest.mark.points(2)
@pytest.mark.mirrors("sdpa_fully_masked_rows")
def test_public_sdpa_query_without_keys(worker, reference):
    """a query with no allowed key returns zeros, never NaN (and a query with large scores stays right)."""
    q, k, v = (randn(1, 3, 4, seed=s, dtype=F32) for s in (1028, 1029, 1030))
    q[0, 2] = 100 * k[0, 0]  # scores in the hundreds for query 2: tells an all-masked row from an overflow
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    mask[0, 1] = False  # query 1 may attend to nothing
    _sdpa_check(worker, reference, q, k, v, "attention(q, k, v, mask with an all-False row)", mask=mask)


@pytest.mark.points(1)
@pytest.mark.mirrors("sdpa_large_scores")
def test_public_sdpa_large_scores(worker, reference):
    """attention stays finite when scores are in the hundreds: a stable softmax is used."""
    q = randn(1, 3, 8, seed=1031, dtype=F32, scale=25.0)
    k = randn(1, 3, 8, seed=1032, dtype=F32, scale=25.0)
    v = randn(1, 3, 8, seed=1033, dtype=F32)
    _sdpa_check(worker, reference, q, k, v, "attention(q, k, v with scores in the hundreds)")


@pytest.mark.points(1)
@pytest.mark.mirrors("sdpa_half_precision")
def test_public_sdpa_float16(worker, reference):
    """attention keeps a half-precision dtype and stays accurate to it."""
    q, k, v = (randn(1, 4, 8, seed=s, dtype=F16) for s in (1034, 1035, 1036))
    _sdpa_check(worker, reference, q, k, v, "attention(q, k, v in float16)", is_causal=True)


@pytest.mark.points(2)
@pytest.mark.mirrors("sdpa_gradients")
def test_public_sdpa_gradients(worker, reference):
    """gradients flow through attention to q, k and v (no detach, no in-place on leaves)."""
    q, k, v = (randn(1, 4, 4, seed=s, dtype=F64) for s in (1037, 1038, 1039))
    grad_out = randn(1, 4, 4, seed=1040, dtype=F64)

    def grads(s):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        s.attention.scaled_dot_product_attention(*leaves, is_causal=True).backward(grad_out)
        return [t.grad for t in leaves]

    expected = reference(grads)
    got = worker.adapters.function_grads("attention.scaled_dot_product_attention", [q, k, v],
                      {"is_causal": True}, grad_out)
    for index, name in enumerate(("dq", "dk", "dv")):
        check_tensor(got["input_grads"][index], expected[index], f"{name} of causal attention", n_terms=4)


# ---------------------------------------------------------------------------------------
# repeat_kv
# ---------------------------------------------------------------------------------------
@pytest.mark.points(1)
@pytest.mark.mirrors("repeat_kv")
@pytest.mark.parametrize("n_rep", [1, 2])
def test_public_repeat_kv(worker, reference, n_rep):
    """repeat_kv repeats each key/value head in place: output head h is input head h // n_rep."""
    x = randn(1, 3, 2, 4, seed=1041, dtype=F32)
    expected = reference(lambda s: s.attention.repeat_kv(x, n_rep))
    known = reference.mistakes(lambda s: s.mistakes.repeat_kv_mistakes(x, n_rep))
    got = worker.call("attention.repeat_kv", x, n_rep)
    check_tensor(got, expected, f"repeat_kv(x (1, 3, 2, 4), n_rep={n_rep})", exact=True, mistakes=known)


# ---------------------------------------------------------------------------------------
# MultiHeadAttention
# ---------------------------------------------------------------------------------------
MHA_CONFIGS = {
    "mha-4-heads": dict(d_model=16, n_heads=4),
    "gqa-4-2-bias": dict(d_model=16, n_heads=4, n_kv_heads=2, bias=True),
    "mqa-3-1": dict(d_model=12, n_heads=3, n_kv_heads=1),
}


def _mha_weights(reference, config, seed, dtype=F64):
    from autograder.inputs import random_state_dict

    return reference(lambda s: random_state_dict(s.attention.MultiHeadAttention(**config).to(dtype), seed=seed))


def _mha_check(worker, reference, config, x, what, seed=1050, **kwargs):
    state = _mha_weights(reference, config, seed, x.dtype)

    def forward(s):
        module = s.attention.MultiHeadAttention(**config).double()
        module.load_state_dict(state)
        with torch.no_grad():
            return module(x.double(), **{k: (v.double() if k == "context" else v) for k, v in kwargs.items()})

    expected = reference(forward)
    known = reference.mistakes(lambda s: s.mistakes.mha_mistakes(state, config, x, **kwargs))
    got = worker.adapters.module_forward("attention.MultiHeadAttention", config, state, [x], kwargs, dtype=x.dtype)
    check_tensor(got["out"] if isinstance(got, dict) else got, expected, what, dtype=x.dtype,
                 n_terms=config["d_model"], mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("mha_parameters")
@pytest.mark.parametrize("config", ["gqa-4-2-bias"])
def test_public_mha_parameters(worker, reference, config):
    """MultiHeadAttention has q_proj, k_proj, v_proj, o_proj with the API's shapes."""
    cfg = MHA_CONFIGS[config]
    expected = reference(lambda s: {n: list(p.shape) for n, p in s.attention.MultiHeadAttention(**cfg).named_parameters()})
    expected = {n: tuple(shape) for n, shape in expected.items()}
    got = worker.adapters.module_parameters("attention.MultiHeadAttention", cfg)
    params = {name: tuple(info["shape"]) for name, info in got["parameters"].items()}
    assert params == expected, f"MultiHeadAttention({cfg}) parameters: expected {expected}, got {params}"


@pytest.mark.points(2)
@pytest.mark.mirrors("mha_forward")
@pytest.mark.parametrize("config", MHA_CONFIGS)
def test_public_mha_forward(worker, reference, config):
    """self-attention output matches the reference with the same weights (MHA, GQA, MQA)."""
    cfg = MHA_CONFIGS[config]
    x = randn(2, 4, cfg["d_model"], seed=1051, dtype=F64)
    _mha_check(worker, reference, cfg, x, f"MultiHeadAttention({cfg})(x)")


@pytest.mark.points(2)
@pytest.mark.mirrors("mha_causal")
def test_public_mha_causal(worker, reference):
    """causal self-attention with grouped-query heads matches the reference."""
    cfg = MHA_CONFIGS["gqa-4-2-bias"]
    x = randn(2, 5, cfg["d_model"], seed=1052, dtype=F64)
    _mha_check(worker, reference, cfg, x, f"MultiHeadAttention({cfg})(x, is_causal=True)", is_causal=True)


@pytest.mark.points(1)
@pytest.mark.mirrors("mha_padding_mask")
def test_public_mha_padding_mask(worker, reference):
    """a padding mask (b, 1, 1, n) reaches every head."""
    cfg = MHA_CONFIGS["mha-4-heads"]
    x = randn(2, 4, cfg["d_model"], seed=1053, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    _mha_check(worker, reference, cfg, x, "MultiHeadAttention(...)(x, mask=padding)", mask=mask)


@pytest.mark.points(2)
@pytest.mark.mirrors("mha_cross_attention")
def test_public_mha_cross_attention(worker, reference):
    """cross-attention: queries from x, keys and values from a context of another length."""
    cfg = MHA_CONFIGS["gqa-4-2-bias"]
    x = randn(2, 2, cfg["d_model"], seed=1054, dtype=F64)
    context = randn(2, 6, cfg["d_model"], seed=1055, dtype=F64)
    _mha_check(worker, reference, cfg, x, f"MultiHeadAttention({cfg})(x, context=...)", context=context)


@pytest.mark.points(1)
@pytest.mark.mirrors("mha_float32")
def test_public_mha_float32(worker, reference):
    """MultiHeadAttention runs in float32 and matches to float32 precision."""
    cfg = MHA_CONFIGS["gqa-4-2-bias"]
    x = randn(2, 3, cfg["d_model"], seed=1056, dtype=F32)
    _mha_check(worker, reference, cfg, x, "MultiHeadAttention(...) in float32", is_causal=True)


@pytest.mark.points(2)
@pytest.mark.mirrors("mha_gradients")
def test_public_mha_gradients(worker, reference):
    """gradients w.r.t. the input and every weight match the reference."""
    cfg = MHA_CONFIGS["gqa-4-2-bias"]
    state = _mha_weights(reference, cfg, 1057)
    x = randn(1, 3, cfg["d_model"], seed=1058, dtype=F64)
    grad_out = randn(1, 3, cfg["d_model"], seed=1059, dtype=F64)

    def grads(s):
        module = s.attention.MultiHeadAttention(**cfg).double()
        module.load_state_dict(state)
        x_ = x.clone().requires_grad_(True)
        module(x_, is_causal=True).backward(grad_out)
        return {"x": x_.grad, **{n: p.grad for n, p in module.named_parameters()}}

    expected = reference(grads)
    got = worker.adapters.module_forward("attention.MultiHeadAttention", cfg, state, [x], {"is_causal": True},
                      dtype=F64, grad_output=grad_out)
    check_tensor(got["input_grads"][0], expected["x"], "d(output)/d(x)", n_terms=cfg["d_model"])
    for name, grad in ((n, g) for n, g in expected.items() if n != "x"):
        check_tensor(got["param_grads"].get(name), grad, f"gradient of {name}", n_terms=cfg["d_model"])
