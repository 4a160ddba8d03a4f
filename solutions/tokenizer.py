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
    ### BEGIN SOLUTION
    specials = sorted(set(special_tokens), key=len, reverse=True)  # longest first
    if not specials:
        return [(text, False)] if text else []
    pattern = regex.compile("|".join(regex.escape(s) for s in specials))
    pieces, start = [], 0
    for match in pattern.finditer(text):
        if match.start() > start:
            pieces.append((text[start:match.start()], False))
        pieces.append((match.group(), True))
        start = match.end()
    if start < len(text):
        pieces.append((text[start:], False))
    return pieces
    ### END SOLUTION


def pretokenize(text: str) -> list[str]:
    """``text`` (no special tokens in it) cut by ``PRETOKENIZE``; the pieces joined give ``text``."""
    ### BEGIN SOLUTION
    return _PRETOKENIZE.findall(text)
    ### END SOLUTION


def _merge_word(word: tuple[bytes, ...], pair: Pair) -> tuple[bytes, ...]:
    """Every occurrence of ``pair`` in ``word`` replaced by one token, left to right
    (``(a, a, a)`` with ``(a, a)`` -> ``(aa, a)``)."""
    ### BEGIN SOLUTION
    first, second = pair
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
            out.append(first + second)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)
    ### END SOLUTION


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
    ### BEGIN SOLUTION
    vocab = {i: bytes([i]) for i in range(256)}
    for token in specials:
        vocab[len(vocab)] = token.encode("utf-8")

    counts = Counter()  # pre-token -> occurrences
    for piece, is_special in split_on_special_tokens(text, specials):
        if not is_special:
            counts.update(pretokenize(piece))
    words = [tuple(bytes([b]) for b in token.encode("utf-8")) for token in counts]
    freqs = list(counts.values())

    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> words that (may) contain it
    for w, word in enumerate(words):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freqs[w]
            where[pair].add(w)
    # max-heap by (count, pair); entries go stale when a count changes and are skipped then
    heap = [(-count, _Descending(pair)) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    while len(vocab) < vocab_size:
        best = None
        while heap:
            negative, entry = heapq.heappop(heap)
            if pair_counts.get(entry.pair, 0) == -negative > 0:
                best = entry.pair
                break
        if best is None:
            break  # no pair left: every pre-token is a single token
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        changed = set()
        for w in where.pop(best):
            old = words[w]
            new = _merge_word(old, best)
            if new == old:
                continue
            words[w] = new
            for pair in zip(old, old[1:]):
                pair_counts[pair] -= freqs[w]
                changed.add(pair)
            for pair in zip(new, new[1:]):
                pair_counts[pair] += freqs[w]
                where[pair].add(w)
                changed.add(pair)
        for pair in changed:
            if pair_counts[pair] > 0:
                heapq.heappush(heap, (-pair_counts[pair], _Descending(pair)))
            else:
                del pair_counts[pair]
    return vocab, merges
    ### END SOLUTION


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
        ### BEGIN SOLUTION
        self.vocab = dict(vocab)
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.ids: dict[bytes, int] = {}
        for i in sorted(self.vocab):
            self.ids.setdefault(self.vocab[i], i)  # the first id of equal bytes
        for token in self.special_tokens:  # specials missing from the vocabulary get new ids
            raw = token.encode("utf-8")
            if raw not in self.ids:
                self.ids[raw] = len(self.vocab) if not self.vocab else max(self.vocab) + 1
                self.vocab[self.ids[raw]] = raw
        self._cache: dict[str, list[int]] = {}
        ### END SOLUTION

    def _encode_pretoken(self, pretoken: str) -> list[int]:
        """One pre-token: its bytes, merged in merge order, as ids."""
        ### BEGIN SOLUTION
        if pretoken in self._cache:
            return self._cache[pretoken]
        word = tuple(bytes([b]) for b in pretoken.encode("utf-8"))
        while len(word) > 1:
            rank, pair = min((self.ranks.get(p, float("inf")), p) for p in zip(word, word[1:]))
            if rank == float("inf"):
                break  # no pair of this word was ever merged
            word = _merge_word(word, pair)
        try:
            ids = [self.ids[token] for token in word]
        except KeyError as missing:
            raise ValueError(f"the merges produce the token {missing.args[0]!r}, which is not in the vocabulary") from None
        self._cache[pretoken] = ids
        return ids
        ### END SOLUTION

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        ### BEGIN SOLUTION
        ids: list[int] = []
        for piece, is_special in split_on_special_tokens(text, self.special_tokens):
            if is_special:
                ids.append(self.ids[piece.encode("utf-8")])
            else:
                for pretoken in pretokenize(piece):
                    ids.extend(self._encode_pretoken(pretoken))
        return ids
        ### END SOLUTION

    def decode(self, ids: Iterable[int]) -> str:
        ### BEGIN SOLUTION
        return b"".join(self.vocab[int(i)] for i in ids).decode("utf-8", errors="replace")
        ### END SOLUTION
