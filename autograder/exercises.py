"""The course's exercises in course order: the one list every other list is derived from.

Each exercise is a module ``solutions/<name>.py`` (the reference) with its generated twin
``exercises/<name>.py``; what else belongs to it is found by the same name (see the
README's "Adding an exercise"). ``needs`` are the other exercises whose code it imports or
whose suite runs (a student finishes those first); ``lecture`` is the notebook that
prepares it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    name: str
    lecture: str  # lectures/<lecture>.ipynb
    needs: tuple[str, ...] = ()


COURSE: tuple[Exercise, ...] = (
    Exercise("attention", "01_self_attention", needs=("rope",)),  # MultiHeadAttention applies RoPE
    Exercise("rope", "03_positional_information"),
    Exercise("positional", "03_positional_information"),
    Exercise("layers", "04_transformer_block"),
    Exercise("decoder_block", "04_transformer_block", needs=("attention", "layers")),
    Exercise("gpt", "04_transformer_block", needs=("decoder_block",)),
    Exercise("training", "05_training"),
    Exercise("tokenizer", "05_training"),
    Exercise("flash_attention", "06_flash_attention"),
    Exercise("flash_attention_triton", "06_flash_attention"),
    Exercise("kv_cache", "07_kv_cache", needs=("gpt",)),  # its suite runs the student's GPT
    Exercise("mla", "07_kv_cache", needs=("rope", "layers")),  # apply_rope, RMSNorm
    Exercise("seq2seq", "09_encoder_decoder", needs=("attention", "layers", "positional")),
)

NAMES: tuple[str, ...] = tuple(e.name for e in COURSE)
BY_NAME: dict[str, Exercise] = {e.name: e for e in COURSE}


def course_order(names) -> list[str]:
    """``names`` sorted in course order (names the course does not know go last, sorted)."""
    position = {name: i for i, name in enumerate(NAMES)}
    return sorted(names, key=lambda n: (position.get(n, len(position)), n))
