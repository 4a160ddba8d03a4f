"""Hidden suite: exercises/kv_cache.py (lecture 07), and the cache inside your GPT.

The model tests build YOUR GPT (gpt.py, decoder_block.py, attention.py) with the grader's
weights and YOUR KVCache, and compare with the reference model run without a cache.
Weights are drawn from N(0, 0.3) and compared in float64, so greedy tokens do not tie.
"""

import pytest
import torch

from autograder import static
from autograder.adapters.kv_cache import probe_next_token
from autograder.compare import angle_tolerance, check_tensor, largest_angle, rope_input_size, tolerance
from autograder.inputs import randint, randn, random_state_dict
from autograder.mistakes.kv_cache import KV_REPEATED, NO_OFFSET, PROMPT_RERUN, WRONG_AXIS
from solutions import kv_cache as ref
from solutions.decoder_block import BlockConfig
from solutions.gpt import GPT, GPTConfig

F64 = torch.float64

CONFIGS = {
    "gpt2": dict(vocab_size=61, max_seq_len=48, n_layers=2, block=dict(d_model=24, n_heads=6)),
    "llama-gqa": dict(vocab_size=67, max_seq_len=48, n_layers=2, learned_positions=False, tie_weights=False,
                      block=dict(d_model=24, n_heads=6, n_kv_heads=2, d_ff=40, norm="rmsnorm",
                                 ffn="swiglu", rope_theta=10000.0, bias=False)),
}


def reference(name, seed):
    config = CONFIGS[name]
    model = GPT(GPTConfig(**{**config, "block": BlockConfig(**config["block"])})).double()
    # norm gains near 1: near-zero gains collapse a random GPT-2 onto one token, and greedy
    # tokens that never change cannot tell a broken cache apart
    state = random_state_dict(model, seed=seed, std=0.3, norm_gains_near_one=True)
    if model.config.tie_weights:
        state["lm_head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state)
    return model.eval(), state


def model_tolerance(model, run, max_position, n_terms=40, magnitude=4.0):
    """The precision contract's tolerance for what ``run()`` computes with ``model`` in float64:
    with RoPE the float32 angles up to ``max_position`` (the API's only float32 part) move the
    result by up to the largest angle times eps32 times the size of the rotated q and k
    (``angle_tolerance``); with learned positions only the plain ``tolerance``."""
    if model.config.block.rope_theta is None:
        return tolerance(F64, n_terms, magnitude)
    return angle_tolerance(F64, largest_angle(max_position), rope_input_size(model, run), n_terms, magnitude)


def tokens(name, seed, length, batch=2):
    return randint(0, CONFIGS[name]["vocab_size"], batch, length, seed=seed)


# ---------------------------------------------------------------------------------------
# kv_cache_bytes
# ---------------------------------------------------------------------------------------
@pytest.mark.points(2)
@pytest.mark.rules("kv_cache_bytes.formula", "kv_cache_bytes.default-bytes")
def test_kv_cache_bytes_worked_examples(worker):
    """kv_cache_bytes: 7B at 2048 tokens = 1 GiB; LLaMA-3-70B (8 KV heads) at 1M tokens ~ 328 GB."""
    cases = [((32, 32, 128, 2048), {}, 2 ** 30),
             ((80, 8, 128, 1_000_000), {}, 327_680_000_000),
             ((2, 4, 16, 10), {"batch_size": 3, "bytes_per_elem": 4}, 2 * 2 * 3 * 10 * 4 * 16 * 4)]
    for args, kwargs, expected in cases:
        got = worker.call("kv_cache.kv_cache_bytes", *args, **kwargs)
        hint = " (the factor 2 counts keys AND values)" if got == expected // 2 else ""
        assert got == expected, f"kv_cache_bytes{args} {kwargs}: expected {expected:,}, got {got!r}{hint}"


# ---------------------------------------------------------------------------------------
# KVCache and LayerKVCache
# ---------------------------------------------------------------------------------------
CACHE = dict(n_layers=2, batch_size=2, max_seq_len=8, n_kv_heads=3, head_dim=4, dtype=F64)


def kv(seed, s):
    return randn(2, 3, s, 4, seed=seed, dtype=F64), randn(2, 3, s, 4, seed=seed + 100, dtype=F64)


@pytest.mark.points(2)
@pytest.mark.rules("cache.update-returns-all", "cache.dtype-device")
def test_cache_update_returns_everything_stored(worker):
    """update appends along the sequence axis and returns views over all stored positions."""
    (k1, v1), (k2, v2), (k3, v3) = kv(1, 3), kv(2, 1), kv(3, 2)
    ops = [("update", 0, k1, v1), ("update", 1, k1 * 2, v1 * 2), ("update", 0, k2, v2), ("update", 0, k3, v3)]
    got = worker.adapters.kv_cache.cache_session(init_kwargs=CACHE, ops=ops)["results"]
    for entry in got:
        assert "raised" not in entry, f"{entry['op']} raised {entry['raised']}: {entry['message']}"
    check_tensor(got[0]["k"], k1, "k_all after one update of 3 positions")
    check_tensor(got[3]["k"], torch.cat([k1, k2, k3], dim=2), "k_all after updates of 3, 1 and 2 positions")
    check_tensor(got[3]["v"], torch.cat([v1, v2, v3], dim=2), "v_all after updates of 3, 1 and 2 positions")
    check_tensor(got[1]["k"], k1 * 2, "layer 1's k_all (layers are independent)")
    assert got[3]["layer_seq_len"] == 6, f"layer 0's seq_len after 3 + 1 + 2 positions: expected 6, got {got[3]['layer_seq_len']}"
    # two equal updates: appending on another axis would also "work", with a telling shape
    (k4, v4), (k5, v5) = kv(4, 2), kv(5, 2)
    got = worker.adapters.kv_cache.cache_session(init_kwargs=CACHE,
                                                 ops=[("update", 0, k4, v4), ("update", 0, k5, v5)])["results"]
    assert "raised" not in got[1], f"update raised {got[1].get('raised')}: {got[1].get('message')}"
    check_tensor(got[1]["k"], torch.cat([k4, k5], dim=2), "k_all after two updates of 2 positions",
                 mistakes=lambda: [(WRONG_AXIS, torch.cat([k4, k5], dim=d)) for d in (0, 1, 3)])


@pytest.mark.points(1)
@pytest.mark.rules("cache.preallocated")
def test_cache_is_preallocated(worker):
    """the buffers are allocated once: update never concatenates (read from your source) and returns
    views of the same storage."""
    static.assert_source_avoids(worker, "kv_cache", "LayerKVCache.update", static.CONCATENATION,
                         "preallocate the buffers once and write new positions in place")
    ops = [("update", 0, *kv(s, 1)) for s in range(6)]
    got = worker.adapters.kv_cache.cache_session(init_kwargs=CACHE, ops=ops)
    assert all("raised" not in e for e in got["results"]), got["results"][0].get("message")
    assert all(e["same_storage"] for e in got["results"]), (
        "update returned tensors on new storage: the cache was reallocated (preallocate once, write in place)")
    assert got["cat_calls"] == 0, f"update called torch.cat {got['cat_calls']} times: write into the preallocated buffers"


@pytest.mark.points(1)
@pytest.mark.rules("cache.seq_len-per-step")
def test_cache_seq_len_grows_once_per_step(worker):
    """KVCache.seq_len counts positions, not layer updates: one step of every layer adds s_new."""
    ops = [("update", 0, *kv(1, 3)), ("update", 1, *kv(2, 3)), ("update", 0, *kv(3, 1)), ("update", 1, *kv(4, 1))]
    got = worker.adapters.kv_cache.cache_session(init_kwargs=CACHE, ops=ops)["results"]
    assert all("raised" not in e for e in got), got[0].get("message")
    assert got[1]["seq_len"] == 3 and got[3]["seq_len"] == 4, (
        f"seq_len after a 3-token step and a 1-token step of both layers: expected 3 then 4, got "
        f"{got[1]['seq_len']} then {got[3]['seq_len']}")


@pytest.mark.points(1)
@pytest.mark.rules("cache.seq_len-mid-step")
def test_cache_seq_len_mid_step(worker):
    """between two layers' updates of one step, KVCache.seq_len is still the step's start (the minimum
    over layers), so code that reads it mid-step sees the right position."""
    ops = [("update", 0, *kv(1, 3)), ("update", 1, *kv(2, 3)), ("update", 0, *kv(3, 1)), ("update", 1, *kv(4, 1))]
    got = worker.adapters.kv_cache.cache_session(init_kwargs=CACHE, ops=ops)["results"]
    assert all("raised" not in e for e in got), got[0].get("message")
    lengths = [e["seq_len"] for e in got]
    assert lengths == [0, 3, 3, 4], (
        f"KVCache.seq_len after each layer's update of a 3-token and a 1-token step: expected [0, 3, 3, 4] "
        f"(it changes only when every layer has the step), got {lengths}")


@pytest.mark.points(1)
@pytest.mark.rules("cache.reset", "cache.crop")
def test_cache_crop_and_reset(worker):
    """crop(n) keeps the first n positions (n >= seq_len changes nothing); reset() empties it."""
    (k1, v1), (k2, v2) = kv(5, 5), kv(6, 1)
    ops = [("update", 0, k1, v1), ("update", 1, k1, v1), ("crop", 7), ("crop", 3),
           ("update", 0, k2, v2), ("update", 1, k2, v2), ("reset",), ("update", 0, k2, v2), ("update", 1, k2, v2)]
    got = worker.adapters.kv_cache.cache_session(init_kwargs=CACHE, ops=ops)["results"]
    assert all("raised" not in e for e in got), [e.get("message") for e in got if "raised" in e]
    lengths = [e["seq_len"] for e in got]
    assert lengths == [0, 5, 5, 3, 3, 4, 0, 0, 1], f"seq_len after each step: expected [0, 5, 5, 3, 3, 4, 0, 0, 1], got {lengths}"
    check_tensor(got[4]["k"], torch.cat([k1[:, :, :3], k2], dim=2), "k_all after crop(3) and one new position")
    check_tensor(got[7]["k"], k2, "k_all after reset() and one new position")


@pytest.mark.points(1)
@pytest.mark.rules("cache.overflow")
def test_cache_overflow_raises(worker):
    """writing past max_seq_len raises ValueError."""
    ops = [("update", 0, *kv(7, 6)), ("update", 0, *kv(8, 3))]
    got = worker.adapters.kv_cache.cache_session(init_kwargs=CACHE, ops=ops)["results"]
    assert "raised" not in got[0], f"6 of 8 positions raised {got[0]['raised']}: {got[0]['message']}"
    assert got[1].get("raised") == "ValueError", (
        f"6 + 3 positions in a cache of 8 should raise ValueError; "
        f"{'it raised ' + got[1]['raised'] if 'raised' in got[1] else 'nothing was raised'}")


# ---------------------------------------------------------------------------------------
# the cache inside the model
# ---------------------------------------------------------------------------------------
@pytest.mark.points(3)
@pytest.mark.rules("cache.update-returns-all",
                   "cache.seq_len-per-step",
                   "attention:mha.cache-attends-over-everything",
                   "attention:mha.cache-holds-kv-heads",
                   "gpt:gpt.positions-from-cache")
@pytest.mark.parametrize("name", CONFIGS)
def test_cached_steps_equal_a_full_forward(worker, name):
    """prefill + one-token cached steps give the logits of one full forward at those positions."""
    model, state = reference(name, seed=1)
    prompt, steps = tokens(name, 2, 5), [tokens(name, 3 + i, 1) for i in range(4)]
    got = worker.adapters.kv_cache.cached_logits(config=CONFIGS[name], state_dict=state, prompt=prompt,
                                                 steps=steps, dtype=F64)
    full = torch.cat([prompt, *steps], dim=1)
    with torch.no_grad():
        expected = model(full)
        # the mistake: a real cache, but every call starts its positions at 0
        cache = ref.KVCache(2, 2, 9, CONFIGS[name]["block"].get("n_kv_heads") or 6, 4, dtype=F64)
        no_offset = type("NoOffset", (), {"seq_len": 0, "layer": staticmethod(cache.layer)})()
        restart = torch.cat([model(prompt, cache=no_offset)] + [model(step, cache=no_offset) for step in steps], dim=1)
    assert not got["raised"], f"running GPT({name}) with your KVCache raised {got['raised']}"
    logits = got["logits"]
    assert isinstance(logits, list) and len(logits) == 5, "expected the logits of 5 calls"
    check_tensor(torch.cat(logits, dim=1) if all(isinstance(t, torch.Tensor) for t in logits) else logits,
                 expected, f"GPT({name}) logits: prefill of 5 tokens + 4 cached steps",
                 tol=model_tolerance(model, lambda: model(full), full.shape[1] - 1),
                 mistakes=lambda: [(NO_OFFSET, restart)])


def altered_cache(name, model, prompt, seed):
    """The reference's keys and values for ``prompt``, per layer, each moved by N(0, 0.5):
    a model that reads its past from the cache must follow the change."""
    config = CONFIGS[name]
    block = config["block"]
    n_kv, head_dim = block.get("n_kv_heads") or block["n_heads"], block["d_model"] // block["n_heads"]
    cache = ref.KVCache(config["n_layers"], prompt.shape[0], config["max_seq_len"], n_kv, head_dim, dtype=F64)
    with torch.no_grad():
        model(prompt, cache=cache)
    n = prompt.shape[1]
    return [(cache.k[i, :, :, :n] + randn(*cache.k[i, :, :, :n].shape, seed=seed + i, dtype=F64, scale=0.5),
             cache.v[i, :, :, :n] + randn(*cache.v[i, :, :, :n].shape, seed=seed + 50 + i, dtype=F64, scale=0.5))
            for i in range(config["n_layers"])]


def step_on(name, model, layers, step):
    """The reference's logits and cache contents for one step on a cache holding ``layers``."""
    config = CONFIGS[name]
    n, (b, n_kv, _, head_dim) = layers[0][0].shape[2], layers[0][0].shape
    cache = ref.KVCache(config["n_layers"], b, config["max_seq_len"], n_kv, head_dim, dtype=F64)
    for i, (k, v) in enumerate(layers):
        cache.k[i, :, :, :n], cache.v[i, :, :, :n] = k, v
    cache._lengths = [n] * config["n_layers"]
    with torch.no_grad():
        logits = model(step, cache=cache)
    return logits, [(cache.k[i, :, :, :n + 1], cache.v[i, :, :, :n + 1]) for i in range(config["n_layers"])]


def _step_case(worker, name, seed):
    """The student's step on the altered cache, and the reference's on the same cache."""
    model, state = reference(name, seed=seed)
    layers = altered_cache(name, model, tokens(name, seed + 1, 5), seed=seed + 2)
    step = tokens(name, seed + 3, 1)
    got = worker.adapters.kv_cache.step_on_cache(config=CONFIGS[name], state_dict=state, cached=layers,
                                                 step=step, dtype=F64)
    # the step sits at position 5: its q and k (and the cached keys) carry angles up to 5
    tol = model_tolerance(model, lambda: step_on(name, model, layers, step), 5)
    return got, step_on(name, model, layers, step), tol


@pytest.mark.points(1)
@pytest.mark.rules("attention:mha.cache-holds-kv-heads")
def test_cache_holds_kv_heads(worker):
    """with GQA the model hands the cache n_kv_heads heads (repeat them after reading, not before caching)."""
    got, (_, expected), tol = _step_case(worker, "llama-gqa", seed=4)
    rejected = got["rejected"]
    hint = f": {KV_REPEATED}" if isinstance(rejected, tuple) and len(rejected) == 4 and rejected[1] == 6 else ""
    assert not got["raised"], f"a cached step of GPT(llama-gqa) raised {got['raised']}{hint}"
    for i, ((k, v), (k_ref, v_ref)) in enumerate(zip(got["cache"], expected)):
        check_tensor(k, k_ref, f"layer {i}'s cached keys after one step (n_kv_heads=2)", tol=tol)
        check_tensor(v, v_ref, f"layer {i}'s cached values after one step (n_kv_heads=2)", tol=tol)


@pytest.mark.points(2)
@pytest.mark.rules("attention:mha.cache-attends-over-everything")
@pytest.mark.parametrize("name", CONFIGS)
def test_cached_step_reads_the_cache(worker, name):
    """a cached step adds exactly one position and its logits follow what the cache holds: the grader
    fills the cache itself and alters it, so a model that recomputes or keeps its past elsewhere fails."""
    got, (logits, _), tol = _step_case(worker, name, seed=11)
    assert not got["raised"], f"a cached step of GPT({name}) on the grader's cache raised {got['raised']}"
    lengths = [k.shape[2] for k, _ in got["cache"]]
    assert lengths == [6] * len(lengths), (
        f"after one step on a cache of 5 positions the layers hold {lengths} positions; expected 6 each "
        f"(a step feeds the cache exactly its one new token)")
    check_tensor(got["logits"], logits, f"GPT({name}) logits of one step on a cache of 5 positions that the grader "
                 f"filled and altered (the step must read its past from the cache)", tol=tol)


@pytest.mark.points(2)
@pytest.mark.rules("generate.no-cache-full-input", "gpt:gpt.positions-from-cache")
@pytest.mark.visibility("after_published")  # its message would print the reference's tokens
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_greedy_generation(worker, name, use_cache):
    """greedy generate gives the reference's tokens, with and without the cache."""
    model, state = reference(name, seed=7)
    idx = tokens(name, 8, 6)
    got = worker.adapters.kv_cache.generate(config=CONFIGS[name], state_dict=state, idx=idx, max_new_tokens=12,
                                            dtype=F64, use_cache=use_cache)
    expected = ref.generate(model, idx, 12, use_cache=False)
    check_tensor(got["tokens"], expected, f"generate(GPT({name}), prompt (2, 6), 12, use_cache={use_cache})")


PROBE = dict(vocab_size=53, max_seq_len=32, n_layers=2, block=dict(d_model=8, n_heads=2, n_kv_heads=1))


def probe_tokens(prompt, max_new_tokens, shift=0):
    """What generate gets from the grader's probe model (autograder/adapters/kv_cache.py, ProbeLM) when
    every call follows the protocol (shift 0) or every call breaks it (shift 1)."""
    rows = []
    for row in prompt.tolist():
        for _ in range(max_new_tokens):
            row.append((probe_next_token(row, PROBE["vocab_size"]) + shift) % PROBE["vocab_size"])
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.points(2)
@pytest.mark.rules("generate.prefill-once", "generate.no-cache-full-input")
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_generation_feeds_one_token_per_step(worker, use_cache):
    """with the cache the prompt runs once and every later call gets exactly one token; without it every
    call gets the whole sequence (checked on a probe model whose tokens reveal how it was called)."""
    prompt = torch.randint(0, PROBE["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(21))
    got = worker.adapters.kv_cache.generate_on_probe(config=PROBE, prompt=prompt, max_new_tokens=5,
                                                     use_cache=use_cache)
    expected = probe_tokens(prompt, 5)
    ok = isinstance(got, torch.Tensor) and got.shape == expected.shape
    hint = f": {PROMPT_RERUN}" if use_cache and ok and torch.equal(got[:, 7:], probe_tokens(prompt, 5, 1)[:, 7:]) else ""
    assert ok and torch.equal(got, expected), (
        f"generate(probe, prompt (2, 6), 5, use_cache={use_cache}) gave tokens {_short(got)}, expected "
        f"{expected.tolist()}: the probe answers differently when it is called against the protocol "
        f"(prefill once, then one token per call with the cache; the whole sequence without){hint}")


def _short(value):
    return value.tolist() if isinstance(value, torch.Tensor) and value.numel() <= 64 else type(value).__name__


# ---------------------------------------------------------------------------------------
# sampling (statistical checks with fixed seeds; bounds stated in each test)
# ---------------------------------------------------------------------------------------
LOGITS = torch.tensor([2.0, 1.0, 3.5, 0.0, -1.0, 3.0, 0.5])
N = 20_000  # draws per check, as one batch of identical rows


def draws(worker, seed=0, **kwargs):
    out = worker.adapters.kv_cache.sample(logits=LOGITS.expand(N, -1).contiguous(), seed=seed, **kwargs)
    assert isinstance(out, torch.Tensor) and out.shape == (N,), (
        f"sample_next_token(logits ({N}, 7)) should return ({N},) token ids; got "
        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    assert out.dtype == torch.long, f"token ids should be int64 (long), got {out.dtype}"
    return out


@pytest.mark.points(1)
@pytest.mark.rules("sample.greedy")
def test_sampling_greedy(worker):
    """temperature 0 is argmax, row by row."""
    logits = randn(5, 11, seed=11, dtype=torch.float32, scale=3.0)
    got = worker.adapters.kv_cache.sample(logits=logits, temperature=0.0)
    check_tensor(got, logits.argmax(-1), "sample_next_token(logits (5, 11), temperature=0)")


@pytest.mark.points(2)
@pytest.mark.rules("sample.top_k")
def test_sampling_top_k_support(worker):
    """top_k=3 draws only (and all of) the 3 most likely tokens."""
    support = set(draws(worker, top_k=3).unique().tolist())
    assert support == {2, 5, 0}, f"top_k=3 of logits {LOGITS.tolist()}: expected tokens {{0, 2, 5}}, drew {sorted(support)}"


@pytest.mark.points(2)
@pytest.mark.rules("sample.top_p")
def test_sampling_top_p_support(worker):
    """top_p keeps the smallest set of most likely tokens whose probability reaches top_p."""
    probs = torch.softmax(LOGITS.double(), -1)  # sorted: 2 (0.499), 5 (0.303), 0 (0.111), ...
    for top_p, expected in [(0.4, {2}), (0.7, {2, 5}), (0.85, {2, 5, 0})]:
        support = set(draws(worker, top_p=top_p, seed=1).unique().tolist())
        assert support == expected, (f"top_p={top_p} with probabilities {[round(p, 3) for p in probs.tolist()]}: "
                                     f"expected tokens {sorted(expected)}, drew {sorted(support)}")


@pytest.mark.points(1)
@pytest.mark.rules("sample.top_p")
def test_sampling_top_p_boundary(worker):
    """a token whose preceding mass is exactly top_p is outside the nucleus (four equal logits, top_p=0.5:
    two tokens, each 0.25 exactly in float32)."""
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, -1e9]]).expand(N, -1).contiguous()
    out = worker.adapters.kv_cache.sample(logits=logits, seed=3, top_p=0.5)
    assert isinstance(out, torch.Tensor) and out.shape == (N,), f"expected ({N},) token ids, got {_short(out)}"
    support = set(out.unique().tolist())
    assert len(support) == 2 and support <= {0, 1, 2, 3}, (
        f"top_p=0.5 over four tokens of probability 0.25: the nucleus is 2 tokens (0.25 + 0.25 reaches 0.5; "
        f"the third token's preceding mass is exactly 0.5, so it is not needed); drew {sorted(support)}")


@pytest.mark.points(2)
@pytest.mark.rules("sample.temperature")
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampling_temperature(worker, temperature):
    """frequencies follow softmax(logits / T): every token within 5 binomial sigmas of it."""
    got = draws(worker, temperature=temperature, seed=2)
    freq = torch.bincount(got, minlength=7).double() / N
    expected = torch.softmax(LOGITS.double() / temperature, -1)
    sigma = (expected * (1 - expected) / N).sqrt()
    worst = ((freq - expected).abs() / sigma).max().item()  # P(any of 7 beyond 5 sigma) < 1e-5
    assert worst < 5, (f"temperature {temperature}: token frequencies {[round(f, 3) for f in freq.tolist()]} "
                       f"vs softmax(logits / T) {[round(p, 3) for p in expected.tolist()]} ({worst:.1f} sigma off)")


@pytest.mark.points(1)
@pytest.mark.rules("sample.generator")
def test_sampling_is_reproducible_with_a_generator(worker):
    """the same generator seed gives the same tokens; another seed other tokens."""
    a, b, c = (draws(worker, seed=s, top_k=5)[:200] for s in (3, 3, 4))
    assert torch.equal(a, b), "two draws with generators seeded alike differ: pass generator to torch.multinomial"
    assert not torch.equal(a, c), "draws with different generator seeds are identical: the generator is ignored"
