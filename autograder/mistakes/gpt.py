"""Known mistakes of exercises/gpt.py: GPT, computed with the reference's own model in float64.
Each yields (the sentence a student reads, the wrong value for the same inputs)."""
from __future__ import annotations

import torch

UNTIED = "the output head is not tied to the token embedding: lm_head.weight must be tok_emb.weight"
NO_FINAL_NORM = "the final norm norm_f is not applied before lm_head"
NO_POSITIONS = "the learned position embedding pos_emb is not added to the token embedding"


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
