"""Hidden suite: exercises/seq2seq.py, the original encoder-decoder Transformer.

Random weights everywhere (norm gains around 1), float64, padding in the middle of batches.
Properties are checked on the student's own outputs: padding never influences real
positions, the decoder never sees later target tokens, cross-attention reads the memory.
"""
import pytest
import torch

from autograder.compare import angle_tolerance, check_parameters, check_tensor, largest_angle
from autograder.inputs import randn, random_state_dict
from autograder.mistakes.seq2seq import MASK_REVERSED, NO_EMBED_SCALE, NOT_CAUSAL, PADDING_FROM_ZERO, PRE_POST
from solutions import seq2seq as ref

F64 = torch.float64


def weights(module, seed):
    return random_state_dict(module, seed=seed, std=0.3, norm_gains_near_one=True)


def layer(cls, prenorm, seed):
    module = getattr(ref, cls)(24, 4, 40, prenorm=prenorm).double().eval()
    state = weights(module, seed)
    module.load_state_dict(state)
    return module, state


def padding(b, n, lengths):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]  # True = real token


@pytest.mark.points(1)
@pytest.mark.rules("layer.attention-bias", "layer.submodules")
@pytest.mark.parametrize("cls", ["EncoderLayer", "DecoderLayer"])
def test_layer_parameters(worker, cls):
    """layers have the API's submodules (self_attn, norms, cross_attn, fc1, fc2) and shapes."""
    got = worker.adapters.module_parameters(cls=f"seq2seq.{cls}",
                                            init_kwargs={"d_model": 24, "n_heads": 4, "d_ff": 40})
    expected = {n: tuple(p.shape) for n, p in getattr(ref, cls)(24, 4, 40).named_parameters()}
    check_parameters(got, expected, cls)


@pytest.mark.points(2)
@pytest.mark.rules("layer.post-ln-default", "layer.relu", "layer.padding-mask")
@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_encoder_layer(worker, prenorm):
    """EncoderLayer matches the reference with a padding mask (Post-LN by default)."""
    module, state = layer("EncoderLayer", prenorm, seed=1)
    x = randn(3, 7, 24, seed=2, dtype=F64)
    pad = padding(3, 7, [7, 4, 6])
    init = {"d_model": 24, "n_heads": 4, "d_ff": 40, "prenorm": prenorm}
    got = worker.adapters.module_forward(cls="seq2seq.EncoderLayer", init_kwargs=init, state_dict=state,
                                         args=[x], kwargs={"src_key_padding_mask": pad}, dtype=F64)
    with torch.no_grad():
        expected = module(x, src_key_padding_mask=pad)
        swapped = getattr(ref, "EncoderLayer")(24, 4, 40, prenorm=not prenorm).double()
        swapped.load_state_dict(state)
        wrong = [(PRE_POST[not prenorm], swapped(x, src_key_padding_mask=pad)),
                 (MASK_REVERSED, module(x, src_key_padding_mask=~pad | ~pad.any(-1, keepdim=True)))]
    check_tensor(got["out"], expected, f"EncoderLayer(prenorm={prenorm})(x, padding)", n_terms=40, magnitude=8.0,
                 mistakes=lambda: wrong)


@pytest.mark.points(1)
@pytest.mark.rules("layer.layernorm-eps")
def test_encoder_layer_norm_eps(worker):
    """the layers' LayerNorms use eps = 1e-5: on inputs of tiny variance (x ~ 1e-3, Pre-LN, so norm1 sees
    x itself) eps decides the output."""
    module, state = layer("EncoderLayer", True, seed=31)
    x = randn(2, 5, 24, seed=32, dtype=F64, scale=1e-3)
    pad = padding(2, 5, [5, 5])
    init = {"d_model": 24, "n_heads": 4, "d_ff": 40, "prenorm": True}
    got = worker.adapters.module_forward(cls="seq2seq.EncoderLayer", init_kwargs=init, state_dict=state,
                                         args=[x], kwargs={"src_key_padding_mask": pad}, dtype=F64)
    with torch.no_grad():
        expected = module(x, src_key_padding_mask=pad)
    # |x| / sqrt(var + eps) stays below 1/sqrt(1e-5 / 1e-6 + 1) ~ 0.3 amplification: no cancellation
    check_tensor(got["out"], expected, "EncoderLayer(prenorm=True)(x of variance ~1e-6)", n_terms=40, magnitude=8.0)


@pytest.mark.points(2)
@pytest.mark.rules("decoder.causal", "decoder.cross-attention")
@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_decoder_layer(worker, prenorm):
    """DecoderLayer: causal self-attention, cross-attention to memory, FFN, with padding masks."""
    module, state = layer("DecoderLayer", prenorm, seed=3)
    y, memory = randn(3, 5, 24, seed=4, dtype=F64), randn(3, 7, 24, seed=5, dtype=F64)
    tgt_pad, mem_pad = padding(3, 5, [5, 3, 4]), padding(3, 7, [7, 4, 6])
    init = {"d_model": 24, "n_heads": 4, "d_ff": 40, "prenorm": prenorm}
    kwargs = {"tgt_key_padding_mask": tgt_pad, "memory_key_padding_mask": mem_pad}
    got = worker.adapters.module_forward(cls="seq2seq.DecoderLayer", init_kwargs=init, state_dict=state,
                                         args=[y, memory], kwargs=kwargs, dtype=F64)
    with torch.no_grad():
        expected = module(y, memory, **kwargs)
        swapped = ref.DecoderLayer(24, 4, 40, prenorm=not prenorm).double()
        swapped.load_state_dict(state)
        wrong = [(PRE_POST[not prenorm], swapped(y, memory, **kwargs))]
    check_tensor(got["out"], expected, f"DecoderLayer(prenorm={prenorm})(y, memory, masks)", n_terms=40,
                 magnitude=8.0, mistakes=lambda: wrong)


MODEL = {"src_vocab": 23, "tgt_vocab": 19, "d_model": 24, "n_heads": 4, "n_layers": 2, "d_ff": 40, "max_len": 32}


def model(prenorm, seed, **extra):
    module = ref.Seq2SeqTransformer(**MODEL, prenorm=prenorm, **extra).double().eval()
    state = weights(module, seed)
    module.load_state_dict(state)
    return module, state


def model_tolerance(*token_batches):
    """The precision contract's tolerance for a float64 model: its sinusoidal table is float32
    (the API's only float32 part), and two correct float32 tables (computed in float32, or
    in float64 and rounded) differ by the float32 rounding of the angles pos * 10000^(-2i/d)
    and of their cos/sin. The largest angle is the largest position used (frequency 1 at
    i = 0); the table's entries are at most 1 in size (``angle_tolerance``)."""
    max_position = max(tokens.shape[1] for tokens in token_batches) - 1
    return angle_tolerance(F64, largest_angle(max_position), 1.0, n_terms=40, magnitude=8.0)


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(1, 23, (3, 8), generator=g)
    src[1, 5:] = 0  # padding (pad_id 0)
    tgt = torch.randint(1, 19, (3, 6), generator=g)
    tgt[2, 4:] = 0
    return src, tgt


@pytest.mark.points(1)
@pytest.mark.rules("model.final-norms", "model.out_proj-bias")
@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_model_parameters(worker, prenorm):
    """Seq2SeqTransformer has src_emb, tgt_emb, encoder, decoder, out_proj (and enc_norm/dec_norm in Pre-LN)."""
    got = worker.adapters.module_parameters(cls="seq2seq.Seq2SeqTransformer",
                                            init_kwargs={**MODEL, "prenorm": prenorm})
    expected = {n: tuple(p.shape) for n, p in ref.Seq2SeqTransformer(**MODEL, prenorm=prenorm).named_parameters()}
    check_parameters(got, expected, "Seq2SeqTransformer")


@pytest.mark.points(3)
@pytest.mark.rules("layer.post-ln-default",
                   "layer.relu",
                   "layer.padding-mask",
                   "model.embedding-scale",
                   "model.sinusoidal",
                   "model.final-norms")
@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_model_logits(worker, prenorm):
    """forward(src, tgt) matches the reference (embedding scale, positions, masks from pad_id)."""
    module, state = model(prenorm, seed=6)
    src, tgt = batch(7)
    got = worker.adapters.module_forward(cls="seq2seq.Seq2SeqTransformer",
                                         init_kwargs={**MODEL, "prenorm": prenorm}, state_dict=state,
                                         args=[src, tgt], dtype=F64)
    with torch.no_grad():
        expected = module(src, tgt)
        original = module.embed
        module.embed = lambda tokens, table: table(tokens) + module.positions[: tokens.shape[1]].double()
        unscaled = module(src, tgt)
        module.embed = original
    check_tensor(got["out"], expected, f"Seq2SeqTransformer(prenorm={prenorm})(src, tgt)",
                 tol=model_tolerance(src, tgt), mistakes=lambda: [(NO_EMBED_SCALE, unscaled)])


@pytest.mark.points(2)
@pytest.mark.rules("layer.padding-mask")
def test_padding_never_influences_real_positions(worker):
    """appending padding to the source changes no logit (pad keys are never attended to)."""
    _, state = model(False, seed=8)
    src, tgt = batch(9)
    longer = torch.cat([src, torch.zeros(3, 4, dtype=torch.long)], dim=1)  # 4 more pad tokens
    init = {**MODEL, "prenorm": False}
    a = worker.adapters.module_forward(cls="seq2seq.Seq2SeqTransformer", init_kwargs=init, state_dict=state,
                                       args=[src, tgt], dtype=F64)["out"]
    b = worker.adapters.module_forward(cls="seq2seq.Seq2SeqTransformer", init_kwargs=init, state_dict=state,
                                       args=[longer, tgt], dtype=F64)["out"]
    check_tensor(b, a, "logits with 4 extra source pad tokens vs without", tol=1e-10)


@pytest.mark.points(2)
@pytest.mark.rules("decoder.causal")
def test_decoder_never_sees_future_targets(worker):
    """changing later target tokens changes no earlier logit."""
    _, state = model(False, seed=10)
    src, tgt = batch(11)
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 3) % 18 + 1
    init = {**MODEL, "prenorm": False}
    a = worker.adapters.module_forward(cls="seq2seq.Seq2SeqTransformer", init_kwargs=init, state_dict=state,
                                       args=[src, tgt], dtype=F64)["out"]
    b = worker.adapters.module_forward(cls="seq2seq.Seq2SeqTransformer", init_kwargs=init, state_dict=state,
                                       args=[src, changed], dtype=F64)["out"]
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
    moved = (a[:, :4] - b[:, :4]).abs().max().item()
    assert moved < 1e-10, f"changing target tokens 4-5 moved the logits at positions 0-3 by {moved:.3g}: {NOT_CAUSAL}"


@pytest.mark.points(1)
@pytest.mark.rules("decoder.cross-attention")
def test_cross_attention_reads_the_encoder(worker):
    """decode(tgt, memory, src) depends on memory: another memory gives the reference's other logits."""
    module, state = model(False, seed=12)
    src, tgt = batch(13)
    memory = randn(3, 8, 24, seed=14, dtype=F64)
    got = worker.adapters.module_method(cls="seq2seq.Seq2SeqTransformer",
                                        init_kwargs={**MODEL, "prenorm": False}, state_dict=state,
                                        method="decode", args=[tgt, memory, src], dtype=F64)
    with torch.no_grad():
        expected = module.decode(tgt, memory, src)
    # the memory is given: only the target embeddings carry the float32 table
    check_tensor(got, expected, "decode(tgt, a given memory, src)", tol=model_tolerance(tgt))


@pytest.mark.points(2)
@pytest.mark.rules("greedy.eos-then-pad")
def test_greedy_decode(worker):
    """greedy_decode: bos first, eos kept then pad, stops when every row is done, <= max_len."""
    module, state = model(False, seed=15)
    src, _ = batch(16)
    eos = int(module.greedy_decode(src, 1, 0, 3)[0, 1])  # a token the model does produce: a real eos test
    got = worker.adapters.module_method(cls="seq2seq.Seq2SeqTransformer",
                                        init_kwargs={**MODEL, "prenorm": False}, state_dict=state,
                                        method="greedy_decode", args=[src, 1, eos, 12], dtype=F64)
    expected = module.greedy_decode(src, 1, eos, 12)
    check_tensor(got, expected, f"greedy_decode(src, bos_id=1, eos_id={eos}, max_len=12)")


@pytest.mark.points(1)
@pytest.mark.rules("layer.dropout-training-only")
def test_dropout_only_in_training(worker):
    """with dropout=0.3, eval mode gives the deterministic reference output."""
    module, state = model(False, seed=17)
    src, tgt = batch(18)
    got = worker.adapters.module_forward(cls="seq2seq.Seq2SeqTransformer",
                                         init_kwargs={**MODEL, "prenorm": False, "dropout": 0.3},
                                         state_dict=state, args=[src, tgt], dtype=F64)
    with torch.no_grad():
        expected = module(src, tgt)
    check_tensor(got["out"], expected, "Seq2SeqTransformer(dropout=0.3) in eval mode",
                 tol=model_tolerance(src, tgt))


def eos_bias_for_early_stop(module, src, eos, max_len):
    """An out_proj bias on ``eos`` with which the reference finishes every row before
    ``max_len``, the rows at different steps (so "stop early" and "pad after eos" both show).
    Searched on the reference, a deterministic float64 model: the same bias every run."""
    original = module.out_proj.bias.detach().clone()
    try:
        for boost in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0):
            with torch.no_grad():
                module.out_proj.bias.copy_(original)
                module.out_proj.bias[eos] += boost
                out = module.greedy_decode(src, 1, eos, max_len)
            finished_at = [(row[1:] == eos).nonzero()[0, 0].item() if (row[1:] == eos).any() else None for row in out]
            if out.shape[1] < max_len and None not in finished_at and len(set(finished_at)) > 1:
                return boost
        raise AssertionError("grader error: no eos bias makes the reference stop early")  # the suite's own fault
    finally:
        with torch.no_grad():
            module.out_proj.bias.copy_(original)


@pytest.mark.points(1)
@pytest.mark.rules("greedy.stops-early")
def test_greedy_decode_stops_when_every_row_finished(worker):
    """every row emits eos within a few steps: greedy_decode stops there (fewer than max_len
    columns), each row padded after its own eos."""
    module, state = model(False, seed=19)
    src, _ = batch(20)
    eos, max_len = 10, 16  # a token, not bos (1), that the biased reference emits at different steps
    boost = eos_bias_for_early_stop(module, src, eos, max_len)
    state = {**state, "out_proj.bias": state["out_proj.bias"].clone()}
    state["out_proj.bias"][eos] += boost
    module.load_state_dict(state)
    got = worker.adapters.module_method(cls="seq2seq.Seq2SeqTransformer",
                                        init_kwargs={**MODEL, "prenorm": False}, state_dict=state,
                                        method="greedy_decode", args=[src, 1, eos, max_len],
                                        dtype=F64)
    with torch.no_grad():
        expected = module.greedy_decode(src, 1, eos, max_len)
    if isinstance(got, torch.Tensor) and got.dim() == 2 and got.shape[1] > expected.shape[1] \
            and torch.equal(got[:, :expected.shape[1]], expected):
        raise AssertionError(f"greedy_decode went on to {got.shape[1]} columns although every row had emitted "
                             f"eos_id={eos} after {expected.shape[1]}: stop once every row has finished")
    check_tensor(got, expected, f"greedy_decode(src, bos_id=1, eos_id={eos}, max_len={max_len}) "
                                f"where every row finishes early")


@pytest.mark.points(1)
@pytest.mark.rules("model.masks-from-pad_id")
def test_padding_follows_pad_id(worker):
    """pad_id=3: source tokens 3 are padding (never attended to), token 0 is an ordinary word."""
    extra = {"pad_id": 3}
    module, state = model(False, seed=21, **extra)
    src, tgt = batch(22)  # rows 1 of src and 2 of tgt end in zeros: here real tokens
    src[0, 6:] = 3  # padding
    tgt[1, 5:] = 3
    got = worker.adapters.module_forward(cls="seq2seq.Seq2SeqTransformer",
                                         init_kwargs={**MODEL, "prenorm": False, **extra},
                                         state_dict=state, args=[src, tgt], dtype=F64)
    with torch.no_grad():
        expected = module(src, tgt)
        module.pad_id = 0
        literal_zero = module(src, tgt)
        module.pad_id = 3
    check_tensor(got["out"], expected, "Seq2SeqTransformer(pad_id=3)(src, tgt)", tol=model_tolerance(src, tgt),
                 mistakes=lambda: [(PADDING_FROM_ZERO,
                                    literal_zero)])
