"""Hidden suite: exercises/tokenizer.py (lecture 05), a byte-level BPE.

Training runs YOUR train_bpe on small slices of the course corpus (data/corpus/: English and
Korean; the slices are copied into tokenizer_texts.json beside this file) and on small texts
built so that one rule decides the result; the grader trains the
reference on the same text and compares vocab and merges exactly. Encoding and decoding run
YOUR BPETokenizer on a vocabulary the grader gives it (the reference's, or one written by
hand), so an encode test does not depend on your training. Tokens travel as hex strings
(autograder/adapters/tokenizer.py): the worker's replies carry no bytes objects.
"""
import json
from functools import lru_cache
from pathlib import Path

import pytest

from autograder.mistakes import tokenizer as m
from solutions import tokenizer as ref

EOT, EOT2 = "<|endoftext|>", "<|endoftext|><|endoftext|>"
TRAIN = "tokenizer.train_bpe"
TOKENIZER = "tokenizer.BPETokenizer"


@lru_cache(maxsize=None)
def _texts() -> dict:
    return json.loads((Path(__file__).resolve().parent / "tokenizer_texts.json").read_text(encoding="utf-8"))


def english(start, stop):
    """Genesis, characters start:stop (of the first 10,000, or of 20,000-20,600)."""
    far = _texts()["english_far"]
    if start >= far["start"]:
        assert stop <= far["start"] + len(far["text"]), "outside the copied slice"
        return far["text"][start - far["start"]:stop - far["start"]]
    assert stop <= len(_texts()["english"]["text"]), "outside the copied slice"
    return _texts()["english"]["text"][start:stop]


def korean(start, stop):
    """The Korean constitution, characters start:stop (of the first 6,600)."""
    assert stop <= len(_texts()["korean"]["text"]), "outside the copied slice"
    return _texts()["korean"]["text"][start:stop]


def mixed():
    """English and Korean paragraphs with special tokens between (and inside) them."""
    paragraphs = english(0, 2500).split("\n") + korean(0, 1200).split("\n")
    return EOT.join(p for p in paragraphs if p) + EOT2 + "x" + EOT + "y"


TEXTS = {  # name -> (text, vocab_size, special_tokens)
    "english": (lambda: english(0, 6000), 256 + 150, ()),
    "korean": (lambda: korean(0, 3000), 256 + 150, ()),
    "mixed-specials": (lambda: mixed(), 256 + 2 + 150, (EOT, "<pad>")),
}


# -- the wire form ----------------------------------------------------------------------------
def _bytes(value, where):
    if type(value) is not str:
        raise AssertionError(f"{where}: the reply is not a hex string (got {type(value).__name__})")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise AssertionError(f"{where}: the reply {value[:40]!r} is not a hex string") from None


def student_training(worker, text, vocab_size, special_tokens=()):
    got = worker.adapters.tokenizer.train(TRAIN, text, vocab_size, list(special_tokens))
    vocab = {}
    for entry in got["vocab"]:
        assert type(entry) is list and len(entry) == 2 and type(entry[0]) is int, "malformed vocab entry"
        vocab[entry[0]] = _bytes(entry[1], f"vocab[{entry[0]}]")
    merges = [(_bytes(a, f"merges[{i}][0]"), _bytes(b, f"merges[{i}][1]")) for i, (a, b) in enumerate(got["merges"])]
    return vocab, merges


def wire(vocab, merges):
    return [[i, vocab[i].hex()] for i in sorted(vocab)], [[a.hex(), b.hex()] for a, b in merges]


def student_encode(worker, vocab, merges, special_tokens, texts):
    got = worker.adapters.tokenizer.encode(TOKENIZER, *wire(vocab, merges), list(special_tokens), list(texts))
    return [ids.tolist() for ids in got]


def student_decode(worker, vocab, merges, id_lists):
    return worker.adapters.tokenizer.decode(TOKENIZER, *wire(vocab, merges), [], [list(ids) for ids in id_lists])


def show(text, limit=50):
    return repr(text if len(text) <= limit else text[:limit] + "...")


def compare_merges(got, expected, what, mistakes):
    if got == expected:
        return
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    detail = (f"merge {first} is {got[first]!r}, expected {expected[first]!r}"
              if first < len(got) and first < len(expected)
              else f"{len(got)} merges, expected {len(expected)}")
    raise AssertionError(f"{what}: {detail}" + m.named(got, expected, mistakes))


@lru_cache(maxsize=None)
def reference_training(name):
    make, vocab_size, specials = TEXTS[name]
    return ref.train_bpe(make(), vocab_size, specials)


def hand_vocab(merges):
    """The vocabulary the merges build, after the 256 bytes (and no special tokens)."""
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b in merges:
        vocab[len(vocab)] = a + b
    return vocab


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
@pytest.mark.points(2)
@pytest.mark.rules("train.vocab-bytes", "train.vocab-specials", "train.vocab-merges")
def test_vocab_layout(worker):
    """vocab ids: 0-255 the single bytes, then the special tokens in order, then one per merge."""
    text, vocab_size, specials = TEXTS["mixed-specials"][0](), 256 + 2 + 30, (EOT, "<pad>")
    vocab, merges = student_training(worker, text, vocab_size, specials)
    wrong_bytes = [i for i in range(256) if vocab.get(i) != bytes([i])]
    assert not wrong_bytes, (f"vocab[{wrong_bytes[0]}] is {vocab.get(wrong_bytes[0])!r}; ids 0-255 are the single "
                             f"bytes, vocab[i] == bytes([i])")
    for offset, token in enumerate(specials):
        assert vocab.get(256 + offset) == token.encode(), (
            f"vocab[{256 + offset}] is {vocab.get(256 + offset)!r}; the special tokens follow the bytes, in the "
            f"order given: expected {token.encode()!r}")
    first = 256 + len(specials)
    for n, (a, b) in enumerate(merges):
        assert vocab.get(first + n) == a + b, (
            f"vocab[{first + n}] is {vocab.get(first + n)!r}; after the special tokens comes one id per merge, in "
            f"merge order: merge {n} is {(a, b)!r}, so expected {a + b!r}")
    assert sorted(vocab) == list(range(first + len(merges))), (
        f"vocab has ids {sorted(vocab)[:3]}...{sorted(vocab)[-3:]}; expected exactly 0..{first + len(merges) - 1}")


@pytest.mark.points(1)
@pytest.mark.rules("train.stop-vocab-size")
def test_vocab_size_reached(worker):
    """training stops at exactly vocab_size entries (the bytes and special tokens count)."""
    text, specials = english(0, 3000), (EOT,)
    for vocab_size in (257, 258, 256 + 1 + 37):
        vocab, merges = student_training(worker, text, vocab_size, specials)
        assert len(vocab) == vocab_size, f"vocab_size={vocab_size}: the vocab has {len(vocab)} entries"
        assert len(merges) == vocab_size - 256 - len(specials), (
            f"vocab_size={vocab_size} with one special token: {len(merges)} merges, expected "
            f"{vocab_size - 256 - len(specials)}")


@pytest.mark.points(3)
@pytest.mark.rules("train.vocab-bytes", "train.vocab-merges", "train.most-frequent", "train.pretokenize", "train.within-pretokens", "train.weighted",
                   "train.ties-greatest", "train.split-specials")
@pytest.mark.parametrize("name", list(TEXTS))
def test_merges_match_reference(worker, name):
    """merges and vocab equal the reference's on slices of the course corpus (English, Korean, specials)."""
    make, vocab_size, specials = TEXTS[name]
    text = make()
    vocab, merges = student_training(worker, text, vocab_size, specials)
    ref_vocab, ref_merges = reference_training(name)
    compare_merges(merges, ref_merges, f"train_bpe on the {name} text ({len(text)} characters)",
                   m.training_mistakes(text, vocab_size, specials))
    assert vocab == ref_vocab, f"train_bpe on the {name} text: the merges are right but the vocab differs"


@pytest.mark.points(2)
@pytest.mark.rules("train.ties-greatest")
def test_ties_go_to_the_greatest_pair(worker):
    """equally frequent pairs: the lexicographically greatest pair of bytes objects is merged first."""
    # every pair occurs once: the order of the merges is the order of the tie-breaks
    text = "xy yx ab"
    expected = ref.train_bpe(text, 256 + 4)[1]
    _, merges = student_training(worker, text, 256 + 4)
    compare_merges(merges, expected, f"train_bpe({text!r}, 260), where every pair occurs once",
                   m.training_mistakes(text, 256 + 4))


@pytest.mark.points(2)
@pytest.mark.rules("train.within-pretokens", "train.pretokenize")
def test_pairs_stay_inside_pretokens(worker):
    """pairs are counted inside pre-tokens only: 'x.x.x.' has no pair (x, .) to merge."""
    text = "x.x.x.x.x. yy yy"
    expected = ref.train_bpe(text, 256 + 3)[1]
    _, merges = student_training(worker, text, 256 + 3)
    compare_merges(merges, expected, f"train_bpe({text!r}, 259)", m.training_mistakes(text, 256 + 3))


@pytest.mark.points(2)
@pytest.mark.rules("pretokenize.pattern", "train.pretokenize")
def test_pretokens_follow_the_gpt2_pattern(worker):
    """pre-tokens are cut by GPT-2's pattern: contractions ("'s"), numbers, punctuation and space runs."""
    # "'s" is one pre-token here, so (', s) is the first merge; a pattern without the contractions
    # cuts "'" from "s", and a split on whitespace keeps "Jacob's" and "ox;" whole
    text = ("It's Jacob's ox; it's Leah's tent. We'll see, they've gone, you're here, I'd go, don't.\n"
            "  2024 and 1,000 more!! ") * 2
    expected = ref.train_bpe(text, 256 + 6)[1]
    _, merges = student_training(worker, text, 256 + 6)
    compare_merges(merges, expected, f"train_bpe({show(text)}, 262)", m.training_mistakes(text, 256 + 6))


@pytest.mark.points(2)
@pytest.mark.rules("train.weighted")
def test_pretokens_weighted_by_frequency(worker):
    """a pre-token that occurs five times counts five times."""
    text = "ab ab zz zz zz zz zz"
    expected = ref.train_bpe(text, 256 + 2)[1]
    _, merges = student_training(worker, text, 256 + 2)
    compare_merges(merges, expected, f"train_bpe({text!r}, 258)", m.training_mistakes(text, 256 + 2))


@pytest.mark.points(2)
@pytest.mark.rules("train.split-specials")
def test_special_tokens_never_counted(worker):
    """special tokens are cut out first: their bytes are never counted, nor pairs across them."""
    text = "q" + EOT + "q" + (EOT + "z") * 3 + " " + EOT * 4
    specials = (EOT,)
    expected = ref.train_bpe(text, 256 + 1 + 3, specials)[1]
    _, merges = student_training(worker, text, 256 + 1 + 3, specials)
    compare_merges(merges, expected, f"train_bpe({show(text)}, 260, [{EOT!r}])",
                   m.training_mistakes(text, 256 + 1 + 3, specials))


@pytest.mark.points(1)
@pytest.mark.rules("train.stop-no-pairs")
def test_training_stops_when_no_pair_is_left(worker):
    """when every pre-token is one token, training stops below vocab_size."""
    text = "ab ab"
    vocab, merges = student_training(worker, text, 1000)
    expected_vocab, expected = ref.train_bpe(text, 1000)
    compare_merges(merges, expected, f"train_bpe({text!r}, 1000)", m.training_mistakes(text, 1000))
    assert len(vocab) == len(expected_vocab), f"the vocab has {len(vocab)} entries, expected {len(expected_vocab)}"


# ---------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------
UNICODE = [
    "안녕하세요, 세계! 대한민국은 민주공화국이다.",
    "emoji: 👩‍👩‍👧‍👦 👍🏽 🇰🇷 and a flag",
    "combining marks: e\u0301 a\u0308 \u1100\u1161\u11a8 (decomposed Hangul)",
    "runs   of \t\t spaces\n\n\n  and\r\nline ends   ",
    "numbers 2024, 3.14159, ½ and ٣",
    "contractions: it's, we'll, they've, I'd, you're, DON'T",
    "\x00 control \x1b[31m characters \x7f",
    "",
    " ",
    "🙂",
]


@pytest.mark.points(3)
@pytest.mark.rules("encode.rank-order", "encode.within-pretokens")
@pytest.mark.parametrize("name", ["english", "korean", "unicode"])
def test_encode_matches_reference(worker, name):
    """encode with the reference's vocabulary gives the reference's ids (text the training never saw)."""
    vocab, merges = reference_training("english" if name == "unicode" else name)
    texts = {"english": [english(6000, 7500), english(9000, 9400)],
             "korean": [korean(3000, 3800), korean(5000, 5200)],
             "unicode": UNICODE}[name]
    tokenizer = ref.BPETokenizer(vocab, merges)
    got = student_encode(worker, vocab, merges, [], texts)
    for text, ids in zip(texts, got):
        expected = tokenizer.encode(text)
        assert ids == expected, (
            f"encode({show(text)}): {len(ids)} ids, expected {len(expected)}; first difference at "
            f"{next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))}"
            + m.named(ids, expected, m.encoding_mistakes(vocab, merges, [], text)))


# merges by hand, chosen so that the rules disagree: in "abc" rank order merges (b, c) first,
# the leftmost pair is (a, b) and the longest token is "abc"; in "abcbc" the pair most
# frequent in the text is (b, c) while rank order merges (a, b) first
RANKED = {
    "abc": [(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")],
    "abcbc": [(b"a", b"b"), (b"b", b"c")],
}


@pytest.mark.points(2)
@pytest.mark.rules("encode.rank-order")
@pytest.mark.parametrize("text", list(RANKED))
def test_encode_applies_merges_in_rank_order(worker, text):
    """within a pre-token the lowest-ranked pair present is merged first, whatever its position or count."""
    merges = RANKED[text]
    vocab = hand_vocab(merges)
    expected = ref.BPETokenizer(vocab, merges).encode(text)
    (ids,) = student_encode(worker, vocab, merges, [], [text])
    tokens = [vocab[i] for i in expected]
    assert ids == expected, (f"encode({text!r}) with merges {merges}: got ids {ids}, expected {expected} "
                             f"({tokens})" + m.named(ids, expected, m.encoding_mistakes(vocab, merges, [], text)))


@pytest.mark.points(1)
@pytest.mark.rules("encode.within-pretokens")
def test_encode_keeps_pretokens_apart(worker):
    """merges never join two pre-tokens, even where a merge would fit ('a b' is 'a' + ' b')."""
    merges = [(b"a", b" "), (b"a ", b"b"), (b" ", b"b")]
    vocab = hand_vocab(merges)
    text = "a b a b"
    expected = ref.BPETokenizer(vocab, merges).encode(text)
    (ids,) = student_encode(worker, vocab, merges, [], [text])
    assert ids == expected, (f"encode({text!r}) with merges {merges}: got {ids}, expected {expected}"
                             + m.named(ids, expected, m.encoding_mistakes(vocab, merges, [], text)))


SPECIAL_TEXTS = [EOT, EOT2, "hi" + EOT + "there", EOT * 3, "a" + EOT2 + "b" + EOT + "c", "<|endoftext|", "<|end" + EOT]


@pytest.mark.points(2)
@pytest.mark.rules("encode.specials", "encode.specials-longest")
def test_special_tokens_encode_to_their_ids(worker):
    """special tokens map to their ids; where they overlap the longest wins ('<|endoftext|>' twice is one)."""
    specials = (EOT, EOT2)
    vocab, merges = ref.train_bpe(mixed(), 256 + 2 + 60, specials)
    tokenizer = ref.BPETokenizer(vocab, merges, specials)
    got = student_encode(worker, vocab, merges, specials, SPECIAL_TEXTS)
    for text, ids in zip(SPECIAL_TEXTS, got):
        expected = tokenizer.encode(text)
        assert ids == expected, (
            f"encode({text!r}) with special tokens {list(specials)} (ids 256, 257): got {ids}, expected {expected}"
            + m.named(ids, expected, m.encoding_mistakes(vocab, merges, specials, text)))


# ---------------------------------------------------------------------------------------
# decoding and the round trip
# ---------------------------------------------------------------------------------------
@pytest.mark.points(3)
@pytest.mark.rules("roundtrip")
def test_round_trip(worker):
    """decode(encode(t)) == t for Korean, emoji, combining marks, whitespace runs and control characters."""
    specials = (EOT, EOT2)
    vocab, merges = ref.train_bpe(mixed(), 256 + 2 + 150, specials)
    texts = UNICODE + SPECIAL_TEXTS + [korean(6000, 6600), english(20000, 20600) + EOT + korean(100, 200)]
    got = worker.adapters.tokenizer.round_trip(TOKENIZER, *wire(vocab, merges), list(specials), texts)
    tokenizer = ref.BPETokenizer(vocab, merges, specials)
    for text, result in zip(texts, got):
        ids, back = result["ids"].tolist(), result["text"]
        assert back == text, f"decode(encode({show(text)})) gave {show(back)}"
        assert tokenizer.decode(ids) == text, (
            f"encode({show(text)}) returned ids whose bytes are {show(tokenizer.decode(ids))} in the vocabulary "
            f"given; decode agreed with it, but the ids must spell the text")


@pytest.mark.points(1)
@pytest.mark.rules("decode.concatenate")
def test_decode_joins_bytes_before_decoding(worker):
    """a character split over tokens decodes whole: '가' is b'\\xea\\xb0\\x80', three byte tokens."""
    merges = [(b"\xea", b"\xb0")]
    vocab = hand_vocab(merges)
    cases = [[0xEA, 0xB0, 0x80], [256, 0x80, ord("!")], list("한".encode()) + list(" ok".encode())]
    got = student_decode(worker, vocab, merges, cases)
    tokenizer = ref.BPETokenizer(vocab, merges)
    for ids, text in zip(cases, got):
        expected = tokenizer.decode(ids)
        assert text == expected, (f"decode({ids}): got {text!r}, expected {expected!r}"
                                  + m.named(text, expected, m.decoding_mistakes(vocab, ids)))


@pytest.mark.points(1)
@pytest.mark.rules("decode.replace")
def test_decode_replaces_invalid_utf8(worker):
    """bytes that are not UTF-8 (a lone 0xff, a character cut short) decode to U+FFFD, not an error."""
    vocab = hand_vocab([])
    cases = [[0xFF], [0xE2, 0x82], [ord("a"), 0x80, ord("b")], [0xEA, 0xB0, 0x80, 0xEA]]
    got = student_decode(worker, vocab, [], cases)
    tokenizer = ref.BPETokenizer(vocab, [])
    for ids, text in zip(cases, got):
        expected = tokenizer.decode(ids)
        assert text == expected, (f"decode({ids}): got {text!r}, expected {expected!r}"
                                  + m.named(text, expected, m.decoding_mistakes(vocab, ids)))
