"""The reference encoder and decoder layers equal PyTorch's nn.TransformerEncoderLayer and
nn.TransformerDecoderLayer (Post-LN and Pre-LN) with copied weights, to float32 precision."""
import pytest
import torch

from solutions.seq2seq import DecoderLayer, EncoderLayer

# float32, two attention blocks and an FFN of width 64: a few eps32 * sqrt(64) per sublayer
ATOL = RTOL = 1e-5


def randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    return module


def copy_attention(theirs, ours):
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.o_proj.weight)
        theirs.out_proj.bias.copy_(ours.o_proj.bias)


def copy_linear_and_norms(theirs, ours, pairs):
    with torch.no_grad():
        for their_name, our_name in pairs:
            getattr(theirs, their_name).weight.copy_(getattr(ours, our_name).weight)
            getattr(theirs, their_name).bias.copy_(getattr(ours, our_name).bias)


@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_encoder_layer_equals_torch(prenorm):
    ours = randomise(EncoderLayer(32, 4, 64, prenorm=prenorm), seed=1).eval()
    theirs = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=prenorm).eval()
    copy_attention(theirs.self_attn, ours.self_attn)
    copy_linear_and_norms(theirs, ours, [("linear1", "fc1"), ("linear2", "fc2"), ("norm1", "norm1"), ("norm2", "norm2")])
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(2))
    real = torch.ones(3, 7, dtype=torch.bool)
    real[1, 4:] = False
    with torch.no_grad():
        expected = theirs(x, src_key_padding_mask=~real)  # PyTorch's mask: True = padding
        got = ours(x, src_key_padding_mask=real)  # the course's: True = real token
    # PyTorch's fast path may zero the rows of padding queries; compare the real positions
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("prenorm", [False, True], ids=["post-ln", "pre-ln"])
def test_decoder_layer_equals_torch(prenorm):
    ours = randomise(DecoderLayer(32, 4, 64, prenorm=prenorm), seed=3).eval()
    theirs = torch.nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=prenorm).eval()
    copy_attention(theirs.self_attn, ours.self_attn)
    copy_attention(theirs.multihead_attn, ours.cross_attn)
    copy_linear_and_norms(theirs, ours, [("linear1", "fc1"), ("linear2", "fc2"), ("norm1", "norm1"),
                                         ("norm2", "norm2"), ("norm3", "norm3")])
    g = torch.Generator().manual_seed(4)
    y, memory = torch.randn(3, 5, 32, generator=g), torch.randn(3, 7, 32, generator=g)
    memory_real = torch.ones(3, 7, dtype=torch.bool)
    memory_real[2, 5:] = False
    causal = torch.nn.Transformer.generate_square_subsequent_mask(5)  # -inf above the diagonal
    with torch.no_grad():
        expected = theirs(y, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~memory_real)
        got = ours(y, memory, memory_key_padding_mask=memory_real)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
