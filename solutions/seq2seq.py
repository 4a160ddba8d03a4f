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
        ### BEGIN SOLUTION
        self.self_attn = MultiHeadAttention(d_model, n_heads, bias=True)
        self.norm1 = LayerNorm(d_model, eps=1e-5)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.norm2 = LayerNorm(d_model, eps=1e-5)
        ### END SOLUTION

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n_src, d_model); src_key_padding_mask: (b, n_src) bool, True = real token."""
        ### BEGIN SOLUTION
        mask = _key_mask(src_key_padding_mask)
        if self.prenorm:
            x = x + self.dropout(self.self_attn(self.norm1(x), mask=mask))
            return x + _feed_forward(self, self.norm2(x))
        x = self.norm1(x + self.dropout(self.self_attn(x, mask=mask)))
        return self.norm2(x + _feed_forward(self, x))
        ### END SOLUTION


class DecoderLayer(nn.Module):
    """Submodules ``self_attn``, ``norm1``, ``cross_attn`` (keys/values from the encoder's
    memory), ``norm2``, ``fc1``, ``fc2``, ``norm3``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, prenorm: bool = False):
        super().__init__()
        self.prenorm = prenorm
        self.dropout = nn.Dropout(dropout)
        ### BEGIN SOLUTION
        self.self_attn = MultiHeadAttention(d_model, n_heads, bias=True)
        self.norm1 = LayerNorm(d_model, eps=1e-5)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, bias=True)
        self.norm2 = LayerNorm(d_model, eps=1e-5)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.norm3 = LayerNorm(d_model, eps=1e-5)
        ### END SOLUTION

    def forward(self, y: torch.Tensor, memory: torch.Tensor, tgt_key_padding_mask: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """y: (b, n_tgt, d_model), memory: (b, n_src, d_model) -> (b, n_tgt, d_model).
        Causal masked self-attention, then cross-attention to memory, then the FFN."""
        ### BEGIN SOLUTION
        self_mask, memory_mask = _key_mask(tgt_key_padding_mask), _key_mask(memory_key_padding_mask)
        if self.prenorm:
            y = y + self.dropout(self.self_attn(self.norm1(y), mask=self_mask, is_causal=True))
            y = y + self.dropout(self.cross_attn(self.norm2(y), context=memory, mask=memory_mask))
            return y + _feed_forward(self, self.norm3(y))
        y = self.norm1(y + self.dropout(self.self_attn(y, mask=self_mask, is_causal=True)))
        y = self.norm2(y + self.dropout(self.cross_attn(y, context=memory, mask=memory_mask)))
        return self.norm3(y + _feed_forward(self, y))
        ### END SOLUTION


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
        ### BEGIN SOLUTION
        self.src_emb = nn.Embedding(src_vocab, d_model)
        self.tgt_emb = nn.Embedding(tgt_vocab, d_model)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, dropout, prenorm) for _ in range(n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, n_heads, d_ff, dropout, prenorm) for _ in range(n_layers))
        if prenorm:
            self.enc_norm = LayerNorm(d_model, eps=1e-5)
            self.dec_norm = LayerNorm(d_model, eps=1e-5)
        self.out_proj = nn.Linear(d_model, tgt_vocab)
        ### END SOLUTION

    def embed(self, tokens: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
        """table(tokens) * sqrt(d_model) + PE[:s] (then dropout)."""
        ### BEGIN SOLUTION
        x = table(tokens) * math.sqrt(self.d_model)  # (b, s, d_model)
        return self.dropout(x + self.positions[: tokens.shape[1]].to(x.dtype))
        ### END SOLUTION

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """src: (b, n_src) token ids -> memory (b, n_src, d_model); padding from pad_id."""
        ### BEGIN SOLUTION
        padding = src != self.pad_id  # (b, n_src), True = real token
        x = self.embed(src, self.src_emb)
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=padding)
        return self.enc_norm(x) if self.prenorm else x
        ### END SOLUTION

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """tgt: (b, n_tgt) ids, memory from ``encode(src)`` -> logits (b, n_tgt, tgt_vocab)."""
        ### BEGIN SOLUTION
        tgt_padding, src_padding = tgt != self.pad_id, src != self.pad_id
        y = self.embed(tgt, self.tgt_emb)
        for layer in self.decoder:
            y = layer(y, memory, tgt_key_padding_mask=tgt_padding, memory_key_padding_mask=src_padding)
        return self.out_proj(self.dec_norm(y) if self.prenorm else y)
        ### END SOLUTION

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (b, n_tgt, tgt_vocab) for every target position."""
        ### BEGIN SOLUTION
        return self.decode(tgt, self.encode(src), src)
        ### END SOLUTION

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> torch.Tensor:
        """LongTensor (b, <= max_len): column 0 is bos_id (it counts toward max_len); each row
        keeps its eos_id and is filled with pad_id after it; stops once every row finished."""
        ### BEGIN SOLUTION
        memory = self.encode(src)
        out = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        while out.shape[1] < max_len and not finished.all():
            next_token = self.decode(out, memory, src)[:, -1].argmax(dim=-1)  # (b,)
            next_token = torch.where(finished, torch.full_like(next_token, self.pad_id), next_token)
            out = torch.cat([out, next_token[:, None]], dim=1)
            finished |= next_token == eos_id
        return out
        ### END SOLUTION
