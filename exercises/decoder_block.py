# Exercise 5 of 13: decoder_block. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/04_transformer_block.ipynb. Needs attention (exercises/attention.py),
# layers (exercises/layers.py): finish them first.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise decoder_block` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: the decoder block of GPT-2 and Llama (lecture 04).

    Pre-LN  (GPT-2, Llama):            x = x + attn(norm1(x));  x = x + ffn(norm2(x))
    Post-LN (the original Transformer): x = norm1(x + attn(x));  x = norm2(x + ffn(x))

The attention is causal self-attention: a token never sees later tokens.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: a float64 block is float64 end to end except RoPE's float32 angles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import MultiHeadAttention
from .layers import FeedForward, LayerNorm, RMSNorm, SwiGLU


@dataclass
class BlockConfig:
    d_model: int
    n_heads: int
    n_kv_heads: int | None = None  # None: one key/value head per query head (MHA)
    d_ff: int | None = None  # None: 4 * d_model, GPT-2's expansion
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
    norm_eps: float = 1e-5  # GPT-2's layer_norm_epsilon; Llama checkpoints use 1e-5 or 1e-6
    ffn: str = "gelu"  # "gelu" (FeedForward, GPT-2) or "swiglu" (SwiGLU, Llama)
    rope_theta: float | None = None  # None: no rotary embedding (GPT-2 adds learned positions)
    prenorm: bool = True  # Pre-LN, as GPT-2 and Llama; False: Post-LN as in Vaswani et al.
    bias: bool = True  # biases in attention and FeedForward (GPT-2 has them, Llama not)


def make_norm(config: BlockConfig) -> nn.Module:
    if config.norm == "layernorm":
        return LayerNorm(config.d_model, eps=config.norm_eps)
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, eps=config.norm_eps)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {config.norm!r}")


class DecoderBlock(nn.Module):
    """One decoder block. Submodules: ``norm1``, ``attn`` (MultiHeadAttention), ``norm2``,
    ``ffn`` (FeedForward or SwiGLU), built from ``config`` (see ``BlockConfig``):
    attn = MultiHeadAttention(d_model, n_heads, n_kv_heads, bias=bias, rope_theta=rope_theta);
    ffn = FeedForward(d_model, d_ff, bias=bias) or SwiGLU(d_model, d_ff);
    norms = LayerNorm or RMSNorm with eps=norm_eps (hint: ``make_norm``).
    """

    def __init__(self, config: BlockConfig):
        super().__init__()
        self.config = config
        d_ff = config.d_ff if config.d_ff is not None else 4 * config.d_model
        if config.ffn not in ("gelu", "swiglu"):
            raise ValueError(f"ffn must be 'gelu' or 'swiglu', got {config.ffn!r}")
        raise NotImplementedError("DecoderBlock.__init__: write this part (see the docstring)")

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """x: (b, s, d_model) -> (b, s, d_model), causal self-attention.

        positions and cache are handed to the attention (RoPE positions, KV cache).
        """
        raise NotImplementedError("DecoderBlock.forward: write this part (see the docstring)")
