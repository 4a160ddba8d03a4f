"""The reference BPE (solutions/tokenizer.py) against facts worked out by hand and against a
brute-force BPE written here (recount everything, every step), plus the shipped corpus."""
import hashlib
import random
import re
from collections import Counter

import pytest
import regex

from solutions.tokenizer import PRETOKENIZE, BPETokenizer, train_bpe
from tests.conftest import ROOT

CORPUS = ROOT / "data" / "corpus"
EOT = "<|endoftext|>"


def brute_force_bpe(text, vocab_size, special_tokens=()):
    """BPE by the definition: split on specials, pre-tokenise, count every pair again at each step."""
    if special_tokens:
        alternatives = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        pieces = [p for p in regex.split(alternatives, text)]
    else:
        pieces = [text]
    words = Counter(tuple(bytes([b]) for b in token.encode()) for piece in pieces
                    for token in regex.findall(PRETOKENIZE, piece))
    merges = []
    while 256 + len(special_tokens) + len(merges) < vocab_size:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def test_hand_worked_example():
    # "ab ab abc" pre-tokenises to "ab", " ab", " abc". Counts: (a,b) 3, (" ",a) 2, (b,c) 1 ->
    # merge (a,b). Then (" ",ab) 2, (ab,c) 1 -> merge (" ",ab). Then (" ab",c) 1 -> merge it.
    # Then every pre-token is one token: training stops at 259 entries, below 1000.
    vocab, merges = train_bpe("ab ab abc", 1000)
    assert merges == [(b"a", b"b"), (b" ", b"ab"), (b" ab", b"c")]
    assert len(vocab) == 259 and vocab[256] == b"ab" and vocab[257] == b" ab" and vocab[258] == b" abc"


def test_ties_by_hand():
    # "xy yx ab": every pair occurs once. Greatest first: (y,x) > (x,y) (b"y" > b"x"); then
    # (x,y) beats (" ",yx), (" ",a), (a,b) on the first element; then (a,b) beats the two
    # (" ", ...); then (" ",yx) > (" ",a) because b"yx" > b"a".
    _, merges = train_bpe("xy yx ab", 256 + 4)
    assert merges == [(b"y", b"x"), (b"x", b"y"), (b"a", b"b"), (b" ", b"yx")]


def test_pretokens_by_hand():
    assert regex.findall(PRETOKENIZE, "It's  2024, ok?!") == ["It", "'s", " ", " 2024", ",", " ok", "?!"]
    # "x.x." has the pairs (x,.) and (.,x) only across pre-tokens: nothing merges there
    _, merges = train_bpe("x.x.x. yy", 257)
    assert merges == [(b"y", b"y")]


def test_vocab_layout_and_specials_never_counted():
    vocab, merges = train_bpe(f"a{EOT}a{EOT}a b", 256 + 2 + 5, [EOT, "<pad>"])
    assert [vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]
    assert vocab[256] == EOT.encode() and vocab[257] == b"<pad>"
    assert all(vocab[258 + i] == a + b for i, (a, b) in enumerate(merges))
    # the pieces are "a", "a", "a b": pre-tokens "a" x3, " b"; the only pair is (" ", b)
    assert merges == [(b" ", b"b")]


@pytest.mark.parametrize("name,start,stop,vocab_size,specials", [
    ("en_genesis_kjv.txt", 0, 8000, 256 + 200, ()),
    ("ko_constitution.txt", 0, 4000, 256 + 200, ()),
    ("ko_constitution.txt", 4000, 6000, 256 + 1 + 120, (EOT,)),
])
def test_equals_brute_force_on_the_corpus(name, start, stop, vocab_size, specials):
    text = (CORPUS / name).read_text()[start:stop]
    if specials:
        text = EOT.join(text.split("\n"))
    assert train_bpe(text, vocab_size, specials)[1] == brute_force_bpe(text, vocab_size, specials)


def test_equals_brute_force_on_random_text():
    rng = random.Random(17)
    alphabet = "aab bc  가나다 \n'sé😀1"
    for _ in range(20):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        assert train_bpe(text, 256 + 25)[1] == brute_force_bpe(text, 256 + 25), repr(text)


def test_encode_by_hand():
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")]
    for a, b in merges:
        vocab[len(vocab)] = a + b
    tokenizer = BPETokenizer(vocab, merges)
    # rank order: (b,c) first -> a|bc; (a,bc) was never learned, so "abc" (id 258) is not used
    assert tokenizer.encode("abc") == [ord("a"), 256]
    # two pre-tokens: "ab" and " abc"; nothing merges the space
    assert tokenizer.encode("ab abc") == [257, ord(" "), ord("a"), 256]


def test_special_tokens_longest_first():
    vocab, merges = train_bpe("hello world", 256 + 2 + 4, [EOT, EOT * 2])
    tokenizer = BPETokenizer(vocab, merges, [EOT, EOT * 2])
    assert tokenizer.encode(EOT * 3) == [257, 256]
    assert tokenizer.encode(f"x{EOT}y") == [ord("x"), 256, ord("y")]
    only_single = BPETokenizer(vocab, merges, [EOT])
    assert only_single.encode(EOT * 2) == [256, 256]


def test_round_trip_on_arbitrary_unicode():
    text = (CORPUS / "en_genesis_kjv.txt").read_text()[:5000] + (CORPUS / "ko_constitution.txt").read_text()[:2000]
    vocab, merges = train_bpe(text, 256 + 1 + 300, [EOT])
    tokenizer = BPETokenizer(vocab, merges, [EOT])
    rng = random.Random(3)
    samples = ["", " ", "\n\n\t  ", "e\u0301", "👩‍👩‍👧‍👦🇰🇷", "대한민국" + EOT + "헌법", EOT + EOT, "\x00\x7f\r\n"]
    for _ in range(200):  # any scalar value but the surrogates, which UTF-8 cannot encode
        samples.append("".join(chr(rng.choice([rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF),
                                               rng.randint(0x20, 0x7E), rng.randint(0xAC00, 0xD7A3)]))
                               for _ in range(rng.randint(1, 30))))
    for s in samples:
        assert tokenizer.decode(tokenizer.encode(s)) == s, repr(s)
    assert tokenizer.decode([0xFF]) == "\ufffd"
    assert tokenizer.decode(list("가".encode())) == "가"


def test_korean_costs_more_tokens_than_english():
    """The lecture's claim, on the corpus: a Hangul syllable is 3 UTF-8 bytes, and at the same
    byte-level vocabulary Korean needs more tokens per character than English."""
    en = (CORPUS / "en_genesis_kjv.txt").read_text()[:20000]
    ko = (CORPUS / "ko_constitution.txt").read_text()[:20000]
    assert len(en.encode()) / len(en) == 1.0
    assert len(ko.encode()) / len(ko) > 2.0  # Hangul 3 bytes, spaces and digits 1
    vocab, merges = train_bpe(en + ko, 256 + 500)
    tokenizer = BPETokenizer(vocab, merges)
    assert len(tokenizer.encode(ko)) / len(ko) > len(tokenizer.encode(en)) / len(en)


def test_corpus_matches_its_readme():
    readme = (CORPUS / "README.md").read_text()
    for path in sorted(CORPUS.glob("*.txt")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert re.search(rf"^{digest}  {re.escape(path.name)}$", readme, flags=re.M), path.name
    assert (CORPUS / "LICENSE").exists()


def test_the_hidden_suites_copy_of_the_corpus_is_the_corpus():
    """The hidden suite reads slices of the corpus from autograder/suites/tokenizer_texts.json (the
    Gradescope package holds only autograder/ and solutions/): they must be the corpus's own text."""
    import json

    copied = json.loads((ROOT / "autograder" / "suites" / "tokenizer_texts.json").read_text(encoding="utf-8"))
    for key in ("english", "english_far", "korean"):
        entry = copied[key]
        text = (CORPUS / entry["file"]).read_text(encoding="utf-8")
        assert entry["text"] == text[entry["start"]:entry["start"] + len(entry["text"])], key
