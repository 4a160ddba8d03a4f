# Exercise 6 of 13: gpt. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/04_transformer_block.ipynb. Needs decoder_block
# (exercises/decoder_block.py): finish it first.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise gpt` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: a GPT language model from decoder blocks (lectures 04 and 05).

    logits = lm_head(norm_f(blocks(tok_emb(idx) + pos_emb(positions))))

GPT-2 style: learned positions (``pos_emb``), LayerNorm, GELU, biases, tied head.
Llama style: no ``pos_emb`` (RoPE inside attention), RMSNorm, SwiGLU, no biases.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: a float64 GPT is float64 end to end except RoPE's float32 angles.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .decoder_block import BlockConfig, DecoderBlock, make_norm


@dataclass
class GPTConfig:
    vocab_size: int
    max_seq_len: int  # the longest sequence (prompt + generated) the model accepts
    n_layers: int
    block: BlockConfig
    learned_positions: bool = True  # GPT-2's wpe; set False for RoPE models
    tie_weights: bool = True  # lm_head shares tok_emb's weight (saves vocab * d_model parameters)


class GPT(nn.Module):
    """Submodules: ``tok_emb`` Embedding(vocab_size, d_model); ``pos_emb``
    Embedding(max_seq_len, d_model) or None; ``blocks`` ModuleList of n_layers DecoderBlock;
    ``norm_f`` (the block config's norm); ``lm_head`` Linear(d_model, vocab_size, bias=False)
    whose weight IS ``tok_emb.weight`` when ``tie_weights`` (one tensor, not a copy).
    The config is kept as ``self.config``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        d_model = config.block.d_model
        raise NotImplementedError("GPT.__init__: write this part (see the docstring)")

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        """idx: (b, s) token ids -> logits (b, s, vocab_size).

        Positions start at the cache's current length (``cache.seq_len``, 0 without a
        cache); block i gets ``cache.layer(i)``. ``norm_f`` is applied in Pre-LN and Post-LN
        models alike. A sequence running past ``max_seq_len`` raises ValueError.
        """
        raise NotImplementedError("GPT.forward: write this part (see the docstring)")
