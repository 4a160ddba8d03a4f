"""Public suite: exercises/tokenizer.py (lecture 05), a byte-level BPE. Small texts of its
own (the staff's suite trains on the course corpus and tries more): training by the rules,
the vocab's layout, encode in merge order, special tokens, decode and the round trip.
Tokens travel as hex strings between your code's worker and the grader."""
import pytest

EOS, EOS2 = "<eos>", "<eos><eos>"
TRAIN = "tokenizer.train_bpe"
TOKENIZER = "tokenizer.BPETokenizer"


def _named(actual, expected, mistakes):
    found = [text for text, wrong in mistakes if wrong != expected and wrong == actual]
    if len(found) == 1:
        return f"\n  This looks like a known mistake: {found[0]}"
    return "\n  This looks like one of these known mistakes: " + "; or ".join(found) if found else ""


def _train(worker, text, vocab_size, specials=()):
    got = worker.adapters.tokenizer.train(TRAIN, text, vocab_size, list(specials))
    return {i: h for i, h in got["vocab"]}, [list(pair) for pair in got["merges"]]


def _wire(vocab, merges):
    return [[i, vocab[i].hex()] for i in sorted(vocab)], [[a.hex(), b.hex()] for a, b in merges]


def _reference_training(s, text, vocab_size, specials=()):
    vocab, merges = s.tokenizer.train_bpe(text, vocab_size, specials)
    return {str(i): b.hex() for i, b in vocab.items()}, [[a.hex(), b.hex()] for a, b in merges]


def _training_mistakes(s, text, vocab_size, specials=()):
    from autograder.mistakes import tokenizer as m

    return [(sentence, [[a.hex(), b.hex()] for a, b in merges])
            for sentence, merges in m.training_mistakes(text, vocab_size, specials)]


TRAINING = {  # name -> (text, vocab_size, special_tokens)
    "hand-example": ("low lower lowest newer newest", 256 + 8, ()),
    "ties": ("ba ab dc cd", 256 + 5, ()),
    "inside-pretokens": ("q!q!q!q! rr", 256 + 2, ()),
    "frequency": ("ok ok mm mm mm", 256 + 2, ()),
    "specials": ("hi" + EOS + "hi" + EOS2 + " x" + EOS * 3, 256 + 2 + 3, (EOS, EOS2)),
    "korean": ("대한민국 대한 민국 한국어 한국", 256 + 12, ()),
    "contractions": ("we'll see; it's Abel's, it's Cain's. they'd say you're gone! " * 2, 256 + 3, ()),
}


@pytest.mark.points(2)
@pytest.mark.mirrors("merges_match_reference", "ties_go_to_the_greatest_pair", "pairs_stay_inside_pretokens",
                     "pretokens_follow_the_gpt2_pattern",
                     "pretokens_weighted_by_frequency", "special_tokens_never_counted")
@pytest.mark.parametrize("name", list(TRAINING))
def test_public_training(worker, reference, name):
    """train_bpe's merges equal the reference's (most frequent pair, ties to the greatest, inside pre-tokens)."""
    text, vocab_size, specials = TRAINING[name]
    (ref_vocab, expected), known = reference(lambda s: [_reference_training(s, text, vocab_size, specials),
                                                        _training_mistakes(s, text, vocab_size, specials)])
    vocab, merges = _train(worker, text, vocab_size, specials)
    assert merges == expected, (f"train_bpe({text!r}, {vocab_size}, {list(specials)}): merges (hex) {merges}, "
                                f"expected {expected}" + _named(merges, expected, known))
    assert {str(i): h for i, h in vocab.items()} == ref_vocab, "the merges are right but the vocab differs"


@pytest.mark.points(1)
@pytest.mark.mirrors("vocab_layout", "vocab_size_reached", "training_stops_when_no_pair_is_left")
def test_public_vocab_ids_in_order(worker):
    """ids 0-255 are the bytes, then the special tokens, then one id per merge; vocab_size is reached."""
    vocab, merges = _train(worker, "aaa bbb aaa" + EOS, 256 + 1 + 3, [EOS])
    assert [vocab.get(i) for i in range(256)] == [bytes([i]).hex() for i in range(256)], "ids 0-255: the bytes"
    assert vocab.get(256) == EOS.encode().hex(), f"vocab[256] is {vocab.get(256)}; expected {EOS!r} (hex)"
    assert len(vocab) == 256 + 1 + 3, f"vocab_size 260: got {len(vocab)} entries"
    for n, (a, b) in enumerate(merges):
        assert vocab.get(257 + n) == a + b, f"vocab[{257 + n}] should be merge {n} joined ({a}+{b})"
    small, _ = _train(worker, "ab", 1000)
    assert len(small) == 257, f"train_bpe('ab', 1000): one merge, then no pair is left: got {len(small)} entries"


RANKED = [(b"c", b"d"), (b"b", b"c"), (b"bc", b"d")]


def _hand_vocab(merges):
    vocab = dict(enumerate(bytes([byte]) for byte in range(256)))  # the 256 single bytes first
    for a, b in merges:
        vocab[len(vocab)] = a + b
    return vocab


@pytest.mark.points(2)
@pytest.mark.mirrors("encode_applies_merges_in_rank_order", "encode_keeps_pretokens_apart", "encode_matches_reference")
def test_public_encode_in_merge_order(worker, reference):
    """within a pre-token the lowest-ranked merge present applies first; merges never join pre-tokens."""
    vocab = _hand_vocab(RANKED)
    texts = ["bcd", "bcd bcd", "cdcd bc", "bcbcd"]
    expected = reference(lambda s: [s.tokenizer.BPETokenizer(vocab, RANKED).encode(t) for t in texts])
    got = worker.adapters.tokenizer.encode(TOKENIZER, *_wire(vocab, RANKED), [], texts)
    for text, ids, want in zip(texts, got, expected):
        assert ids.tolist() == want, (f"encode({text!r}) with merges {RANKED}: got {ids.tolist()}, expected {want} "
                                      f"(in 'bcd' the merge (c, d) has rank 0, so it applies first)")
    # "x y" is two pre-tokens, "x" and " y": the merge (x, " ") never applies
    apart = [(b"x", b" "), (b" ", b"y")]
    (ids,) = worker.adapters.tokenizer.encode(TOKENIZER, *_wire(_hand_vocab(apart), apart), [], ["x y"])
    assert ids.tolist() == [ord("x"), 257], (f"encode('x y') with merges {apart}: got {ids.tolist()}, expected "
                                             f"[120, 257] ('x' and ' y': merges never join two pre-tokens)")


@pytest.mark.points(1)
@pytest.mark.mirrors("special_tokens_encode_to_their_ids")
def test_public_special_tokens(worker, reference):
    """special tokens become their ids, the longest first: '<eos><eos>' is one token."""
    texts = [EOS, EOS * 3, "a" + EOS + "b", "<eo" + EOS]
    vocab, merges, expected = reference(lambda s: _special_truth(s, texts))
    vocab = {int(i): bytes.fromhex(h) for i, h in vocab.items()}
    merges = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in merges]
    got = worker.adapters.tokenizer.encode(TOKENIZER, *_wire(vocab, merges), [EOS, EOS2], texts)
    for text, ids, want in zip(texts, got, expected):
        assert ids.tolist() == want, f"encode({text!r}) with special tokens [{EOS!r}, {EOS2!r}]: got {ids.tolist()}, expected {want}"


def _special_truth(s, texts):
    vocab, merges = s.tokenizer.train_bpe("eos " * 5 + EOS, 256 + 2 + 4, [EOS, EOS2])
    tokenizer = s.tokenizer.BPETokenizer(vocab, merges, [EOS, EOS2])
    return ({str(i): b.hex() for i, b in vocab.items()}, [[a.hex(), b.hex()] for a, b in merges],
            [tokenizer.encode(t) for t in texts])


@pytest.mark.points(2)
@pytest.mark.mirrors("round_trip", "decode_joins_bytes_before_decoding", "decode_replaces_invalid_utf8")
def test_public_decode_and_round_trip(worker):
    """decode joins the bytes, then decodes with errors='replace'; decode(encode(t)) == t."""
    vocab = _hand_vocab(RANKED)
    texts = ["한국어 텍스트", "tabs\t\tand  spaces  ", "é vs e\u0301", "🙂👍🏽", ""]
    got = worker.adapters.tokenizer.round_trip(TOKENIZER, *_wire(vocab, RANKED), [], texts)
    for text, result in zip(texts, got):
        assert result["text"] == text, f"decode(encode({text!r})) gave {result['text']!r}"
    cases = {(0xED, 0x95, 0x9C): "한", (0xED, 0x95): "\ufffd", (0x41, 0xFF): "A\ufffd"}
    got = worker.adapters.tokenizer.decode(TOKENIZER, *_wire(vocab, RANKED), [], [list(c) for c in cases])
    for ids, text in zip(cases, got):
        assert text == cases[ids], f"decode({list(ids)}): got {text!r}, expected {cases[ids]!r}"
