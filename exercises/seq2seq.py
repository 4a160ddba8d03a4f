# Exercise 13 of 13: seq2seq. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/09_encoder_decoder.ipynb. Needs attention (exercises/attention.py), layers
# (exercises/layers.py), positional (exercises/positional.py): finish them first.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise seq2seq` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: the original encoder-decoder Transformer (Vaswani et al., 2017; lectures 04, 05).

    encoder layer (Post-LN):  x = norm1(x + self_attn(x));  x = norm2(x + FFN(x))
    decoder layer (Post-LN):  y = norm1(y + causal self_attn(y))
                              y = norm2(y + cross_attn(y, memory))
                              y = norm3(y + FFN(y))
    FFN(x) = fc2(relu(fc1(x)))

Pre-LN (``prenorm=True``) applies each norm before its sublayer, x = x + f(norm(x)), and
adds a final ``enc_norm`` / ``dec_norm``. Padding masks are boolean with True marking a real
token; padding keys are never attended to. Embeddings are scaled by sqrt(d_model) and the
sinusoidal encoding is added. Dropout is applied only in training mode.

Precision contract (docs/API.md): float64 inputs are computed in float64 end to end; the only
float32 parts are the angle tables the API names (RoPE angles, ``sinusoidal_encoding``).
Here: a float64 model is float64 end to end except the float32 sinusoidal table.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .attention import MultiHeadAttention, causal_mask
from .layers import LayerNorm
from .positional import sinusoidal_encoding


def _key_mask(padding: torch.Tensor | None) -> torch.Tensor | None:
    """(b, n_k) True = real token -> (b, 1, 1, n_k), broadcast over heads and queries."""
    return None if padding is None else padding[:, None, None, :]


def _feed_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fc2(relu(fc1(x))) with the layer's dropout after the activation and on the output."""
    return layer.dropout(layer.fc2(layer.dropout(torch.relu(layer.fc1(x)))))


class EncoderLayer(nn.Module):
    """Submodules ``self_attn`` (MultiHeadAttention, bias=True), ``norm1``, ``fc1``
    (Linear(d_model, d_ff)), ``fc2`` (Linear(d_ff, d_model)), ``norm2`` (LayerNorm, eps 1e-5)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, prenorm: bool = False):
        super().__init__()
        self.prenorm = prenorm
        self.dropout = nn.Dropout(dropout)  # active only in training mode
        raise NotImplementedError("EncoderLayer.__init__: write this part (see the docstring)")

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n_src, d_model); src_key_padding_mask: (b, n_src) bool, True = real token."""
        raise NotImplementedError("EncoderLayer.forward: write this part (see the docstring)")


class DecoderLayer(nn.Module):
    """Submodules ``self_attn``, ``norm1``, ``cross_attn`` (keys/values from the encoder's
    memory), ``norm2``, ``fc1``, ``fc2``, ``norm3``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, prenorm: bool = False):
        super().__init__()
        self.prenorm = prenorm
        self.dropout = nn.Dropout(dropout)
        raise NotImplementedError("DecoderLayer.__init__: write this part (see the docstring)")

    def forward(self, y: torch.Tensor, memory: torch.Tensor, tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """y: (b, n_tgt, d_model), memory: (b, n_src, d_model) -> (b, n_tgt, d_model).
        Causal masked self-attention, then cross-attention to memory, then the FFN."""
        raise NotImplementedError("DecoderLayer.forward: write this part (see the docstring)")


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer. Submodules ``src_emb``, ``tgt_emb`` (Embedding),
    ``encoder`` and ``decoder`` (ModuleLists of n_layers layers), ``out_proj``
    (Linear(d_model, tgt_vocab) with bias), and with ``prenorm`` also ``enc_norm`` and
    ``dec_norm``. The sinusoidal table (max_len, d_model) is a buffer, not a parameter."""

    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 128, n_heads: int = 4, n_layers: int = 2,
                 d_ff: int = 512, max_len: int = 256, pad_id: int = 0, dropout: float = 0.0, prenorm: bool = False):
        super().__init__()
        self.d_model, self.pad_id, self.prenorm = d_model, pad_id, prenorm
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("positions", sinusoidal_encoding(max_len, d_model), persistent=False)
        raise NotImplementedError("Seq2SeqTransformer.__init__: write this part (see the docstring)")

    def embed(self, tokens: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
        """table(tokens) * sqrt(d_model) + PE[:s] (then dropout)."""
        raise NotImplementedError("Seq2SeqTransformer.embed: write this part (see the docstring)")

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """src: (b, n_src) token ids -> memory (b, n_src, d_model); padding from pad_id."""
        raise NotImplementedError("Seq2SeqTransformer.encode: write this part (see the docstring)")

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """tgt: (b, n_tgt) ids, memory from ``encode(src)`` -> logits (b, n_tgt, tgt_vocab)."""
        raise NotImplementedError("Seq2SeqTransformer.decode: write this part (see the docstring)")

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (b, n_tgt, tgt_vocab) for every target position."""
        raise NotImplementedError("Seq2SeqTransformer.forward: write this part (see the docstring)")

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> torch.Tensor:
        """LongTensor (b, <= max_len): column 0 is bos_id (it counts toward max_len); each row
        keeps its eos_id and is filled with pad_id after it; stops once every row finished."""
        raise NotImplementedError("Seq2SeqTransformer.greedy_decode: write this part (see the docstring)")
