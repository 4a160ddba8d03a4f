"""Public suite: exercises/kv_cache.py (lecture 07), and the cache inside your GPT.

The model tests build YOUR GPT (gpt.py, decoder_block.py, attention.py, layers.py, rope.py)
with the grader's weights and YOUR KVCache: finish those exercises first.
"""
import pytest
import torch

from autograder import static
from autograder.adapters.kv_cache import probe_next_token
from autograder.compare import angle_tolerance, check_tensor, largest_angle, rope_input_size, tolerance
from autograder.inputs import randn, random_state_dict

F64 = torch.float64
PROMPT_RERUN = "the prompt is run again at every step: after the prefill, feed only the newest token"
NO_OFFSET = ("positions were not offset by the cache length: a cached step at position p must use "
             "position p (GPT: arange(cache.seq_len, cache.seq_len + s))")
WRONG_AXIS = "new keys/values are appended along the wrong axis: the sequence axis is dim 2 of (b, n_kv, s, d)"
KV_REPEATED = ("the cache holds n_heads key/value heads: store the n_kv_heads heads and repeat them "
               "after reading from the cache (that is the memory GQA saves)")

CONFIGS = {
    "gpt2": dict(vocab_size=37, max_seq_len=24, n_layers=2, block=dict(d_model=16, n_heads=4)),
    "llama-gqa": dict(vocab_size=41, max_seq_len=24, n_layers=2, learned_positions=False, tie_weights=False,
                      block=dict(d_model=16, n_heads=4, n_kv_heads=2, d_ff=24, norm="rmsnorm",
                                 ffn="swiglu", rope_theta=10000.0, bias=False)),
}


def _model(s, name, seed):
    config = CONFIGS[name]
    model = s.gpt.GPT(s.gpt.GPTConfig(**{**config, "block": s.decoder_block.BlockConfig(**config["block"])})).double()
    # norm gains near 1: near-zero gains collapse a random model onto one token
    state = random_state_dict(model, seed=seed, std=0.3, norm_gains_near_one=True)
    if model.config.tie_weights:
        state["lm_head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state)
    return model.eval(), state


def _tolerance(model, run, max_position, n_terms=40, magnitude=4.0):
    if model.config.block.rope_theta is None:
        return tolerance(F64, n_terms, magnitude)
    return angle_tolerance(F64, largest_angle(max_position), rope_input_size(model, run), n_terms, magnitude)


def tokens(name, seed, length, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIGS[name]["vocab_size"], (batch, length), generator=g)


# ---------------------------------------------------------------------------------------
# kv_cache_bytes, KVCache and LayerKVCache
# ---------------------------------------------------------------------------------------
@pytest.mark.points(2)
@pytest.mark.mirrors("kv_cache_bytes_worked_examples")
def test_public_kv_cache_bytes(worker):
    """kv_cache_bytes: 7B at 2048 tokens in float16 = 1 GiB (keys AND values, every layer)."""
    cases = [((32, 32, 128, 2048), {}, 2 ** 30),
             ((3, 2, 8, 5), {"batch_size": 2, "bytes_per_elem": 4}, 2 * 3 * 2 * 5 * 2 * 8 * 4)]
    for args, kwargs, expected in cases:
        got = worker.call("kv_cache.kv_cache_bytes", *args, **kwargs)
        hint = " (the factor 2 counts keys AND values)" if got == expected // 2 else ""
        assert got == expected, f"kv_cache_bytes{args} {kwargs}: expected {expected:,}, got {got!r}{hint}"


CACHE = dict(n_layers=2, batch_size=1, max_seq_len=7, n_kv_heads=2, head_dim=3, dtype=F64)


def kv(seed, s):
    return randn(1, 2, s, 3, seed=seed, dtype=F64), randn(1, 2, s, 3, seed=seed + 100, dtype=F64)


def _session(worker, ops):
    got = worker.adapters.kv_cache.cache_session(CACHE, ops)
    for entry in got["results"]:
        assert "raised" not in entry, f"{entry['op']} raised {entry['raised']}: {entry['message']}"
    return got


@pytest.mark.points(2)
@pytest.mark.mirrors("cache_update_returns_everything_stored")
def test_public_cache_update(worker):
    """update appends along the sequence axis and returns views over all stored positions."""
    (k1, v1), (k2, v2) = kv(1501, 2), kv(1502, 2)
    got = _session(worker, [("update", 0, k1, v1), ("update", 1, k1 * 3, v1 * 3), ("update", 0, k2, v2)])["results"]
    check_tensor(got[0]["k"], k1, "k_all after one update of 2 positions")
    check_tensor(got[1]["k"], k1 * 3, "layer 1's k_all (layers are independent)")
    check_tensor(got[2]["k"], torch.cat([k1, k2], dim=2), "k_all after two updates of 2 positions",
                 mistakes=lambda: [(WRONG_AXIS, torch.cat([k1, k2], dim=d)) for d in (0, 1, 3)])
    check_tensor(got[2]["v"], torch.cat([v1, v2], dim=2), "v_all after two updates of 2 positions")
    assert got[2]["layer_seq_len"] == 4, f"layer 0's seq_len after 2 + 2 positions: expected 4, got {got[2]['layer_seq_len']}"


@pytest.mark.points(1)
@pytest.mark.mirrors("cache_is_preallocated")
def test_public_cache_is_preallocated(worker):
    """the buffers are allocated once: update never concatenates (read from your source) and returns
    views of the same storage."""
    static.assert_source_avoids(worker, "kv_cache", "LayerKVCache.update", static.CONCATENATION,
                                "preallocate the buffers once and write new positions in place")
    got = _session(worker, [("update", 0, *kv(s, 1)) for s in range(1503, 1507)])
    assert all(e["same_storage"] for e in got["results"]), (
        "update returned tensors on new storage: the cache was reallocated (preallocate once, write in place)")
    assert got["cat_calls"] == 0, f"update called torch.cat {got['cat_calls']} times: write into the preallocated buffers"


@pytest.mark.points(1)
@pytest.mark.mirrors("cache_seq_len_grows_once_per_step", "cache_seq_len_mid_step")
def test_public_cache_seq_len(worker):
    """KVCache.seq_len counts positions, not layer updates, and changes only when every layer has the step."""
    ops = [("update", 0, *kv(1507, 2)), ("update", 1, *kv(1508, 2)), ("update", 0, *kv(1509, 1)),
           ("update", 1, *kv(1510, 1))]
    lengths = [e["seq_len"] for e in _session(worker, ops)["results"]]
    assert lengths == [0, 2, 2, 3], (
        f"KVCache.seq_len after each layer's update of a 2-token and a 1-token step: expected [0, 2, 2, 3], "
        f"got {lengths}")


@pytest.mark.points(1)
@pytest.mark.mirrors("cache_crop_and_reset", "cache_overflow_raises")
def test_public_cache_crop_reset_overflow(worker):
    """crop(n) keeps the first n positions (n >= seq_len changes nothing); reset() empties it;
    writing past max_seq_len raises ValueError."""
    (k1, v1), (k2, v2) = kv(1511, 4), kv(1512, 1)
    ops = [("update", 0, k1, v1), ("update", 1, k1, v1), ("crop", 6), ("crop", 2),
           ("update", 0, k2, v2), ("update", 1, k2, v2), ("reset",), ("update", 0, k2, v2), ("update", 1, k2, v2)]
    got = _session(worker, ops)["results"]
    lengths = [e["seq_len"] for e in got]
    assert lengths == [0, 4, 4, 2, 2, 3, 0, 0, 1], f"seq_len after each step: expected [0, 4, 4, 2, 2, 3, 0, 0, 1], got {lengths}"
    check_tensor(got[4]["k"], torch.cat([k1[:, :, :2], k2], dim=2), "k_all after crop(2) and one new position")
    check_tensor(got[7]["k"], k2, "k_all after reset() and one new position")
    got = worker.adapters.kv_cache.cache_session(CACHE, [("update", 0, *kv(1513, 5)), ("update", 0, *kv(1514, 3))])["results"]
    assert "raised" not in got[0], f"5 of 7 positions raised {got[0]['raised']}: {got[0]['message']}"
    assert got[1].get("raised") == "ValueError", (
        f"5 + 3 positions in a cache of 7 should raise ValueError; "
        f"{'it raised ' + got[1]['raised'] if 'raised' in got[1] else 'nothing was raised'}")


# ---------------------------------------------------------------------------------------
# the cache inside the model
# ---------------------------------------------------------------------------------------
@pytest.mark.points(3)
@pytest.mark.mirrors("cached_steps_equal_a_full_forward")
@pytest.mark.parametrize("name", CONFIGS)
def test_public_cached_steps_equal_a_full_forward(worker, reference, name):
    """prefill + one-token cached steps give the logits of one full forward at those positions."""
    prompt, steps = tokens(name, 1515, 4), [tokens(name, 1516 + i, 1) for i in range(3)]
    full = torch.cat([prompt, *steps], dim=1)

    def truth(s):
        model, state = _model(s, name, 1520)
        with torch.no_grad():
            expected = model(full)
            # the mistake: a real cache, but every call starts its positions at 0
            cache = s.kv_cache.KVCache(2, 2, 7, CONFIGS[name]["block"].get("n_kv_heads") or 4, 4, dtype=F64)
            no_offset = type("NoOffset", (), {"seq_len": 0, "layer": staticmethod(cache.layer)})()
            restart = torch.cat([model(prompt, cache=no_offset)] + [model(step, cache=no_offset) for step in steps], 1)
        return [state, expected, restart, _tolerance(model, lambda: model(full), full.shape[1] - 1)]

    state, expected, restart, tol = reference(truth)
    got = worker.adapters.kv_cache.cached_logits(CONFIGS[name], state, prompt, steps, dtype=F64)
    assert not got["raised"], f"running GPT({name}) with your KVCache raised {got['raised']}"
    logits = got["logits"]
    assert isinstance(logits, list) and len(logits) == 4, "expected the logits of 4 calls"
    check_tensor(torch.cat(logits, dim=1) if all(isinstance(t, torch.Tensor) for t in logits) else logits,
                 expected, f"GPT({name}) logits: prefill of 4 tokens + 3 cached steps", tol=tol,
                 mistakes=lambda: [(NO_OFFSET, restart)])


def _step_case(worker, reference, name, seed):
    """Your step on a cache the grader filled and altered, and the reference's step on the same cache."""
    prompt, step = tokens(name, seed + 1, 4), tokens(name, seed + 3, 1)

    def truth(s):
        model, state = _model(s, name, seed)
        config = CONFIGS[name]
        n_kv = config["block"].get("n_kv_heads") or config["block"]["n_heads"]
        head_dim = config["block"]["d_model"] // config["block"]["n_heads"]
        cache = s.kv_cache.KVCache(config["n_layers"], 2, config["max_seq_len"], n_kv, head_dim, dtype=F64)
        with torch.no_grad():
            model(prompt, cache=cache)
        n = prompt.shape[1]
        layers = [(cache.k[i, :, :, :n] + randn(2, n_kv, n, head_dim, seed=seed + 10 + i, dtype=F64, scale=0.5),
                   cache.v[i, :, :, :n] + randn(2, n_kv, n, head_dim, seed=seed + 60 + i, dtype=F64, scale=0.5))
                  for i in range(config["n_layers"])]

        def step_on():
            fresh = s.kv_cache.KVCache(config["n_layers"], 2, config["max_seq_len"], n_kv, head_dim, dtype=F64)
            for i, (k, v) in enumerate(layers):
                fresh.k[i, :, :, :n], fresh.v[i, :, :, :n] = k, v
            fresh._lengths = [n] * config["n_layers"]
            with torch.no_grad():
                logits = model(step, cache=fresh)
            return logits, [(fresh.k[i, :, :, :n + 1], fresh.v[i, :, :, :n + 1]) for i in range(config["n_layers"])]

        logits, stored = step_on()
        return [state, layers, logits, stored, _tolerance(model, step_on, n)]

    state, layers, logits, stored, tol = reference(truth)
    got = worker.adapters.kv_cache.step_on_cache(CONFIGS[name], state, layers, step, dtype=F64)
    return got, logits, stored, tol


@pytest.mark.points(1)
@pytest.mark.mirrors("cache_holds_kv_heads")
def test_public_cache_holds_kv_heads(worker, reference):
    """with GQA the model hands the cache n_kv_heads heads (repeat them after reading, not before caching)."""
    got, _, stored, tol = _step_case(worker, reference, "llama-gqa", seed=1530)
    rejected = got["rejected"]
    hint = f": {KV_REPEATED}" if isinstance(rejected, tuple) and len(rejected) == 4 and rejected[1] == 4 else ""
    assert not got["raised"], f"a cached step of GPT(llama-gqa) raised {got['raised']}{hint}"
    for i, ((k, v), (k_ref, v_ref)) in enumerate(zip(got["cache"], stored)):
        check_tensor(k, k_ref, f"layer {i}'s cached keys after one step (n_kv_heads=2)", tol=tol)
        check_tensor(v, v_ref, f"layer {i}'s cached values after one step (n_kv_heads=2)", tol=tol)


@pytest.mark.points(2)
@pytest.mark.mirrors("cached_step_reads_the_cache")
def test_public_cached_step_reads_the_cache(worker, reference):
    """a cached step adds exactly one position and its logits follow what the cache holds (the grader
    fills the cache itself and alters it)."""
    got, logits, _, tol = _step_case(worker, reference, "gpt2", seed=1540)
    assert not got["raised"], f"a cached step of GPT(gpt2) on the grader's cache raised {got['raised']}"
    lengths = [k.shape[2] for k, _ in got["cache"]]
    assert lengths == [5] * len(lengths), (
        f"after one step on a cache of 4 positions the layers hold {lengths} positions; expected 5 each "
        f"(a step feeds the cache exactly its one new token)")
    check_tensor(got["logits"], logits, "GPT(gpt2) logits of one step on a cache of 4 positions that the grader "
                 "filled and altered (the step must read its past from the cache)", tol=tol)


@pytest.mark.points(2)
@pytest.mark.mirrors("greedy_generation")
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_public_greedy_generation(worker, reference, use_cache):
    """greedy generate gives the reference's tokens, with and without the cache."""
    name = "llama-gqa"
    idx = tokens(name, 1550, 4)

    def truth(s):
        model, state = _model(s, name, 1551)
        return [state, s.kv_cache.generate(model, idx, 8, use_cache=False)]

    state, expected = reference(truth)
    got = worker.adapters.kv_cache.generate(CONFIGS[name], state, idx, 8, dtype=F64, use_cache=use_cache)
    check_tensor(got["tokens"], expected, f"generate(GPT({name}), prompt (2, 4), 8, use_cache={use_cache})")


PROBE = dict(vocab_size=47, max_seq_len=24, n_layers=2, block=dict(d_model=8, n_heads=2, n_kv_heads=1))


def probe_tokens(prompt, max_new_tokens, shift=0):
    """What generate gets from the grader's probe model when every call follows the protocol
    (shift 0) or every call breaks it (shift 1)."""
    rows = []
    for row in prompt.tolist():
        for _ in range(max_new_tokens):
            row.append((probe_next_token(row, PROBE["vocab_size"]) + shift) % PROBE["vocab_size"])
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.points(2)
@pytest.mark.mirrors("generation_feeds_one_token_per_step")
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_public_generation_feeds_one_token_per_step(worker, use_cache):
    """with the cache the prompt runs once and every later call gets exactly one token; without it every
    call gets the whole sequence (a probe model whose tokens reveal how it was called)."""
    prompt = torch.randint(0, PROBE["vocab_size"], (1, 4), generator=torch.Generator().manual_seed(1560))
    got = worker.adapters.kv_cache.generate_on_probe(PROBE, prompt, 4, use_cache=use_cache)
    expected = probe_tokens(prompt, 4)
    ok = isinstance(got, torch.Tensor) and got.shape == expected.shape
    hint = f": {PROMPT_RERUN}" if use_cache and ok and torch.equal(got[:, 5:], probe_tokens(prompt, 4, 1)[:, 5:]) else ""
    shown = got.tolist() if isinstance(got, torch.Tensor) and got.numel() <= 64 else type(got).__name__
    assert ok and torch.equal(got, expected), (
        f"generate(probe, prompt (1, 4), 4, use_cache={use_cache}) gave tokens {shown}, expected "
        f"{expected.tolist()}: the probe answers differently when it is called against the protocol "
        f"(prefill once, then one token per call with the cache; the whole sequence without){hint}")


# ---------------------------------------------------------------------------------------
# sampling (statistical checks with fixed seeds; bounds stated in each test)
# ---------------------------------------------------------------------------------------
LOGITS = torch.tensor([1.5, -0.5, 3.0, 0.2, 2.4, -2.0])
N = 20_000  # draws per check, as one batch of identical rows


def draws(worker, seed, logits=LOGITS, **kwargs):
    out = worker.adapters.kv_cache.sample(logits.expand(N, -1).contiguous(), seed=seed, **kwargs)
    assert isinstance(out, torch.Tensor) and out.shape == (N,), (
        f"sample_next_token(logits ({N}, {logits.shape[-1]})) should return ({N},) token ids; got "
        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    assert out.dtype == torch.long, f"token ids should be int64 (long), got {out.dtype}"
    return out


@pytest.mark.points(1)
@pytest.mark.mirrors("sampling_greedy")
def test_public_sampling_greedy(worker):
    """temperature 0 is argmax, row by row."""
    logits = randn(4, 9, seed=1561, dtype=torch.float32, scale=3.0)
    check_tensor(worker.adapters.kv_cache.sample(logits, temperature=0.0), logits.argmax(-1),
                 "sample_next_token(logits (4, 9), temperature=0)")


@pytest.mark.points(2)
@pytest.mark.mirrors("sampling_top_k_support", "sampling_top_p_support")
def test_public_sampling_top_k_and_top_p(worker):
    """top_k=2 draws only (and all of) the 2 most likely tokens; top_p keeps the smallest set of most
    likely tokens whose probability reaches top_p."""
    support = set(draws(worker, top_k=2, seed=1575).unique().tolist())
    assert support == {2, 4}, f"top_k=2 of logits {LOGITS.tolist()}: expected tokens {{2, 4}}, drew {sorted(support)}"
    probs = torch.softmax(LOGITS.double(), -1)  # sorted: 2 (0.54), 4 (0.30), 0 (0.12), ...
    for top_p, expected in [(0.5, {2}), (0.8, {2, 4}), (0.9, {2, 4, 0})]:
        support = set(draws(worker, top_p=top_p, seed=1576).unique().tolist())
        assert support == expected, (f"top_p={top_p} with probabilities {[round(p, 3) for p in probs.tolist()]}: "
                                     f"expected tokens {sorted(expected)}, drew {sorted(support)}")


@pytest.mark.points(1)
@pytest.mark.mirrors("sampling_top_p_boundary")
def test_public_sampling_top_p_boundary(worker):
    """a token whose preceding mass is exactly top_p is outside the nucleus (two equal tokens of
    probability 0.5 each in float32, top_p=0.5: one token)."""
    logits = torch.tensor([2.0, 2.0, -1e9, -1e9])
    support = set(draws(worker, seed=1577, logits=logits, top_p=0.5).unique().tolist())
    assert len(support) == 1 and support <= {0, 1}, (
        f"top_p=0.5 over two tokens of probability 0.5: the nucleus is 1 token (0.5 reaches 0.5; the second "
        f"token's preceding mass is exactly 0.5, so it is not needed); drew {sorted(support)}")


@pytest.mark.points(2)
@pytest.mark.mirrors("sampling_temperature")
def test_public_sampling_temperature(worker):
    """frequencies follow softmax(logits / T): every token within 5 binomial sigmas of it."""
    temperature = 1.7
    freq = torch.bincount(draws(worker, temperature=temperature, seed=1578), minlength=6).double() / N
    expected = torch.softmax(LOGITS.double() / temperature, -1)
    sigma = (expected * (1 - expected) / N).sqrt()
    worst = ((freq - expected).abs() / sigma).max().item()  # P(any of 6 beyond 5 sigma) < 1e-5
    assert worst < 5, (f"temperature {temperature}: token frequencies {[round(f, 3) for f in freq.tolist()]} "
                       f"vs softmax(logits / T) {[round(p, 3) for p in expected.tolist()]} ({worst:.1f} sigma off)")


@pytest.mark.points(1)
@pytest.mark.mirrors("sampling_is_reproducible_with_a_generator")
def test_public_sampling_is_reproducible(worker):
    """the same generator seed gives the same tokens; another seed other tokens."""
    a, b, c = (draws(worker, seed=s, top_k=4)[:200] for s in (1579, 1579, 1580))
    assert torch.equal(a, b), "two draws with generators seeded alike differ: pass generator to torch.multinomial"
    assert not torch.equal(a, c), "draws with different generator seeds are identical: the generator is ignored"
