"""The reference block and model equal Hugging Face's GPT-2 and Llama (GQA, RoPE) given
the same weights, to float32 precision. Models are built offline from configs with eager
attention and dropout off; their weights are randomised (no checkpoint download)."""
import os

import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from solutions.convert import from_hugging_face  # noqa: E402

# float32 through three layers: the implementations order their sums differently; each
# layer's reductions (length <= 128) add ~sqrt(128) * eps32 ~ 1.3e-6, so ~4e-6 over three.
# Measured: 3e-7 on logits of size ~1. 1e-5 (about 80 eps32) keeps room for other draws.
ATOL = RTOL = 1e-5


def randomise(model, seed, std=0.2):
    """Non-default weights everywhere (norm weights of ones hide norm mistakes); norm gains
    stay around 1, since gains near 0 collapse a random model onto one repeated token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            gain = name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "norm.weight", "layernorm.weight"))
            p.copy_(1 + noise if gain else noise)
    return model


def gpt2(seed=0, tie=True):
    config = GPT2Config(vocab_size=97, n_positions=64, n_embd=48, n_layer=3, n_head=6,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tie)
    config._attn_implementation = "eager"
    return randomise(GPT2LMHeadModel(config).eval(), seed)


def llama(seed=0):
    config = LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                         attention_dropout=0.0, tie_word_embeddings=False)
    config._attn_implementation = "eager"
    return randomise(LlamaForCausalLM(config).eval(), seed)


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama-gqa-rope"])
def test_logits_equal_hugging_face(make):
    hf = make()
    ours = from_hugging_face(hf).eval()
    idx = torch.randint(0, hf.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama-gqa-rope"])
def test_one_block_equals_hugging_face(make):
    hf = make()
    ours = from_hugging_face(hf).eval()
    x = torch.randn(2, 9, hf.config.hidden_size if hasattr(hf.config, "hidden_size") else hf.config.n_embd)
    with torch.no_grad():
        if hf.config.model_type == "gpt2":
            # Hugging Face builds the causal mask at the model level: the block needs it given
            out = hf.transformer.h[0](x, attention_mask=_causal_4d(9))
            expected = out[0] if isinstance(out, tuple) else out
        else:
            positions = torch.arange(9)[None]
            cos_sin = hf.model.rotary_emb(x, positions)
            out = hf.model.layers[0](x, position_embeddings=cos_sin, attention_mask=_causal_4d(9),
                                     position_ids=positions)
            expected = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(ours.blocks[0](x), expected, atol=ATOL, rtol=RTOL)


def _causal_4d(n):
    """Hugging Face's additive 4-d causal mask: 0 where allowed, -inf where not."""
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.zeros(1, 1, n, n).masked_fill(~allowed, float("-inf"))


def test_gpt2_conversion_transposes_conv1d_and_splits_c_attn():
    hf = gpt2()
    ours = from_hugging_face(hf)
    d = hf.config.n_embd
    c_attn = hf.transformer.h[1].attn.c_attn.weight  # Conv1D: (in, 3 * d)
    assert c_attn.shape == (d, 3 * d)
    torch.testing.assert_close(ours.blocks[1].attn.k_proj.weight, c_attn[:, d:2 * d].T)
    assert ours.lm_head.weight is ours.tok_emb.weight  # GPT-2 ties its head


def test_untied_llama_keeps_its_own_head():
    ours = from_hugging_face(llama())
    assert ours.lm_head.weight is not ours.tok_emb.weight
    assert not torch.equal(ours.lm_head.weight, ours.tok_emb.weight)


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama-gqa-rope"])
def test_greedy_generation_equals_hugging_face_generate(make):
    from solutions.kv_cache import generate

    hf = make(seed=3)
    hf.generation_config.eos_token_id = None  # never stop early: compare every token
    hf.generation_config.pad_token_id = 0
    ours = from_hugging_face(hf).eval()
    idx = torch.randint(0, hf.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = hf.generate(idx, max_new_tokens=20, do_sample=False)
    tokens = generate(ours, idx, 20, use_cache=True)
    assert len(set(expected[:, 7:].flatten().tolist())) > 3, "degenerate test: the model repeats one token"
    assert torch.equal(tokens, expected)
    assert torch.equal(generate(ours, idx, 20, use_cache=False), expected)


def test_cache_layout_matches_hugging_face_dynamic_cache():
    """Our per-layer cache holds (b, n_kv_heads, seq, head_dim), as Hugging Face's DynamicCache
    layers do, and after the prompt it holds the same keys (after RoPE) and values."""
    from solutions.kv_cache import KVCache

    hf = llama(seed=5)
    ours = from_hugging_face(hf).eval()
    idx = torch.randint(0, hf.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(6))
    cache = KVCache(n_layers=3, batch_size=2, max_seq_len=10, n_kv_heads=2, head_dim=8)
    with torch.no_grad():
        past = hf(idx, use_cache=True).past_key_values
        ours(idx, cache=cache)
    for i in range(3):
        hf_keys, hf_values = past.layers[i].keys, past.layers[i].values
        assert hf_keys.shape == (2, 2, 6, 8) == cache.k[i, :, :, :6].shape
        torch.testing.assert_close(cache.k[i, :, :, :6], hf_keys, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(cache.v[i, :, :, :6], hf_values, atol=ATOL, rtol=RTOL)
