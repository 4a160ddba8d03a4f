"""Load Hugging Face GPT-2 and Llama weights into the course's ``GPT``.

Two traps this handles:
- GPT-2 stores its projections as ``Conv1D`` with weights of shape (in, out); ``nn.Linear``
  wants (out, in), so every GPT-2 matrix is transposed.
- GPT-2's ``c_attn`` holds the query, key and value projections side by side (q | k | v):
  it is split in three along its output dim.
Llama's weights are already ``nn.Linear`` in the half-split RoPE layout that
``apply_rope`` uses by default (Meta's original checkpoints use the interleaved layout and
are permuted by Hugging Face's conversion script).

Usage: ``model = from_hugging_face(hf_model)`` (a ``GPT2LMHeadModel`` or ``LlamaForCausalLM``).
"""
from __future__ import annotations

import torch

from .decoder_block import BlockConfig
from .gpt import GPT, GPTConfig


def config_from_hugging_face(hf_config) -> GPTConfig:
    """A ``GPTConfig`` with the same architecture as a Hugging Face GPT-2 or Llama config."""
    if hf_config.model_type == "gpt2":
        if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT-2 activation {hf_config.activation_function!r}: the course "
                             f"FeedForward uses the tanh GELU")
        block = BlockConfig(d_model=hf_config.n_embd, n_heads=hf_config.n_head,
                            d_ff=hf_config.n_inner or 4 * hf_config.n_embd, norm="layernorm",
                            norm_eps=hf_config.layer_norm_epsilon, ffn="gelu", bias=True)
        return GPTConfig(vocab_size=hf_config.vocab_size, max_seq_len=hf_config.n_positions,
                         n_layers=hf_config.n_layer, block=block, learned_positions=True,
                         tie_weights=hf_config.tie_word_embeddings)
    if hf_config.model_type == "llama":
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        if head_dim * hf_config.num_attention_heads != hf_config.hidden_size:
            raise ValueError("the course's attention needs head_dim == hidden_size // num_attention_heads")
        rope = getattr(hf_config, "rope_parameters", None) or {"rope_theta": hf_config.rope_theta, "rope_type": "default"}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not part of the course")
        block = BlockConfig(d_model=hf_config.hidden_size, n_heads=hf_config.num_attention_heads,
                            n_kv_heads=hf_config.num_key_value_heads, d_ff=hf_config.intermediate_size,
                            norm="rmsnorm", norm_eps=hf_config.rms_norm_eps, ffn="swiglu",
                            rope_theta=float(rope["rope_theta"]), bias=False)
        if hf_config.attention_bias or getattr(hf_config, "mlp_bias", False):
            raise ValueError("Llama with attention or MLP biases is not supported")
        return GPTConfig(vocab_size=hf_config.vocab_size, max_seq_len=hf_config.max_position_embeddings,
                         n_layers=hf_config.num_hidden_layers, block=block, learned_positions=False,
                         tie_weights=hf_config.tie_word_embeddings)
    raise ValueError(f"no converter for model_type {hf_config.model_type!r}")


def gpt2_state_dict(hf: dict, n_layers: int, d_model: int) -> dict:
    """Rename and reshape a ``GPT2LMHeadModel`` state dict to the course's names."""
    out = {"tok_emb.weight": hf["transformer.wte.weight"], "pos_emb.weight": hf["transformer.wpe.weight"],
           "norm_f.weight": hf["transformer.ln_f.weight"], "norm_f.bias": hf["transformer.ln_f.bias"]}
    for i in range(n_layers):
        src, dst = f"transformer.h.{i}.", f"blocks.{i}."
        c_attn_w = hf[src + "attn.c_attn.weight"].T  # Conv1D (in, 3d) -> (3d, in)
        c_attn_b = hf[src + "attn.c_attn.bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):  # c_attn is q | k | v
            out[dst + f"attn.{name}.weight"] = c_attn_w[j * d_model:(j + 1) * d_model]
            out[dst + f"attn.{name}.bias"] = c_attn_b[j * d_model:(j + 1) * d_model]
        out[dst + "attn.o_proj.weight"] = hf[src + "attn.c_proj.weight"].T
        out[dst + "attn.o_proj.bias"] = hf[src + "attn.c_proj.bias"]
        out[dst + "ffn.fc1.weight"] = hf[src + "mlp.c_fc.weight"].T
        out[dst + "ffn.fc1.bias"] = hf[src + "mlp.c_fc.bias"]
        out[dst + "ffn.fc2.weight"] = hf[src + "mlp.c_proj.weight"].T
        out[dst + "ffn.fc2.bias"] = hf[src + "mlp.c_proj.bias"]
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[dst + f"{ours}.weight"] = hf[src + f"{theirs}.weight"]
            out[dst + f"{ours}.bias"] = hf[src + f"{theirs}.bias"]
    out["lm_head.weight"] = hf.get("lm_head.weight", hf["transformer.wte.weight"])
    return out


def llama_state_dict(hf: dict, n_layers: int) -> dict:
    """Rename a ``LlamaForCausalLM`` state dict to the course's names (shapes already match)."""
    out = {"tok_emb.weight": hf["model.embed_tokens.weight"], "norm_f.weight": hf["model.norm.weight"]}
    for i in range(n_layers):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        out[dst + "norm1.weight"] = hf[src + "input_layernorm.weight"]
        out[dst + "norm2.weight"] = hf[src + "post_attention_layernorm.weight"]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[dst + f"attn.{name}.weight"] = hf[src + f"self_attn.{name}.weight"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[dst + f"ffn.{name}.weight"] = hf[src + f"mlp.{name}.weight"]
    out["lm_head.weight"] = hf.get("lm_head.weight", hf["model.embed_tokens.weight"])
    return out


def from_hugging_face(hf_model) -> GPT:
    """A course ``GPT`` with the architecture and weights of a Hugging Face model."""
    config = config_from_hugging_face(hf_model.config)
    hf = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    if hf_model.config.model_type == "gpt2":
        state = gpt2_state_dict(hf, config.n_layers, config.block.d_model)
    else:
        state = llama_state_dict(hf, config.n_layers)
    model = GPT(config).to(next(hf_model.parameters()).dtype)
    model.load_state_dict(state, strict=True)
    return model
