"""Public suite: exercises/seq2seq.py, the original encoder-decoder Transformer (lecture 09).

Random weights everywhere (norm gains around 1), float64, padding inside batches. It uses
your attention.py, layers.py and positional.py: finish those first.
"""
import pytest
import torch

from autograder.compare import angle_tolerance, check_tensor, largest_angle
from autograder.inputs import randn, random_state_dict

F64 = torch.float64
PRE_POST = {False: "this is a Pre-LN layer, but prenorm=False asks for Post-LN: x = norm(x + sublayer(x))",
            True: "this is a Post-LN layer, but prenorm=True asks for Pre-LN: x = x + sublayer(norm(x))"}
MASK_REVERSED = "the padding mask is reversed: True marks a real token, padding keys are never attended to"
NO_EMBED_SCALE = "the embeddings are not multiplied by sqrt(d_model) before the positions are added"
NOT_CAUSAL = "the decoder's self-attention is not causal: a target position sees later target tokens"
LAYER = {"d_model": 16, "n_heads": 4, "d_ff": 24}


def weights(module, seed):
    return random_state_dict(module, seed=seed, std=0.3, norm_gains_near_one=True)


def _layer(s, cls, prenorm, state=None, seed=None):
    module = getattr(s.seq2seq, cls)(16, 4, 24, prenorm=prenorm).double().eval()
    state = weights(module, seed) if state is None else state
    module.load_state_dict(state)
    return module, state


def padding(n, lengths):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]  # True = real token


@pytest.mark.points(1)
@pytest.mark.mirrors("layer_parameters", "model_parameters")
@pytest.mark.parametrize("cls", ["EncoderLayer", "DecoderLayer", "Seq2SeqTransformer-pre-ln"])
def test_public_parameters(worker, reference, cls):
    """the layers and the model have the API's submodules and shapes (enc_norm/dec_norm in Pre-LN)."""
    name, init = (("Seq2SeqTransformer", {**MODEL, "prenorm": True}) if cls.startswith("Seq2Seq") else (cls, LAYER))
    expected = reference(lambda s: {n: list(p.shape) for n, p in getattr(s.seq2seq, name)(**init).named_parameters()})
    expected = {n: tuple(shape) for n, shape in expected.items()}
    got = worker.adapters.module_parameters(f"seq2seq.{name}", init)
    params = {n: tuple(info["shape"]) for n, info in got["parameters"].items()}
    assert params == expected, (f"{name} parameters differ: missing {sorted(set(expected) - set(params))}, "
                                f"unexpected {sorted(set(params) - set(expected))}")


@pytest.mark.points(2)
@pytest.mark.mirrors("encoder_layer", "encoder_layer_norm_eps")
@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_public_encoder_layer(worker, reference, prenorm):
    """EncoderLayer matches the reference with a padding mask (Post-LN by default); inputs of tiny
    variance in Pre-LN, so the LayerNorms' eps = 1e-5 decides the output."""
    x = randn(2, 6, 16, seed=1701, dtype=F64, scale=1e-3 if prenorm else 1.0)
    pad = padding(6, [6, 4])

    def truth(s):
        module, state = _layer(s, "EncoderLayer", prenorm, seed=1702)
        with torch.no_grad():
            swapped = _layer(s, "EncoderLayer", not prenorm, state=state)[0]
            wrong = [(PRE_POST[not prenorm], swapped(x, src_key_padding_mask=pad)),
                     (MASK_REVERSED, module(x, src_key_padding_mask=~pad | ~pad.any(-1, keepdim=True)))]
            return [state, module(x, src_key_padding_mask=pad), wrong]

    state, expected, wrong = reference(truth)
    got = worker.adapters.module_forward("seq2seq.EncoderLayer", {**LAYER, "prenorm": prenorm}, state, [x],
                      {"src_key_padding_mask": pad}, dtype=F64)
    check_tensor(got["out"], expected, f"EncoderLayer(prenorm={prenorm})(x, padding)", n_terms=40, magnitude=8.0,
                 mistakes=lambda: wrong)


@pytest.mark.points(2)
@pytest.mark.mirrors("decoder_layer")
@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_public_decoder_layer(worker, reference, prenorm):
    """DecoderLayer: causal self-attention, cross-attention to memory, FFN, with padding masks."""
    y, memory = randn(2, 4, 16, seed=1703, dtype=F64), randn(2, 6, 16, seed=1704, dtype=F64)
    kwargs = {"tgt_key_padding_mask": padding(4, [4, 3]), "memory_key_padding_mask": padding(6, [6, 5])}

    def truth(s):
        module, state = _layer(s, "DecoderLayer", prenorm, seed=1705)
        with torch.no_grad():
            swapped = _layer(s, "DecoderLayer", not prenorm, state=state)[0]
            return [state, module(y, memory, **kwargs), [(PRE_POST[not prenorm], swapped(y, memory, **kwargs))]]

    state, expected, wrong = reference(truth)
    got = worker.adapters.module_forward("seq2seq.DecoderLayer", {**LAYER, "prenorm": prenorm}, state, [y, memory],
                      kwargs, dtype=F64)
    check_tensor(got["out"], expected, f"DecoderLayer(prenorm={prenorm})(y, memory, masks)", n_terms=40,
                 magnitude=8.0, mistakes=lambda: wrong)


MODEL = {"src_vocab": 17, "tgt_vocab": 13, "d_model": 16, "n_heads": 4, "n_layers": 1, "d_ff": 24, "max_len": 24}


def _model(s, prenorm, seed, **extra):
    module = s.seq2seq.Seq2SeqTransformer(**MODEL, prenorm=prenorm, **extra).double().eval()
    state = weights(module, seed)
    module.load_state_dict(state)
    return module, state


def model_tolerance(*token_batches):
    """float64 with a float32 sinusoidal table (the API's only float32 part): the float32 rounding
    of the angles up to the largest position and of their cos/sin (``angle_tolerance``)."""
    max_position = max(tokens.shape[1] for tokens in token_batches) - 1
    return angle_tolerance(F64, largest_angle(max_position), 1.0, n_terms=40, magnitude=8.0)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, 17, (2, 7), generator=g)
    src[1, 4:] = 0  # padding (pad_id 0)
    tgt = torch.randint(1, 13, (2, 5), generator=g)
    tgt[0, 3:] = 0
    return src, tgt


@pytest.mark.points(3)
@pytest.mark.mirrors("model_logits", "dropout_only_in_training")
@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_public_model_logits(worker, reference, prenorm):
    """forward(src, tgt) matches the reference (embedding scale, positions, masks from pad_id), also
    when built with dropout=0.2 (eval mode is deterministic)."""
    src, tgt = batch(1706)

    def truth(s):
        module, state = _model(s, prenorm, 1707)
        with torch.no_grad():
            expected = module(src, tgt)
            original = module.embed
            module.embed = lambda tokens, table: table(tokens) + module.positions[: tokens.shape[1]].double()
            unscaled = module(src, tgt)
            module.embed = original
        return [state, expected, unscaled]

    state, expected, unscaled = reference(truth)
    for extra in ({}, {"dropout": 0.2}):
        got = worker.adapters.module_forward("seq2seq.Seq2SeqTransformer", {**MODEL, "prenorm": prenorm, **extra},
                          state, [src, tgt], dtype=F64)
        check_tensor(got["out"], expected, f"Seq2SeqTransformer(prenorm={prenorm}, {extra})(src, tgt)",
                     tol=model_tolerance(src, tgt), mistakes=lambda: [(NO_EMBED_SCALE, unscaled)])


@pytest.mark.points(2)
@pytest.mark.mirrors("padding_never_influences_real_positions", "decoder_never_sees_future_targets")
def test_public_padding_and_causality(worker, reference):
    """appending source padding changes no logit; changing later target tokens changes no earlier logit."""
    state = reference(lambda s: _model(s, False, 1708)[1])
    src, tgt = batch(1709)
    init = {**MODEL, "prenorm": False}

    def logits(source, target):
        return worker.adapters.module_forward("seq2seq.Seq2SeqTransformer", init, state, [source, target],
                           dtype=F64)["out"]

    a = logits(src, tgt)
    longer = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)  # 3 more pad tokens
    check_tensor(logits(longer, tgt), a, "logits with 3 extra source pad tokens vs without", tol=1e-10)
    changed = tgt.clone()
    changed[:, 3:] = (changed[:, 3:] + 3) % 12 + 1
    b = logits(src, changed)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
    moved = (a[:, :3] - b[:, :3]).abs().max().item()
    assert moved < 1e-10, f"changing target tokens 3-4 moved the logits at positions 0-2 by {moved:.3g}: {NOT_CAUSAL}"


@pytest.mark.points(1)
@pytest.mark.mirrors("cross_attention_reads_the_encoder")
def test_public_cross_attention_reads_the_encoder(worker, reference):
    """decode(tgt, memory, src) depends on memory: a given memory gives the reference's logits."""
    src, tgt = batch(1710)
    memory = randn(2, 7, 16, seed=1711, dtype=F64)

    def truth(s):
        module, state = _model(s, False, 1712)
        with torch.no_grad():
            return [state, module.decode(tgt, memory, src)]

    state, expected = reference(truth)
    got = worker.adapters.module_method("seq2seq.Seq2SeqTransformer", {**MODEL, "prenorm": False}, state, "decode",
                      [tgt, memory, src], dtype=F64)
    check_tensor(got, expected, "decode(tgt, a given memory, src)", tol=model_tolerance(tgt))


@pytest.mark.points(2)
@pytest.mark.mirrors("greedy_decode")
def test_public_greedy_decode(worker, reference):
    """greedy_decode: bos first, eos kept then pad, stops when every row is done, <= max_len."""
    src, _ = batch(1713)

    def truth(s):
        module, state = _model(s, False, 1714)
        eos = int(module.greedy_decode(src, 1, 0, 3)[0, 1])  # a token the model does produce: a real eos test
        return [state, eos, module.greedy_decode(src, 1, eos, 9)]

    state, eos, expected = reference(truth)
    got = worker.adapters.module_method("seq2seq.Seq2SeqTransformer", {**MODEL, "prenorm": False}, state,
                      "greedy_decode", [src, 1, eos, 9], dtype=F64)
    check_tensor(got, expected, f"greedy_decode(src, bos_id=1, eos_id={eos}, max_len=9)")


@pytest.mark.points(1)
@pytest.mark.mirrors("padding_follows_pad_id")
def test_public_padding_follows_pad_id(worker, reference):
    """pad_id=4: source and target tokens 4 are padding, token 0 is an ordinary word."""
    src, tgt = batch(1715)  # row 1 of src and row 0 of tgt end in zeros: real tokens here
    src[0, 5:] = 4
    tgt[1, 4:] = 4

    def truth(s):
        module, state = _model(s, False, 1716, pad_id=4)
        with torch.no_grad():
            expected = module(src, tgt)
            module.pad_id = 0
            literal_zero = module(src, tgt)
        return [state, expected, [(s.mistakes.seq2seq.PADDING_FROM_ZERO, literal_zero)]]

    state, expected, known = reference(truth)
    got = worker.adapters.module_forward("seq2seq.Seq2SeqTransformer", {**MODEL, "prenorm": False, "pad_id": 4},
                      state, [src, tgt], dtype=F64)
    check_tensor(got["out"], expected, "Seq2SeqTransformer(pad_id=4)(src, tgt)", tol=model_tolerance(src, tgt),
                 mistakes=lambda: known)
