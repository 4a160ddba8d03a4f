"""Known mistakes, computed by trusted code in the grader: each yields what a plausible wrong
implementation would return for the same inputs, with the sentence a student reads when
their value matches it. ``tests/fixtures`` holds a real submission for each, and the
repository's tests prove that every one loses points and is named.
"""
from __future__ import annotations

import math

import torch

# the precision contract's named mistake (compare._precision_hint names it from the numbers)
from ..compare import FLOAT32_PART  # noqa: F401

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


def softmax_mistakes(x, dim=-1):
    for other in range(x.dim()):
        if other != dim % x.dim():
            yield f"softmax over dim={other} instead of dim={dim}", torch.softmax(x.double(), dim=other)
    yield SOFTMAX_NO_MAX, _naive_softmax(x, dim)  # in x's own dtype, so it overflows like one
    yield NAN_ROWS, torch.softmax(x.double(), dim=dim)
    yield SOFTMAX_NOT_NORMALISED, torch.exp(x.double() - x.double().amax(dim=dim, keepdim=True))


def _positions(n_q, n_k):
    query = torch.arange(n_q)[:, None] + (n_k - n_q)
    key = torch.arange(n_k)[None, :]
    return query, key


def causal_mask_mistakes(n_q, n_k=None, **_):
    n_k = n_q if n_k is None else n_k
    query, key = _positions(n_q, n_k)
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
    query, key = _positions(n_q, n_k)
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
    yield SOFTMAX_NO_MAX, _naive_sdpa(q, k, v, allowed, scale)


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


def _linear(x, state_dict, name):
    weight = state_dict[f"{name}.weight"].double()
    bias = state_dict.get(f"{name}.bias")
    out = x.double() @ weight.T
    return out if bias is None else out + bias.double()


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

    q = heads(_linear(x, state_dict, "q_proj"), n_heads, n_q)
    k = heads(_linear(source, state_dict, "k_proj"), n_kv, n_k)
    v = heads(_linear(source, state_dict, "v_proj"), n_kv, n_k)
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
    return _linear(out, state_dict, "o_proj") if o_proj else out


# ---------------------------------------------------------------------------------------
# RoPE and positional encodings
# ---------------------------------------------------------------------------------------
ROPE_OTHER_LAYOUT = {
    False: ("the half-split layout was asked for (dim i paired with i + d/2, as in GPT-NeoX and "
            "Hugging Face Llama) but the result pairs (2i, 2i+1), the interleaved layout"),
    True: ("the interleaved layout was asked for (pairs (2i, 2i+1), as in RoFormer and Meta's "
           "Llama) but the result pairs dim i with i + d/2, the half-split layout"),
}
ROPE_SIN_COS_SWAPPED = "sin and cos are swapped: out = x*cos + rotate(x)*sin"
ROPE_REVERSED = ("the rotation goes the wrong way (angle -p*theta^(-2i/d)): rotate_half is "
                 "[-x2, x1], and an interleaved pair (a, b) becomes (a cos - b sin, b cos + a sin)")
ROPE_FREQ_EXPONENT = "the frequency exponent is -i/d instead of -2i/d (i counts pairs: theta ** (-2i/d))"
ROPE_OFF_BY_ONE = "the positions are off by one"
ROPE_NOT_APPLIED = "no rotation was applied (the output equals the input)"
ROPE_POSITIONS_IGNORED = "the given positions were ignored: arange(s) was used instead"
SINUSOID_SWAPPED = "sin and cos are swapped: even dims take sin, odd dims take cos"
SINUSOID_EXPONENT = "the exponent is i/d instead of 2i/d: dims 2i and 2i+1 share the frequency 10000^(-2i/d)"
SINUSOID_HALVES = ("the encoding is laid out as [all sines | all cosines]; this course interleaves "
                   "them: even dims sin, odd dims cos")
ALIBI_NOT_POWER_OF_TWO = ("the slopes for a head count that is not a power of two follow the "
                          "closest-power-of-two rule of Press et al.: slopes(p) followed by every "
                          "other slope of slopes(2p)")
ALIBI_SIGN = "the bias has the wrong sign: it is a penalty, -slope * distance"
ALIBI_NO_OFFSET = ("the bias ignores the offset: with n_q < n_k query i sits at position "
                   "n_k - n_q + i")
ALIBI_SYMMETRIC = "future keys must get 0 (the causal mask removes them), not a penalty on |i - j|"


def rope_reference(x, positions, theta=10000.0, interleaved=False, exponent=2.0, sign=1.0,
                   swap=False, shift=0):
    """RoPE in float64, with the knobs that plausible mistakes turn (all off: the truth)."""
    d = x.shape[-1]
    half = d // 2
    inv_freq = float(theta) ** (-exponent * torch.arange(half, dtype=torch.float64) / d)
    angles = (positions.to(torch.float64) + shift)[..., None] * inv_freq  # (..., s, d/2)
    cos, sin = angles.cos(), sign * angles.sin()
    if swap:
        cos, sin = sin, cos
    x = x.double()
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rope_mistakes(x, positions, theta=10000.0, interleaved=False):
    kw = dict(theta=theta, interleaved=interleaved)
    yield ROPE_OTHER_LAYOUT[interleaved], rope_reference(x, positions, theta, not interleaved)
    yield ROPE_SIN_COS_SWAPPED, rope_reference(x, positions, **kw, swap=True)
    yield ROPE_REVERSED, rope_reference(x, positions, **kw, sign=-1.0)
    yield ROPE_FREQ_EXPONENT, rope_reference(x, positions, **kw, exponent=1.0)
    yield ROPE_OFF_BY_ONE, rope_reference(x, positions, **kw, shift=1)
    yield ROPE_OFF_BY_ONE, rope_reference(x, positions, **kw, shift=-1)
    yield ROPE_NOT_APPLIED, x.double()
    s = x.shape[-2]
    yield ROPE_POSITIONS_IGNORED, rope_reference(x, torch.arange(s), **kw)


def rope_cos_sin_reference(head_dim, positions, theta=10000.0, exponent=2.0, shift=0):
    half = head_dim // 2
    inv_freq = float(theta) ** (-exponent * torch.arange(half, dtype=torch.float64) / head_dim)
    angles = (positions.to(torch.float64) + shift)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rope_cos_sin_mistakes(head_dim, positions, theta=10000.0, which=0):
    """Wrong cos (which=0) or sin (which=1) tables."""
    yield ROPE_FREQ_EXPONENT, rope_cos_sin_reference(head_dim, positions, theta, exponent=1.0)[which]
    yield ROPE_OFF_BY_ONE, rope_cos_sin_reference(head_dim, positions, theta, shift=1)[which]
    yield ROPE_SIN_COS_SWAPPED, rope_cos_sin_reference(head_dim, positions, theta)[1 - which]
    cos, sin = rope_cos_sin_reference(head_dim, positions, theta)
    interleaved = (cos, sin)[which][..., : head_dim // 2].repeat_interleave(2, dim=-1)
    yield ROPE_OTHER_LAYOUT[False], interleaved


def sinusoidal_reference(max_len, d_model, exponent=2.0, swap=False, halves=False):
    position = torch.arange(max_len, dtype=torch.float64)[:, None]
    n_sin, n_cos = (d_model + 1) // 2, d_model // 2
    i = torch.arange(n_sin, dtype=torch.float64)
    angles = position * 10000.0 ** (-exponent * i / d_model)  # (max_len, ceil(d/2))
    first, second = (torch.cos, torch.sin) if swap else (torch.sin, torch.cos)
    if halves:
        return torch.cat([first(angles), second(angles[:, :n_cos])], dim=-1)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = first(angles)
    pe[:, 1::2] = second(angles[:, :n_cos])
    return pe


def sinusoidal_mistakes(max_len, d_model):
    yield SINUSOID_SWAPPED, sinusoidal_reference(max_len, d_model, swap=True)
    yield SINUSOID_EXPONENT, sinusoidal_reference(max_len, d_model, exponent=1.0)
    yield SINUSOID_HALVES, sinusoidal_reference(max_len, d_model, halves=True)


def _geometric_slopes(n):
    start = 2.0 ** (-8.0 / n)
    return torch.tensor([start ** (i + 1) for i in range(n)], dtype=torch.float64)


def alibi_slopes_mistakes(n_heads):
    yield ALIBI_NOT_POWER_OF_TWO, _geometric_slopes(n_heads)
    p = 2 ** math.floor(math.log2(n_heads))
    if p != n_heads:  # extra heads taken from the start of slopes(2p) without skipping
        yield ALIBI_NOT_POWER_OF_TWO, torch.cat([_geometric_slopes(p), _geometric_slopes(2 * p)[: n_heads - p]])


def alibi_bias_mistakes(n_heads, n_q, n_k, slopes):
    query = torch.arange(n_q)[:, None] + (n_k - n_q)
    key = torch.arange(n_k)[None, :]
    distance = (query - key).clamp_min(0).double()
    slopes = slopes.double()[:, None, None]
    yield ALIBI_SIGN, slopes * distance
    no_offset = (torch.arange(n_q)[:, None] - key).clamp_min(0).double()
    if n_q != n_k:
        yield ALIBI_NO_OFFSET, -slopes * no_offset
    yield ALIBI_SYMMETRIC, -slopes * (query - key).abs().double()


# ---------------------------------------------------------------------------------------
# Norms, activations, feed-forward networks
# ---------------------------------------------------------------------------------------
LN_UNBIASED = "the variance is unbiased (divides by d - 1); LayerNorm uses the biased variance (divide by d)"
LN_EPS_OUTSIDE = "eps is added outside the square root: (x - mean) / (sqrt(var) + eps); it goes inside, sqrt(var + eps)"
LN_NO_AFFINE = "the learned weight and bias are not applied after normalising"
RMS_MEAN = "the mean is subtracted: RMSNorm only divides by the root mean square, x / sqrt(mean(x^2) + eps)"
RMS_EPS_OUTSIDE = "eps is added outside the square root: x / (sqrt(mean(x^2)) + eps)"
NORM_EPS_IGNORED = "the eps argument is ignored (a fixed value is used)"
GELU_EXACT = ("this is the exact GELU, x * Phi(x) with erf; GPT-2 uses the tanh approximation "
              "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")
RELU = "this is ReLU; the course's FeedForward uses GELU (tanh approximation)"
SWIGLU_SWAPPED = "the SwiGLU branches are swapped: silu goes on gate_proj(x), not on up_proj(x)"
SILU_WRONG = "SiLU is x * sigmoid(x)"


def layernorm_mistakes(x, weight, bias, eps):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    w, b = weight.double(), bias.double()
    yield LN_UNBIASED, (x - mean) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps) * w + b
    yield LN_EPS_OUTSIDE, (x - mean) / (torch.sqrt(var) + eps) * w + b
    yield LN_NO_AFFINE, (x - mean) / torch.sqrt(var + eps)
    for other in (1e-5, 1e-6, 1e-12):
        if other != eps:
            yield NORM_EPS_IGNORED, (x - mean) / torch.sqrt(var + other) * w + b


def rmsnorm_mistakes(x, weight, eps):
    x, w = x.double(), weight.double()
    centred = x - x.mean(-1, keepdim=True)
    yield RMS_MEAN, centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * w
    yield RMS_EPS_OUTSIDE, x / (torch.sqrt(x.pow(2).mean(-1, keepdim=True)) + eps) * w
    for other in (1e-5, 1e-6):
        if other != eps:
            yield NORM_EPS_IGNORED, x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + other) * w


def gelu_mistakes(x):
    yield GELU_EXACT, torch.nn.functional.gelu(x.double())
    yield RELU, torch.relu(x.double())


def silu_mistakes(x):
    yield SILU_WRONG, torch.sigmoid(x.double())
    yield SILU_WRONG, x.double() * torch.tanh(x.double())


def feedforward_mistakes(state, x):
    h = _linear(x, state, "fc1")
    yield GELU_EXACT, _linear(torch.nn.functional.gelu(h), state, "fc2")
    yield RELU, _linear(torch.relu(h), state, "fc2")


def swiglu_mistakes(state, x):
    gate, up = _linear(x, state, "gate_proj"), _linear(x, state, "up_proj")
    yield SWIGLU_SWAPPED, _linear(torch.nn.functional.silu(up) * gate, state, "down_proj")
    yield GELU_EXACT, _linear(torch.nn.functional.gelu(gate) * up, state, "down_proj")


# ---------------------------------------------------------------------------------------
# Decoder block and GPT (computed with the reference's own modules, in float64)
# ---------------------------------------------------------------------------------------
PRE_POST_SWAPPED = {
    True: ("this is a Post-LN block (x = norm(x + sublayer(x))) but the config asks for Pre-LN: "
           "x = x + attn(norm1(x)); x = x + ffn(norm2(x))"),
    False: ("this is a Pre-LN block (x = x + sublayer(norm(x))) but the config asks for Post-LN "
            "(prenorm=False): x = norm1(x + attn(x)); x = norm2(x + ffn(x))"),
}
NO_ATTN_RESIDUAL = "the residual connection around the attention is missing (x + attn(...))"
NO_FFN_RESIDUAL = "the residual connection around the feed-forward network is missing (x + ffn(...))"
NOT_CAUSAL = "the self-attention is not causal: later tokens leak into earlier positions (is_causal=True)"
NORMS_SWAPPED = "norm1 and norm2 are used the wrong way round (norm1 before attention, norm2 before the FFN)"
UNTIED = "the output head is not tied to the token embedding: lm_head.weight must be tok_emb.weight"
NO_FINAL_NORM = "the final norm norm_f is not applied before lm_head"
NO_POSITIONS = "the learned position embedding pos_emb is not added to the token embedding"


def _block_variant(block, x, *, prenorm=None, attn_residual=True, ffn_residual=True, causal=True,
                   swap_norms=False):
    prenorm = block.config.prenorm if prenorm is None else prenorm
    n1, n2 = (block.norm2, block.norm1) if swap_norms else (block.norm1, block.norm2)

    def attn(h):
        return block.attn(h, is_causal=causal)

    if prenorm:
        x = (x if attn_residual else 0) + attn(n1(x))
        return (x if ffn_residual else 0) + block.ffn(n2(x))
    x = n1((x if attn_residual else 0) + attn(x))
    return n2((x if ffn_residual else 0) + block.ffn(x))


def block_mistakes(block, x):
    """``block``: the reference DecoderBlock in float64 with the test's weights."""
    x = x.double()
    with torch.no_grad():
        yield PRE_POST_SWAPPED[block.config.prenorm], _block_variant(block, x, prenorm=not block.config.prenorm)
        yield NO_ATTN_RESIDUAL, _block_variant(block, x, attn_residual=False)
        yield NO_FFN_RESIDUAL, _block_variant(block, x, ffn_residual=False)
        yield NOT_CAUSAL, _block_variant(block, x, causal=False)
        yield NORMS_SWAPPED, _block_variant(block, x, swap_norms=True)


def gpt_mistakes(model, idx):
    """``model``: the reference GPT in float64 with the test's weights."""
    positions = torch.arange(idx.shape[1])

    def run(h, final_norm=True):
        for block in model.blocks:
            h = block(h, positions=positions)
        return model.lm_head(model.norm_f(h) if final_norm else h)

    with torch.no_grad():
        tokens = model.tok_emb(idx)
        with_positions = tokens + model.pos_emb(positions) if model.pos_emb is not None else tokens
        yield NO_FINAL_NORM, run(with_positions, final_norm=False)
        if model.pos_emb is not None:
            yield NO_POSITIONS, run(tokens)


# ---------------------------------------------------------------------------------------
# FlashAttention
# ---------------------------------------------------------------------------------------
FA_NO_RESCALE = ("the accumulator is not rescaled when the running maximum changes: "
                 "O = diag(exp(m_old - m_new)) O + P V_j")
FA_L_NO_RESCALE = "the running sum is not rescaled when the maximum changes: l = exp(m_old - m_new) l + rowsum(P)"
FA_LSE_NO_LOG_L = "lse is missing the log(l) term: lse = m + log(l)"
FA_DIAGONAL = ("the diagonal tile is masked wrongly: a query sees keys at positions <= its own "
               "(n_k - n_q + i), including itself")
FA_SCALE_TWICE = "the scale 1/sqrt(d) is applied twice"
FA_NO_SCALE = "the scores are not scaled by 1/sqrt(d)"
FA_D_MISSING = "the backward pass misses D = rowsum(dO * O): dS = P * (dP - D)"


def flash_reference(q, k, v, is_causal=False, block_q=64, block_k=64, rescale_acc=True, rescale_l=True,
                    log_l=True, diagonal="ok", scale_power=1):
    """A float64 tiled forward with the knobs that plausible mistakes turn; (o, lse)."""
    q, k, v = q.double(), k.double(), v.double()
    n_q, d = q.shape[-2:]
    n_k = k.shape[-2]
    scale = (1 / math.sqrt(d)) ** scale_power
    o = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float64)
    for i0 in range(0, n_q, block_q):
        i1 = min(i0 + block_q, n_q)
        m = torch.full(q[..., i0:i1, 0].shape, float("-inf"), dtype=torch.float64)
        l = torch.zeros_like(m)
        acc = torch.zeros(*m.shape, v.shape[-1], dtype=torch.float64)
        for j0 in range(0, n_k, block_k):
            j1 = min(j0 + block_k, n_k)
            s = q[..., i0:i1, :] @ k[..., j0:j1, :].transpose(-1, -2) * scale
            if is_causal:
                query_pos = torch.arange(i0, i1)[:, None] + (n_k - n_q)
                key_pos = torch.arange(j0, j1)[None, :]
                allowed = key_pos < query_pos if diagonal == "strict" else key_pos <= query_pos
                s = s.masked_fill(~allowed, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            shift = m_new.clamp_min(-1e308)
            p = torch.exp(s - shift[..., None])
            alpha = torch.exp(m - shift)
            l = (alpha * l if rescale_l else l) + p.sum(-1)
            acc = (alpha[..., None] * acc if rescale_acc else acc) + p @ v[..., j0:j1, :]
            m = m_new
        o[..., i0:i1, :] = acc / l.clamp_min(1e-308)[..., None]
        lse[..., i0:i1] = m + torch.log(l) if log_l else m
    return o, lse


def flash_forward_mistakes(q, k, v, is_causal, block_q, block_k, which):
    """Wrong o (which=0) or lse (which=1) for the same tiles."""
    base = dict(is_causal=is_causal, block_q=block_q, block_k=block_k)
    yield FA_NO_RESCALE, flash_reference(q, k, v, **base, rescale_acc=False)[which]
    yield FA_L_NO_RESCALE, flash_reference(q, k, v, **base, rescale_l=False)[which]
    if which == 1:
        yield FA_LSE_NO_LOG_L, flash_reference(q, k, v, **base, log_l=False)[1]
    if is_causal:
        yield FA_DIAGONAL, flash_reference(q, k, v, **base, diagonal="strict")[which]
    yield FA_SCALE_TWICE, flash_reference(q, k, v, **base, scale_power=2)[which]
    yield FA_NO_SCALE, flash_reference(q, k, v, **base, scale_power=0)[which]


def flash_backward_mistakes(q, k, v, is_causal, grad_o, which):
    """Gradients (which: 0 dq, 1 dk, 2 dv) of the backward without the D term."""
    q, k, v, grad_o = q.double(), k.double(), v.double(), grad_o.double()
    n_q, d = q.shape[-2:]
    n_k = k.shape[-2]
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if is_causal:
        s = s.masked_fill(torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q), float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, -1))
    dp = grad_o @ v.transpose(-1, -2)
    ds = p * dp  # the mistake: no "- D"
    grads = (ds @ k / math.sqrt(d), ds.transpose(-1, -2) @ q / math.sqrt(d), p.transpose(-1, -2) @ grad_o)
    if which < 2:
        yield FA_D_MISSING, grads[which]
