"""Public checks for exercises/layers.py, decoder_block.py and gpt.py."""
import math

import torch


def test_layernorm_normalises_rows(layers):
    ln = layers.LayerNorm(6)
    out = ln(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]))
    torch.testing.assert_close(out.mean(-1), torch.zeros(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(1), atol=1e-4, rtol=0)  # biased variance 1


def test_rmsnorm_small_example(layers):
    rms = layers.RMSNorm(2, eps=0.0)
    torch.testing.assert_close(rms(torch.tensor([[3.0, 4.0]])), torch.tensor([[3.0, 4.0]]) / math.sqrt(12.5))


def test_activations_at_known_points(layers):
    assert layers.silu(torch.tensor(0.0)).item() == 0.0
    torch.testing.assert_close(layers.silu(torch.tensor(1.0)), torch.tensor(1 / (1 + math.exp(-1))))
    torch.testing.assert_close(layers.gelu_tanh(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 0.841192]),
                               atol=1e-5, rtol=0)


def test_ffn_shapes(layers):
    assert layers.FeedForward(8, 32)(torch.randn(2, 3, 8)).shape == (2, 3, 8)
    assert layers.SwiGLU(8, 20)(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_block_shapes(decoder_block):
    for config in [decoder_block.BlockConfig(d_model=16, n_heads=4),
                   decoder_block.BlockConfig(d_model=16, n_heads=4, n_kv_heads=2, norm="rmsnorm",
                                             ffn="swiglu", rope_theta=10000.0, bias=False)]:
        block = decoder_block.DecoderBlock(config)
        assert block(torch.randn(2, 5, 16)).shape == (2, 5, 16)


def test_gpt_shapes_and_tying(gpt, decoder_block):
    config = gpt.GPTConfig(vocab_size=30, max_seq_len=8, n_layers=2,
                           block=decoder_block.BlockConfig(d_model=16, n_heads=4))
    model = gpt.GPT(config)
    assert model(torch.randint(0, 30, (2, 5))).shape == (2, 5, 30)
    assert model.lm_head.weight is model.tok_emb.weight
