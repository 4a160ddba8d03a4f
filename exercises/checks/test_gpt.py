"""Public suite: exercises/gpt.py (lectures 04 and 05): the GPT model, GPT-2 style (learned
positions, tied head) and Llama style (RoPE, GQA, RMSNorm, SwiGLU, untied head). It runs
your decoder_block.py (and so attention.py and layers.py): finish those first."""
import copy

import pytest
import torch

from autograder.compare import angle_tolerance, check_tensor, largest_angle, rope_input_size, tolerance
from autograder.inputs import random_state_dict

F64 = torch.float64

CONFIGS = {
    "gpt2-tied": dict(vocab_size=31, max_seq_len=12, n_layers=2, block=dict(d_model=16, n_heads=4)),
    "llama-untied": dict(vocab_size=29, max_seq_len=12, n_layers=1, learned_positions=False, tie_weights=False,
                         block=dict(d_model=16, n_heads=4, n_kv_heads=2, d_ff=24, norm="rmsnorm",
                                    ffn="swiglu", rope_theta=10000.0, bias=False)),
    "postln-tied": dict(vocab_size=31, max_seq_len=12, n_layers=1, block=dict(d_model=16, n_heads=4, prenorm=False)),
}


def _model(s, name, seed):
    config = CONFIGS[name]
    model = s.gpt.GPT(s.gpt.GPTConfig(**{**config, "block": s.decoder_block.BlockConfig(**config["block"])})).double()
    state = random_state_dict(model, seed=seed, std=0.3)
    if model.config.tie_weights:
        state["lm_head.weight"] = state["tok_emb.weight"]  # one tensor, as in the model
    model.load_state_dict(state)
    return model.eval(), state


def _tolerance(model, idx, n_terms=40, magnitude=4.0):
    """float64 with float32 RoPE angles (the API's only float32 part), else the plain tolerance."""
    if model.config.block.rope_theta is None:
        return tolerance(F64, n_terms, magnitude)
    size = rope_input_size(model, lambda: model(idx))
    return angle_tolerance(F64, largest_angle(torch.arange(idx.shape[1])), size, n_terms, magnitude)


def tokens(name, seed, length=7, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CONFIGS[name]["vocab_size"], (batch, length), generator=g)


def stepped(model, idx, targets):
    """A copy of ``model`` after one AdamW step on the cross-entropy (as the grader's adapter does it)."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    return model.eval(), loss.detach()


def after_one_step(model, idx, targets):
    model, _ = stepped(model, idx, targets)
    with torch.no_grad():
        return model(idx)


def retied(model, tie):
    """A copy of ``model`` whose head is the embedding (tie) or a separate copy of it."""
    model = copy.deepcopy(model)
    model.lm_head.weight = model.tok_emb.weight if tie else torch.nn.Parameter(model.tok_emb.weight.detach().clone())
    return model


@pytest.mark.points(1)
@pytest.mark.mirrors("gpt_parameters")
@pytest.mark.parametrize("name", CONFIGS)
def test_public_gpt_parameters(worker, reference, name):
    """GPT has tok_emb, pos_emb (only with learned positions), blocks.i.*, norm_f, lm_head."""
    expected = reference(lambda s: {n: list(p.shape) for n, p in
                                    _model(s, name, 1400)[0].named_parameters(remove_duplicate=False)})
    expected = {n: tuple(shape) for n, shape in expected.items()}
    got = worker.adapters.gpt.parameters(CONFIGS[name])
    params = {n: tuple(info["shape"]) for n, info in got["parameters"].items()}
    assert params == expected, (f"GPT({name}) parameters differ: missing {sorted(set(expected) - set(params))}, "
                                f"unexpected {sorted(set(params) - set(expected))}")


@pytest.mark.points(1)
@pytest.mark.mirrors("gpt_keeps_its_config")
def test_public_gpt_keeps_its_config(worker):
    """GPT(config) keeps its config as self.config (generate and the KV cache read it from there)."""
    got = worker.adapters.gpt.config_fields(CONFIGS["llama-untied"])
    expected = {"vocab_size": 29, "max_seq_len": 12, "n_layers": 1, "block.d_model": 16, "block.n_heads": 4,
                "block.n_kv_heads": 2}
    assert got == expected, f"GPT(config).config: expected the fields {expected}, got {got}"


@pytest.mark.points(3)
@pytest.mark.mirrors("gpt_logits", "gpt_single_token")
@pytest.mark.parametrize("name", CONFIGS)
def test_public_gpt_logits(worker, reference, name):
    """logits match the reference with the same weights (and a one-token sequence works)."""
    idx, single = tokens(name, seed=1401), tokens(name, seed=1402, length=1, batch=1)

    def truth(s):
        model, state = _model(s, name, 1403)
        with torch.no_grad():
            return [state, model(idx), _tolerance(model, idx), list(s.mistakes.gpt_mistakes(model, idx)),
                    model(single)]

    state, expected, tol, known, expected_single = reference(truth)
    got = worker.adapters.gpt.forward(CONFIGS[name], state, idx, dtype=F64)
    check_tensor(got["out"], expected, f"GPT({name})(idx (2, 7))", tol=tol, mistakes=lambda: known)
    got = worker.adapters.gpt.forward(CONFIGS[name], state, single, dtype=F64)
    check_tensor(got["out"], expected_single, f"GPT({name})(idx (1, 1))", tol=tol)


@pytest.mark.points(1)
@pytest.mark.mirrors("gpt_weight_tying")
@pytest.mark.parametrize("name", CONFIGS)
def test_public_gpt_weight_tying(worker, reference, name):
    """with tie_weights, lm_head.weight IS tok_emb.weight (one tensor: an optimizer step moves both
    by the summed gradient); without, two tensors."""
    idx, targets = tokens(name, seed=1404), tokens(name, seed=1405)
    tied = CONFIGS[name].get("tie_weights", True)

    def truth(s):
        model, state = _model(s, name, 1406)
        if not tied:  # an untied model whose two matrices start equal: tying would not show otherwise
            state = {**state, "lm_head.weight": state["tok_emb.weight"].clone()}
            model.load_state_dict(state)
        wrong = (s.mistakes.UNTIED if tied else "tie_weights=False, yet lm_head.weight is tok_emb.weight: keep two tensors")
        return [state, after_one_step(model, idx, targets), _tolerance(stepped(model, idx, targets)[0], idx, 60),
                [(wrong, after_one_step(retied(model, not tied), idx, targets))]]

    state, expected, tol, known = reference(truth)
    got = worker.adapters.gpt.train_step(CONFIGS[name], state, idx, targets, dtype=F64)
    check_tensor(got["logits_after"], expected, f"GPT({name}) logits after one AdamW step (tie_weights={tied})",
                 tol=tol, mistakes=lambda: known)


@pytest.mark.points(2)
@pytest.mark.mirrors("gpt_gradients", "gpt_after_an_optimizer_step")
def test_public_gpt_gradients_and_step(worker, reference):
    """gradients of every parameter match (a tied embedding gets both of its uses), and after one
    AdamW step the model still matches the reference."""
    name = "gpt2-tied"
    idx, targets = tokens(name, seed=1407), tokens(name, seed=1408)
    grad_out = torch.randn(2, 7, CONFIGS[name]["vocab_size"], dtype=F64, generator=torch.Generator().manual_seed(1409))

    def truth(s):
        model, state = _model(s, name, 1410)
        tol = _tolerance(model, idx, 60)
        after, loss = stepped(model, idx, targets)
        with torch.no_grad():
            logits_after = after(idx)
        model(idx).backward(grad_out)
        return [state, {n: p.grad for n, p in model.named_parameters()}, tol, loss, logits_after, s.mistakes.UNTIED]

    state, grads, tol, loss, logits_after, untied = reference(truth)
    got = worker.adapters.gpt.forward(CONFIGS[name], state, idx, dtype=F64, grad_output=grad_out)
    for n, grad in grads.items():
        hint = f" ({untied}?)" if n == "tok_emb.weight" else ""
        check_tensor(got["param_grads"].get(n), grad, f"gradient of {n}{hint}", tol=tol)
    got = worker.adapters.gpt.train_step(CONFIGS[name], state, idx, targets, dtype=F64)
    check_tensor(got["loss"], loss, "cross-entropy before the step", tol=tol)
    check_tensor(got["logits_after"], logits_after, "logits after one AdamW step", tol=tol)
