"""Trusted worker-side helpers for the tokenizer exercise.

The wire carries no ``bytes`` (autograder/replies.py accepts str, int, lists, dicts and
tensors), so a token's bytes travel as a hex string both ways (``b"\\xea\\xb0"`` <-> ``"eab0"``)
and token ids as int64 tensors (one node in the reply however long the text). These
helpers only reshape what the student's code returned, and say clearly when it returned
the wrong kind of thing; the grader decides everything from the plain values.
"""
import torch


def _hex(value, where):
    if type(value) is not bytes:
        raise TypeError(f"{where} is {type(value).__name__} {value!r:.60}; expected bytes")
    return value.hex()


def _unhex_vocab(vocab):
    return {int(i): bytes.fromhex(h) for i, h in vocab}


def _unhex_merges(merges):
    return [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in merges]


def _ids(ids, where):
    if not isinstance(ids, list):
        raise TypeError(f"{where} returned {type(ids).__name__}; expected a list of int token ids")
    bad = [i for i in ids if type(i) is not int]
    if bad:
        raise TypeError(f"{where} returned a list holding {type(bad[0]).__name__} {bad[0]!r:.40}; "
                        f"expected int token ids")
    return torch.tensor(ids, dtype=torch.int64)


def train(sub, target, text, vocab_size, special_tokens=()):
    """``train_bpe(text, vocab_size, special_tokens)`` -> {"vocab": [[id, hex], ...] sorted by
    id, "merges": [[hex, hex], ...]}."""
    result = sub.load(target)(text, vocab_size, list(special_tokens))
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(f"train_bpe returned {type(result).__name__}; expected a tuple (vocab, merges)")
    vocab, merges = result
    if not isinstance(vocab, dict):
        raise TypeError(f"train_bpe's vocab is {type(vocab).__name__}; expected a dict[int, bytes]")
    if not isinstance(merges, list):
        raise TypeError(f"train_bpe's merges are {type(merges).__name__}; expected a list of (bytes, bytes)")
    bad_keys = [k for k in vocab if type(k) is not int]
    if bad_keys:
        raise TypeError(f"train_bpe's vocab has the key {bad_keys[0]!r:.40}; keys must be int token ids")
    wire_vocab = [[i, _hex(vocab[i], f"vocab[{i}]")] for i in sorted(vocab)]
    wire_merges = []
    for n, pair in enumerate(merges):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"merges[{n}] is {type(pair).__name__} {pair!r:.60}; expected a tuple (bytes, bytes)")
        wire_merges.append([_hex(pair[0], f"merges[{n}][0]"), _hex(pair[1], f"merges[{n}][1]")])
    return {"vocab": wire_vocab, "merges": wire_merges}


def _tokenizer(sub, target, vocab, merges, special_tokens):
    return sub.load(target)(_unhex_vocab(vocab), _unhex_merges(merges), special_tokens=list(special_tokens))


def encode(sub, target, vocab, merges, special_tokens, texts):
    """``BPETokenizer(vocab, merges, special_tokens).encode(t)`` for each text: int64 tensors."""
    tokenizer = _tokenizer(sub, target, vocab, merges, special_tokens)
    return [_ids(tokenizer.encode(t), "encode") for t in texts]


def decode(sub, target, vocab, merges, special_tokens, id_lists):
    """``decode(ids)`` for each list of ids: the strings."""
    tokenizer = _tokenizer(sub, target, vocab, merges, special_tokens)
    out = []
    for ids in id_lists:
        text = tokenizer.decode(list(ids))
        if type(text) is not str:
            raise TypeError(f"decode returned {type(text).__name__}; expected a str")
        out.append(text)
    return out


def round_trip(sub, target, vocab, merges, special_tokens, texts):
    """For each text: the student's ``encode(t)`` (int64 tensor) and ``decode`` of it (str)."""
    tokenizer = _tokenizer(sub, target, vocab, merges, special_tokens)
    out = []
    for t in texts:
        ids = _ids(tokenizer.encode(t), "encode")
        text = tokenizer.decode(ids.tolist())
        if type(text) is not str:
            raise TypeError(f"decode returned {type(text).__name__}; expected a str")
        out.append({"ids": ids, "text": text})
    return out
