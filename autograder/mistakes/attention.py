"""Known mistakes of exercises/attention.py: softmax, causal_mask, scaled_dot_product_attention, repeat_kv and
MultiHeadAttention.
Each yields (the sentence a student reads, the wrong value for the same inputs)."""
from __future__ import annotations

import math

import torch

from . import linear, query_key_positions

NO_SCALE = "the scores are not scaled by 1/sqrt(d_k)"
SCALE_BY_DK = "the scores are divided by d_k instead of sqrt(d_k)"
SOFTMAX_AXIS = ("the softmax runs over the wrong axis: over queries (dim=-2) instead of over "
                "keys (dim=-1); each query's weights must sum to 1")
CAUSAL_REVERSED = ("the causal mask is reversed: queries attend to later keys; a token may only "
                   "see itself and earlier tokens (True on and below the diagonal)")
CAUSAL_STRICT = ("the causal mask excludes the diagonal: a token must be able to attend to "
                 "itself (key position <= query position)")
CAUSAL_NO_OFFSET = ("the causal mask ignores the offset: with n_q < n_k (decoding with a cache) "
                    "query i sits at position n_k - n_q + i, so the last query sees every key")
MASK_INVERTED = "the mask is inverted: in this course True means 'may attend'"
NAN_ROWS = ("rows where every key is masked give NaN; they must give zeros (guard the "
            "max and the sum in softmax)")
GQA_TILED = ("key/value heads are tiled [k0, k1, k0, k1] instead of repeated in place "
             "[k0, k0, k1, k1]: query head h must read key/value head h // (n_heads // n_kv_heads)")
SPLIT_NO_TRANSPOSE = ("heads are split with view(b, h, s, head_dim) instead of "
                      "view(b, s, h, head_dim).transpose(1, 2), which mixes positions into heads")
MERGE_NO_TRANSPOSE = ("heads are merged with reshape(b, s, d) straight from (b, h, s, head_dim); "
                      "transpose(1, 2) back to (b, s, h, head_dim) first")
NO_O_PROJ = "the output projection o_proj is not applied after merging the heads"
SOFTMAX_NO_MAX = ("exp overflows for large inputs: subtract the row maximum before exp "
                  "(softmax is unchanged by it)")
SOFTMAX_NOT_NORMALISED = "the exponentials are not divided by their sum"


def _naive_softmax(x, dim):
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def _overflows(naive, stable_with_nan_rows):
    """Whether a softmax without the max shows itself on this input: inf or NaN where the
    stable softmax (NaN only on rows without any key) is finite. Where it does not, its only
    NaN are the all-masked rows, and those are the all-masked-rows mistake, not overflow."""
    return bool((~torch.isfinite(naive) & torch.isfinite(stable_with_nan_rows)).any())


def softmax_mistakes(x, dim=-1):
    for other in range(x.dim()):
        if other != dim % x.dim():
            yield f"softmax over dim={other} instead of dim={dim}", torch.softmax(x.double(), dim=other)
    naive = _naive_softmax(x, dim)  # in x's own dtype, so it overflows like one
    nan_rows = torch.softmax(x.double(), dim=dim)
    if _overflows(naive, nan_rows):  # else an all -inf row gives both the same NaN (issue 16)
        yield SOFTMAX_NO_MAX, naive
    yield NAN_ROWS, nan_rows
    yield SOFTMAX_NOT_NORMALISED, torch.exp(x.double() - x.double().amax(dim=dim, keepdim=True))


def causal_mask_mistakes(n_q, n_k=None, **_):
    n_k = n_q if n_k is None else n_k
    query, key = query_key_positions(n_q, n_k)
    yield CAUSAL_REVERSED, key >= query
    yield CAUSAL_STRICT, key < query
    if n_q != n_k:
        yield CAUSAL_NO_OFFSET, torch.ones(n_q, n_k, dtype=torch.bool).tril()
        yield CAUSAL_NO_OFFSET, torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q).logical_not()


def _attend(q, k, v, allowed=None, scale=None, softmax_dim=-1, nan_rows=False):
    """Attention in float64 with the knobs that plausible mistakes turn."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.double() @ k.double().transpose(-2, -1)) * scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=softmax_dim)
    if not nan_rows:
        weights = torch.nan_to_num(weights, nan=0.0)
    return weights @ v.double()


def _allowed(mask, causal, n_q, n_k, causal_variant=None):
    query, key = query_key_positions(n_q, n_k)
    causal_allowed = {None: key <= query, "reversed": key >= query, "strict": key < query,
                      "no_offset": torch.ones(n_q, n_k, dtype=torch.bool).tril()}[causal_variant]
    allowed = mask
    if causal:
        allowed = causal_allowed if allowed is None else allowed & causal_allowed
    return allowed


def sdpa_mistakes(q, k, v, mask=None, is_causal=False, scale=None):
    n_q, n_k = q.shape[-2], k.shape[-2]
    allowed = _allowed(mask, is_causal, n_q, n_k)
    if scale is None:
        yield NO_SCALE, _attend(q, k, v, allowed, scale=1.0)
        yield SCALE_BY_DK, _attend(q, k, v, allowed, scale=1 / q.shape[-1])
    yield SOFTMAX_AXIS, _attend(q, k, v, allowed, scale, softmax_dim=-2)
    yield NAN_ROWS, _attend(q, k, v, allowed, scale, nan_rows=True)
    if is_causal:
        variants = [("reversed", CAUSAL_REVERSED), ("strict", CAUSAL_STRICT)]
        if n_q != n_k:
            variants.append(("no_offset", CAUSAL_NO_OFFSET))
        for variant, text in variants:
            yield text, _attend(q, k, v, _allowed(mask, True, n_q, n_k, variant), scale)
    if mask is not None:
        yield MASK_INVERTED, _attend(q, k, v, _allowed(~mask, is_causal, n_q, n_k), scale)
    naive = _naive_sdpa(q, k, v, allowed, scale)
    if _overflows(naive, _attend(q, k, v, allowed, scale, nan_rows=True)):
        yield SOFTMAX_NO_MAX, naive


def _naive_sdpa(q, k, v, allowed, scale):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # in the caller's dtype: overflows like one
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return _naive_softmax(scores, -1) @ v


def repeat_kv_mistakes(x, n_rep):
    yield GQA_TILED, x.repeat(1, n_rep, 1, 1)


def mha_mistakes(state_dict, config, x, context=None, mask=None, is_causal=False):
    """Wrong multi-head attentions computed from the same weights (float64)."""
    base = dict(state_dict=state_dict, config=config, x=x, context=context, mask=mask,
                is_causal=is_causal)
    n_q, n_k = x.shape[1], (x if context is None else context).shape[1]
    yield SPLIT_NO_TRANSPOSE, _mha(**base, split="no_transpose")
    yield MERGE_NO_TRANSPOSE, _mha(**base, merge="no_transpose")
    n_kv = config.get("n_kv_heads") or config["n_heads"]
    if n_kv not in (1, config["n_heads"]):
        yield GQA_TILED, _mha(**base, kv_repeat="tile")
    yield NO_SCALE, _mha(**base, scale=1.0)
    yield SOFTMAX_AXIS, _mha(**base, softmax_dim=-2)
    yield NO_O_PROJ, _mha(**base, o_proj=False)
    if is_causal:
        for variant, text in [("reversed", CAUSAL_REVERSED), ("strict", CAUSAL_STRICT)]:
            yield text, _mha(**base, allowed=_allowed(mask, True, n_q, n_k, variant))
    if mask is not None:
        yield MASK_INVERTED, _mha(**base, allowed=_allowed(~mask, is_causal, n_q, n_k))


def _mha(state_dict, config, x, context, mask, is_causal, split="ok", merge="ok",
         kv_repeat="interleave", scale=None, softmax_dim=-1, o_proj=True, allowed="default"):
    n_heads = config["n_heads"]
    n_kv = config.get("n_kv_heads") or n_heads
    head_dim = config["d_model"] // n_heads
    source = x if context is None else context
    b, n_q, n_k = x.shape[0], x.shape[1], source.shape[1]

    def heads(t, n, s):
        if split == "no_transpose":
            return t.reshape(b, n, s, head_dim)
        return t.reshape(b, s, n, head_dim).transpose(1, 2)  # (b, n, s, hd)

    q = heads(linear(x, state_dict, "q_proj"), n_heads, n_q)
    k = heads(linear(source, state_dict, "k_proj"), n_kv, n_k)
    v = heads(linear(source, state_dict, "v_proj"), n_kv, n_k)
    rep = n_heads // n_kv
    if kv_repeat == "tile":
        k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)
    else:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if allowed == "default":
        allowed = _allowed(mask, is_causal, n_q, n_k)
    out = _attend(q, k, v, allowed, scale, softmax_dim)  # (b, h, n_q, hd)
    if merge == "no_transpose":
        out = out.reshape(b, n_q, n_heads * head_dim)
    else:
        out = out.transpose(1, 2).reshape(b, n_q, n_heads * head_dim)
    return linear(out, state_dict, "o_proj") if o_proj else out
