"""Known mistakes of the tokenizer exercise, computed by trusted code in the grader.

Each function returns what a plausible wrong byte-level BPE would return on the same input,
with the sentence a student reads when their value matches it. A mistake is named only
where the numbers show it: its result differs from the reference's on that input and the
student's equals it (``named``).

The trainer here recounts every pair at every step (slow, obvious, only for the grader's
small inputs); the reference (solutions/tokenizer.py) updates its counts incrementally.
"""
from __future__ import annotations

from collections import Counter

import regex

PRETOKENIZE = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

TIES_LEAST = ("ties between equally frequent pairs go to the smallest pair; the API breaks them "
              "towards the lexicographically greatest pair of bytes objects (max over (count, pair))")
ACROSS_PRETOKENS = ("pairs are counted across pre-token boundaries (the text was not cut with "
                    "PRETOKENIZE first): count pairs only inside each pre-token")
UNWEIGHTED = ("each distinct pre-token is counted once: weight its pairs by how often the "
              "pre-token occurs in the text")
SPECIALS_TRAINED = ("the special tokens were trained on as ordinary text: split the text on them "
                    "first and leave them out of the counts")
SPECIALS_JOINED = ("the special tokens were removed but the text on either side was joined, so "
                   "pairs are counted across a special token: split on them, keep the pieces apart")
ENCODE_LEFT_TO_RIGHT = ("merges are applied to the leftmost mergeable pair first; apply them in "
                        "merge order (rank): the lowest-ranked pair present in the pre-token first")
ENCODE_LONGEST = ("encode takes the longest vocabulary token left to right; BPE applies the merges "
                  "in merge order (rank) instead, which can give different tokens")
ENCODE_BY_FREQUENCY = ("encode merges the pair most frequent in the text first; apply the merges in "
                       "the order they were learned (rank), whatever the text's counts")
ENCODE_ACROSS_PRETOKENS = ("encode merges across pre-token boundaries: pre-tokenise the text with "
                           "PRETOKENIZE and apply the merges inside each pre-token only")
SPECIALS_SPLIT = ("a special token was encoded as ordinary text (split into byte tokens): cut the "
                  "text on the special tokens first and give each its own id")
SPECIALS_SHORTEST = ("overlapping special tokens: the shorter one was matched first; try the "
                     "longest special token first ('<|endoftext|><|endoftext|>' is one token)")
DECODE_PER_TOKEN = ("each token was decoded on its own; a character's UTF-8 bytes can span tokens: "
                    "concatenate all the bytes, then decode once with errors='replace'")
DECODE_IGNORE = "invalid UTF-8 was dropped (errors='ignore'); decode with errors='replace' (U+FFFD)"


# -- training ---------------------------------------------------------------------------------
def _pieces(text, specials, join):
    if not specials:
        return [text]
    pattern = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    parts = regex.split(pattern, text)
    return ["".join(parts)] if join else parts


def train_variant(text, vocab_size, special_tokens=(), *, ties="greatest", pretokenize=True,
                  weighted=True, specials_as_text=False, join_specials=False):
    """``(vocab, merges)`` of a BPE trained with one rule changed (the defaults are the API's)."""
    specials = list(dict.fromkeys(special_tokens))
    pieces = [text] if specials_as_text else _pieces(text, specials, join_specials)
    counts = Counter()
    for piece in pieces:
        counts.update(regex.findall(PRETOKENIZE, piece) if pretokenize else ([piece] if piece else []))
    words = Counter()
    for token, n in counts.items():
        words[tuple(bytes([b]) for b in token.encode("utf-8"))] += n if weighted else 1
    vocab = {i: bytes([i]) for i in range(256)}
    for token in specials:
        vocab[len(vocab)] = token.encode("utf-8")
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        top = max(pairs.values())
        tied = [p for p, c in pairs.items() if c == top]
        best = max(tied) if ties == "greatest" else min(tied)
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        words = Counter({_merge(word, best): n for word, n in words.items()})
    return vocab, merges


def _merge(word, pair):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def training_mistakes(text, vocab_size, special_tokens=()):
    """(sentence, merges) of every known training mistake on this input."""
    yield TIES_LEAST, train_variant(text, vocab_size, special_tokens, ties="least")[1]
    yield ACROSS_PRETOKENS, train_variant(text, vocab_size, special_tokens, pretokenize=False)[1]
    yield UNWEIGHTED, train_variant(text, vocab_size, special_tokens, weighted=False)[1]
    if special_tokens:
        yield SPECIALS_TRAINED, train_variant(text, vocab_size, special_tokens, specials_as_text=True)[1]
        yield SPECIALS_JOINED, train_variant(text, vocab_size, special_tokens, join_specials=True)[1]


# -- encoding ---------------------------------------------------------------------------------
def _ids_of(vocab):
    ids = {}
    for i in sorted(vocab):
        ids.setdefault(vocab[i], i)
    return ids


def _encode_word(word, ranks, strategy, vocab_bytes):
    if strategy == "longest":
        raw, out, i = b"".join(word), [], 0
        while i < len(raw):
            j = max(j for j in range(i + 1, len(raw) + 1) if raw[i:j] in vocab_bytes)
            out.append(raw[i:j])
            i = j
        return tuple(out)
    while len(word) > 1:
        present = [p for p in zip(word, word[1:]) if p in ranks]
        if not present:
            break
        if strategy == "rank":
            pair = min(present, key=ranks.__getitem__)
        elif strategy == "left_to_right":
            pair = present[0]
        else:  # "frequency": the pair most frequent in this word (ties: lower rank)
            counts = Counter(present)
            pair = max(present, key=lambda p: (counts[p], -ranks[p]))
        word = _merge(word, pair)
    return word


def encode_variant(vocab, merges, special_tokens, text, *, strategy="rank", pretokenize=True,
                   specials="longest"):
    """ids of ``text`` with one rule of ``encode`` changed (the defaults are the API's).
    strategy: rank | left_to_right | longest | frequency; specials: longest | shortest | none."""
    ids = _ids_of(vocab)
    ranks = {tuple(p): r for r, p in enumerate(merges)}
    order = sorted(dict.fromkeys(special_tokens), key=len, reverse=(specials == "longest"))
    if specials == "none" or not order:
        pieces = [(text, False)]
    else:
        pattern = regex.compile("|".join(regex.escape(s) for s in order))
        pieces, start = [], 0
        for m in pattern.finditer(text):
            pieces.append((text[start:m.start()], False))
            pieces.append((m.group(), True))
            start = m.end()
        pieces.append((text[start:], False))
    out = []
    for piece, is_special in pieces:
        if is_special:
            out.append(ids[piece.encode("utf-8")])
            continue
        for token in regex.findall(PRETOKENIZE, piece) if pretokenize else ([piece] if piece else []):
            word = tuple(bytes([b]) for b in token.encode("utf-8"))
            out.extend(ids[t] for t in _encode_word(word, ranks, strategy, ids))
    return out


def encoding_mistakes(vocab, merges, special_tokens, text):
    """(sentence, ids) of every known encoding mistake on this input."""
    yield ENCODE_LEFT_TO_RIGHT, encode_variant(vocab, merges, special_tokens, text, strategy="left_to_right")
    yield ENCODE_LONGEST, encode_variant(vocab, merges, special_tokens, text, strategy="longest")
    yield ENCODE_BY_FREQUENCY, encode_variant(vocab, merges, special_tokens, text, strategy="frequency")
    yield ENCODE_ACROSS_PRETOKENS, encode_variant(vocab, merges, special_tokens, text, pretokenize=False)
    if special_tokens:
        yield SPECIALS_SPLIT, encode_variant(vocab, merges, special_tokens, text, specials="none")
        yield SPECIALS_SHORTEST, encode_variant(vocab, merges, special_tokens, text, specials="shortest")


def decoding_mistakes(vocab, ids):
    yield DECODE_PER_TOKEN, "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)
    yield DECODE_IGNORE, b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


# -- naming -----------------------------------------------------------------------------------
def named(actual, expected, mistakes) -> str:
    """The message tail naming the known mistake(s) whose result ``actual`` equals, where that
    result differs from ``expected`` (so the input can tell them apart); else ""."""
    found = []
    for sentence, wrong in mistakes:
        if wrong != expected and wrong == actual and sentence not in found:
            found.append(sentence)
    if len(found) == 1:
        return f"\n  This looks like a known mistake: {found[0]}"
    if found:
        return "\n  This looks like one of these known mistakes: " + "; or ".join(found)
    return ""
