"""Public checks for exercises/seq2seq.py."""
import torch


def test_layer_shapes(seq2seq):
    encoder = seq2seq.EncoderLayer(16, 4, 32)
    decoder = seq2seq.DecoderLayer(16, 4, 32)
    x, y = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    real = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    memory = encoder(x, src_key_padding_mask=real)
    assert memory.shape == (2, 7, 16)
    assert decoder(y, memory, memory_key_padding_mask=real).shape == (2, 5, 16)


def test_model_shapes_and_greedy_decode(seq2seq):
    model = seq2seq.Seq2SeqTransformer(src_vocab=12, tgt_vocab=13, d_model=16, n_heads=4, n_layers=1, d_ff=32).eval()
    src = torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]])
    tgt = torch.tensor([[1, 5, 4], [1, 9, 8]])
    assert model(src, tgt).shape == (2, 3, 13)
    out = model.greedy_decode(src, bos_id=1, eos_id=2, max_len=6)
    assert out.shape[0] == 2 and out.shape[1] <= 6 and out[:, 0].tolist() == [1, 1]
