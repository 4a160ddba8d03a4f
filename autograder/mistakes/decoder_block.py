"""Known mistakes of exercises/decoder_block.py: DecoderBlock, computed with the reference's own block in
float64.
Each yields (the sentence a student reads, the wrong value for the same inputs)."""
from __future__ import annotations

import torch

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
