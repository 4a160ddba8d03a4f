# Exercise 8 of 13: tokenizer. Replace each `raise NotImplementedError` with your code.
# Prepared by lectures/05_training.ipynb. Needs no other exercise.
# The contract (shapes, conventions, precision): docs/API.md.
# Check it: `python3 course.py grade --exercise tokenizer` (one function: add `-k NAME`; whole
# messages: `-v`). Those are the public checks; the course staff grade with more inputs.
"""Exercise: a byte-level BPE tokenizer (lecture 05).

Byte-pair encoding as in GPT-2: every string is UTF-8 bytes, so the 256 single bytes are the
first 256 tokens and no text is ever out of vocabulary. Training repeatedly merges the most
frequent adjacent pair of tokens into a new token; encoding replays those merges, in the
order they were learned, on new text.

Three rules keep the tokens sensible and the training honest:

- **pre-tokenisation** (``PRETOKENIZE``): the text is first cut into word-like pieces
  (``" the"``, ``"'s"``, ``" 2024"``, ``"!!"``, runs of spaces); pairs are counted, and merges
  applied, only *inside* a piece, so no token spans a word boundary;
- **special tokens** (``"<|endoftext|>"``) are cut out before anything else: they are never
  split, never merged and never counted; in ``encode`` each becomes its own id, the longest
  one first where two overlap (``"<|endoftext|><|endoftext|>"`` before ``"<|endoftext|>"``);
- **ties** between equally frequent pairs go to the lexicographically greatest pair of
  ``bytes`` objects (``(b"b", b"a") > (b"a", b"z")``), so training is deterministic.

Training here updates the pair counts incrementally: merging a pair changes only the counts
of the pre-tokens that contain it, so each step touches a few words instead of recounting the
whole corpus (Stanford CS336's assignment 1 asks for the same).
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from typing import Iterable

import regex

# GPT-2's pre-tokenisation pattern: contractions, letters, numbers, other symbols (each with
# an optional leading space), then whitespace runs (the last space of a run stays with the
# next word: "a   b" -> "a", "  ", " b"). Needs the `regex` package for \p{L} and \p{N}.
PRETOKENIZE = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_PRETOKENIZE = regex.compile(PRETOKENIZE)

Pair = tuple[bytes, bytes]


def _check_special_tokens(special_tokens) -> list[str]:
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens must be a sequence of strings, got the string {special_tokens!r} "
                        f"(write ({special_tokens!r},) for one token)")
    specials = list(special_tokens)
    for token in specials:
        if not isinstance(token, str) or not token:
            raise TypeError(f"each special token must be a non-empty str, got {token!r}")
    return list(dict.fromkeys(specials))  # duplicates once, first place kept


def split_on_special_tokens(text: str, special_tokens: Iterable[str]) -> list[tuple[str, bool]]:
    """``text`` cut into ``(piece, is_special)`` in order; the pieces joined give ``text``.

    Where special tokens overlap the longest one wins: at each position the alternatives are
    tried longest first (``"<|endoftext|><|endoftext|>"`` before ``"<|endoftext|>"``).
    """
    raise NotImplementedError("split_on_special_tokens: write this part (see the docstring)")


def pretokenize(text: str) -> list[str]:
    """``text`` (no special tokens in it) cut by ``PRETOKENIZE``; the pieces joined give ``text``."""
    raise NotImplementedError("pretokenize: write this part (see the docstring)")


def _merge_word(word: tuple[bytes, ...], pair: Pair) -> tuple[bytes, ...]:
    """Every occurrence of ``pair`` in ``word`` replaced by one token, left to right
    (``(a, a, a)`` with ``(a, a)`` -> ``(aa, a)``)."""
    raise NotImplementedError("_merge_word: write this part (see the docstring)")


class _Descending:
    """A pair that sorts in reverse, so ``heapq`` (a min-heap) pops the greatest pair first."""
    __slots__ = ("pair",)

    def __init__(self, pair: Pair):
        self.pair = pair

    def __lt__(self, other: "_Descending") -> bool:
        return self.pair > other.pair

    def __eq__(self, other) -> bool:
        return self.pair == other.pair


def train_bpe(text: str, vocab_size: int, special_tokens: Iterable[str] = ()) -> tuple[dict[int, bytes], list[Pair]]:
    """Train a byte-level BPE on ``text``.

    Returns ``(vocab, merges)``: ``vocab[i]`` the bytes of token ``i`` (0-255 the single bytes,
    then the special tokens in the order given, as UTF-8, then one token per merge in merge
    order); ``merges`` the merged pairs, in the order they were learned.

    The text is split on the special tokens (they are never counted), each other piece is
    pre-tokenised with ``PRETOKENIZE``, and each pre-token becomes a tuple of single bytes.
    Pairs of adjacent tokens are counted inside each pre-token, weighted by how often that
    pre-token occurs. Each step merges the most frequent pair (ties: the greatest pair of
    bytes objects), until ``vocab_size`` tokens exist or no pair is left.
    """
    specials = _check_special_tokens(special_tokens)
    if type(vocab_size) is not int or vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be an int of at least 256 + {len(specials)} (the bytes and the "
                         f"special tokens), got {vocab_size!r}")
    raise NotImplementedError("train_bpe: write this part (see the docstring)")


class BPETokenizer:
    """Encode text with a trained vocabulary and merge list; decode ids back to text.

    ``encode(text)``: special tokens become their ids (the longest first where they overlap);
    the rest is pre-tokenised, and within each pre-token the merges are applied in merge order
    (the lowest-ranked pair present first, wherever it sits), until no merge applies.
    ``decode(ids)``: the tokens' bytes concatenated, then decoded as UTF-8 with
    ``errors="replace"`` (ids can end in the middle of a character). ``decode(encode(t)) == t``.
    """

    def __init__(self, vocab: dict[int, bytes], merges: list[Pair], special_tokens: Iterable[str] = ()):
        self.special_tokens = _check_special_tokens(special_tokens)
        raise NotImplementedError("BPETokenizer.__init__: write this part (see the docstring)")

    def _encode_pretoken(self, pretoken: str) -> list[int]:
        """One pre-token: its bytes, merged in merge order, as ids."""
        raise NotImplementedError("BPETokenizer._encode_pretoken: write this part (see the docstring)")

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        raise NotImplementedError("BPETokenizer.encode: write this part (see the docstring)")

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError("BPETokenizer.decode: write this part (see the docstring)")
