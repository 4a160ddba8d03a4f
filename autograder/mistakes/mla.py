"""Known mistakes of exercises/mla.py (Multi-head Latent Attention), computed by trusted code
in the grader: ``mla_reference`` is MLA in float64 from a state dict, with the knobs that
plausible wrong implementations turn (all off: the truth; tests/test_mla_parity.py checks
it against Hugging Face's DeepseekV3Attention), and each sentence is what a student reads
when their value matches one of them.
"""
from __future__ import annotations

import math

import torch

from . import rope_reference

ROPE_ON_NOPE = ("RoPE was applied to the nope part of q and k too: only the rope part (the last "
                "qk_rope_head_dim dims of each head, and the one shared k_rope) is rotated; the nope "
                "part carries no position, which is what lets kv_b_proj be absorbed")
K_ROPE_PER_HEAD = ("the rope key is built per head: kv_a_proj_with_mqa gives ONE k_rope of "
                   "qk_rope_head_dim dims (after the latent), shared by every head, as in multi-query "
                   "attention (its output is kv_lora_rank + qk_rope_head_dim wide)")
ABSORB_EXPANDS = ("absorb=True still formed the per-head keys or values of every cached position "
                  "(kv_b_proj applied to the cached latent, or as much memory): multiply q_nope into "
                  "kv_b_proj's key rows and the attention output into its value rows instead, and attend "
                  "over the latent (b, n_k, kv_lora_rank) itself")
CACHE_EXPANDED = ("the cache was handed expanded keys/values: MLA caches only the latent "
                  "(b, s, kv_lora_rank, after kv_a_layernorm) and the rotated shared key "
                  "(b, s, qk_rope_head_dim); per-head keys and values are recomputed from them")
SCALE_NOPE = ("the scores are scaled by 1/sqrt(qk_nope_head_dim): q and k are "
              "qk_nope_head_dim + qk_rope_head_dim wide, so the scale is 1/sqrt(nope + rope)")
SCALE_V = ("the scores are scaled by 1/sqrt(v_head_dim): the scale comes from the width of q and k, "
           "1/sqrt(qk_nope_head_dim + qk_rope_head_dim)")
KV_B_SWAPPED = ("kv_b_proj's rows are read as [v | k_nope] per head; the layout is [k_nope | v] "
                "(qk_nope_head_dim key rows first, then v_head_dim value rows, head after head)")
NO_LATENT_NORM = ("kv_a_layernorm is not applied to the latent: the latent (the first kv_lora_rank "
                  "outputs of kv_a_proj_with_mqa) is normalised before kv_b_proj and before caching")
ROPE_INTERLEAVED = ("RoPE pairs dims (2i, 2i+1) (interleaved); MLA here uses the half-split layout of "
                    "apply_rope's default (dim i with i + d/2), as Hugging Face's DeepSeek-V3 with "
                    "rope_interleave=False")
NO_Q_NORM = "q_a_layernorm is not applied between q_a_proj and q_b_proj (the low-rank query path)"
NOT_CAUSAL = ("the attention is not causal: query i (at position n_k - n_q + i) may only attend to keys at "
              "positions <= its own")
NO_OFFSET = ("positions were not offset by the cache length: with a cache holding P positions the new "
             "tokens sit at P, P + 1, ... (default positions arange(cache.seq_len, cache.seq_len + s))")
POSITIONS_IGNORED = "the given positions were ignored: arange(s) was used instead"
CACHED_BEFORE_ROPE = ("k_rope was cached before RoPE: the cache holds the rotated k_rope (rotated once, at "
                      "its own position), so a cached key never needs its position again")
CACHED_BEFORE_NORM = ("the latent was cached before kv_a_layernorm: the cache holds the normalised latent, "
                      "the input of kv_b_proj")


def _linear(x, state_dict, name):
    return x.double() @ state_dict[f"{name}.weight"].double().T


def _rms(x, weight, eps):
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.double()


def _rope(x, positions, theta, interleaved):
    return rope_reference(x, positions, theta, interleaved)


def mla_reference(state_dict, config, x, positions=None, past=None, *, rope_nope=False, scale=None,
                  kv_layout="k_v", latent_norm=True, interleaved=False, q_norm=True, causal=True,
                  parts=False):
    """MLA in float64. ``config``: the module's init kwargs. ``past``: (latent, k_rope) already
    cached, (b, P, r) and (b, P, rope), as a correct cache holds them; new tokens then sit at
    P, P + 1, ... unless ``positions`` says otherwise. With ``parts`` also returns what the new
    tokens add to the cache: (out, latent_new, k_rope_new)."""
    h, r = config["n_heads"], config["kv_lora_rank"]
    nope, rope, dv = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    theta, eps = config.get("rope_theta", 10000.0), config.get("norm_eps", 1e-6)
    x = x.double()
    b, s, _ = x.shape
    n_past = 0 if past is None else past[0].shape[1]
    if positions is None:
        positions = torch.arange(n_past, n_past + s)
    head_positions = positions[:, None, :] if positions.dim() == 2 else positions
    if config.get("q_lora_rank") is None:
        q = _linear(x, state_dict, "q_proj")
    else:
        q = _linear(x, state_dict, "q_a_proj")
        if q_norm:
            q = _rms(q, state_dict["q_a_layernorm.weight"], eps)
        q = _linear(q, state_dict, "q_b_proj")
    q = q.view(b, s, h, nope + rope).transpose(1, 2)  # (b, h, s, nope + rope)
    q_nope, q_rope = q.split([nope, rope], dim=-1)
    latent, k_rope = _linear(x, state_dict, "kv_a_proj_with_mqa").split([r, rope], dim=-1)
    if latent_norm:
        latent = _rms(latent, state_dict["kv_a_layernorm.weight"], eps)
    q_rope = _rope(q_rope, head_positions, theta, interleaved)
    k_rope = _rope(k_rope, positions, theta, interleaved)
    new_latent, new_rope = latent, k_rope
    key_positions = positions
    if past is not None:
        latent = torch.cat([past[0].double(), latent], dim=1)
        k_rope = torch.cat([past[1].double(), k_rope], dim=1)
    n_k = latent.shape[1]
    kv = _linear(latent, state_dict, "kv_b_proj").view(b, n_k, h, nope + dv).transpose(1, 2)
    if kv_layout == "k_v":
        k_nope, v = kv.split([nope, dv], dim=-1)
    else:  # [v | k_nope]
        v, k_nope = kv.split([dv, nope], dim=-1)
    if rope_nope:  # only meaningful without a past: every key's position is known
        q_nope = _rope(q_nope, head_positions, theta, interleaved)
        k_nope = _rope(k_nope, key_positions[:, None, :] if key_positions.dim() == 2 else key_positions,
                       theta, interleaved)
    scores = q_nope @ k_nope.transpose(-2, -1) + q_rope @ k_rope[:, None].transpose(-2, -1)  # (b, h, s, n_k)
    scores = scores * (1 / math.sqrt(nope + rope) if scale is None else scale)
    if causal:
        query = torch.arange(s)[:, None] + (n_k - s)
        scores = scores.masked_fill(torch.arange(n_k)[None, :] > query, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (b, h, s, dv)
    out = _linear(out.transpose(1, 2).reshape(b, s, h * dv), state_dict, "o_proj")
    return (out, new_latent, new_rope) if parts else out


def mla_mistakes(state_dict, config, x, positions=None, past=None):
    """Wrong outputs from the same weights and inputs (float64), each with its sentence."""
    base = dict(state_dict=state_dict, config=config, x=x, positions=positions, past=past)
    nope, rope, dv = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    if past is None and nope % 2 == 0:
        yield ROPE_ON_NOPE, mla_reference(**base, rope_nope=True)
    yield SCALE_NOPE, mla_reference(**base, scale=1 / math.sqrt(nope))
    if dv != nope + rope:
        yield SCALE_V, mla_reference(**base, scale=1 / math.sqrt(dv))
    yield KV_B_SWAPPED, mla_reference(**base, kv_layout="v_k")
    yield NO_LATENT_NORM, mla_reference(**base, latent_norm=False)
    yield ROPE_INTERLEAVED, mla_reference(**base, interleaved=True)
    if config.get("q_lora_rank") is not None:
        yield NO_Q_NORM, mla_reference(**base, q_norm=False)
    yield NOT_CAUSAL, mla_reference(**base, causal=False)
    if positions is not None:
        yield POSITIONS_IGNORED, mla_reference(**{**base, "positions": torch.arange(x.shape[1])})


def cache_content_mistakes(state_dict, config, x, positions, which):
    """What a wrong forward hands the cache for the new tokens: ``which`` 0 is the latent, 1 k_rope."""
    _, latent, k_rope = mla_reference(state_dict, config, x, positions, parts=True)
    if which == 0:
        raw = _linear(x, state_dict, "kv_a_proj_with_mqa")[..., :config["kv_lora_rank"]]
        yield CACHED_BEFORE_NORM, raw
    else:
        raw = _linear(x, state_dict, "kv_a_proj_with_mqa")[..., config["kv_lora_rank"]:]
        yield CACHED_BEFORE_ROPE, raw
        yield ROPE_INTERLEAVED, mla_reference(state_dict, config, x, positions, interleaved=True, parts=True)[2]
