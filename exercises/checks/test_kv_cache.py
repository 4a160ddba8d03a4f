"""Public checks for exercises/kv_cache.py."""
import torch


def test_kv_cache_bytes_7b_example(kv_cache):
    assert kv_cache.kv_cache_bytes(32, 32, 128, 2048) == 2 ** 30  # 1 GiB in float16


def test_cache_update_shapes(kv_cache):
    cache = kv_cache.KVCache(n_layers=2, batch_size=1, max_seq_len=6, n_kv_heads=2, head_dim=4)
    k, v = cache.layer(0).update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))
    assert k.shape == v.shape == (1, 2, 3, 4)
    k, v = cache.layer(0).update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    assert k.shape == (1, 2, 4, 4) and cache.layer(0).seq_len == 4


def test_greedy_sampling_is_argmax(kv_cache):
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
    assert kv_cache.sample_next_token(logits, temperature=0.0).tolist() == [1, 0]


def test_generate_appends_tokens(kv_cache, gpt, decoder_block):
    model = gpt.GPT(gpt.GPTConfig(vocab_size=20, max_seq_len=16, n_layers=1,
                                  block=decoder_block.BlockConfig(d_model=16, n_heads=4)))
    out = kv_cache.generate(model, torch.tensor([[1, 2, 3]]), 4)
    assert out.shape == (1, 7) and out[0, :3].tolist() == [1, 2, 3]
