"""Hidden suite: exercises/gpt.py (lectures 04 and 05): the GPT model, GPT-2 style (learned
positions, tied head) and Llama style (RoPE, GQA, RMSNorm, SwiGLU, untied head)."""
import copy

import pytest
import torch

from autograder.mistakes import gpt as mistakes
from autograder.compare import (angle_tolerance, check_parameters, check_tensor, largest_angle, rope_input_size,
                                tolerance)
from autograder.inputs import randint, random_state_dict
from solutions.decoder_block import BlockConfig
from solutions.gpt import GPT, GPTConfig

F64 = torch.float64

CONFIGS = {
    "gpt2-tied": dict(vocab_size=50, max_seq_len=16, n_layers=2, block=dict(d_model=24, n_heads=6)),
    "llama-untied": dict(vocab_size=53, max_seq_len=16, n_layers=2, learned_positions=False, tie_weights=False,
                         block=dict(d_model=24, n_heads=6, n_kv_heads=2, d_ff=40, norm="rmsnorm",
                                    ffn="swiglu", rope_theta=10000.0, bias=False)),
    "postln-tied": dict(vocab_size=50, max_seq_len=16, n_layers=2, block=dict(d_model=24, n_heads=4, prenorm=False)),
}


def reference(name, seed):
    config = CONFIGS[name]
    model = GPT(GPTConfig(**{**config, "block": BlockConfig(**config["block"])})).double()
    state = random_state_dict(model, seed=seed, std=0.3)
    if model.config.tie_weights:
        state["lm_head.weight"] = state["tok_emb.weight"]  # one tensor, as in the model
    model.load_state_dict(state)
    return model.eval(), state


def gpt_tolerance(model, idx, n_terms=40, magnitude=4.0):
    """The precision contract's tolerance for ``model(idx)`` in float64: a RoPE model carries
    its float32 angles (positions 0 .. s-1, the API's only float32 part), up to the largest
    angle times eps32 times the size of the rotated q and k (``angle_tolerance``); a model
    with learned positions only the plain ``tolerance``. Gradients and the logits after an
    optimizer step inherit the same relative error."""
    if model.config.block.rope_theta is None:
        return tolerance(F64, n_terms, magnitude)
    size = rope_input_size(model, lambda: model(idx))
    return angle_tolerance(F64, largest_angle(torch.arange(idx.shape[1])), size, n_terms, magnitude)


def tokens(name, seed, length=9, batch=2):
    return randint(0, CONFIGS[name]["vocab_size"], batch, length, seed=seed)


@pytest.mark.points(1)
@pytest.mark.rules("gpt.pos_emb-only-when-learned", "gpt.lm_head-no-bias")
@pytest.mark.parametrize("name", CONFIGS)
def test_gpt_parameters(worker, name):
    """GPT has tok_emb, pos_emb (only with learned positions), blocks.i.*, norm_f, lm_head."""
    got = worker.adapters.gpt.parameters(config=CONFIGS[name])
    model, _ = reference(name, seed=0)
    expected = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    check_parameters(got, expected, f"GPT({name})")


def stepped(model, idx, targets):
    """A copy of ``model`` after one AdamW step on the cross-entropy (as the grader's adapter does it)."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten()).backward()
    optimizer.step()
    return model.eval()


@pytest.mark.points(1)
@pytest.mark.rules("gpt.config-kept")
def test_gpt_keeps_its_config(worker):
    """GPT(config) keeps its config as self.config (generate and the KV cache read it from there)."""
    got = worker.adapters.gpt.config_fields(config=CONFIGS["llama-untied"])
    expected = {"vocab_size": 53, "max_seq_len": 16, "n_layers": 2, "block.d_model": 24, "block.n_heads": 6,
                "block.n_kv_heads": 2}
    assert got == expected, f"GPT(config).config: expected the fields {expected}, got {got}"


def after_one_step(model, idx, targets):
    """The logits after one AdamW step on the cross-entropy."""
    model = stepped(model, idx, targets)
    with torch.no_grad():
        return model(idx)


def retied(model, tie):
    """A copy of ``model`` whose head is the embedding (tie) or a separate copy of it."""
    model = copy.deepcopy(model)
    model.lm_head.weight = model.tok_emb.weight if tie else torch.nn.Parameter(model.tok_emb.weight.detach().clone())
    return model


@pytest.mark.points(1)
@pytest.mark.rules("gpt.tied", "gpt.untied")
@pytest.mark.parametrize("name", ["gpt2-tied", "llama-untied"])
def test_gpt_weight_tying(worker, name):
    """with tie_weights, lm_head.weight IS tok_emb.weight (one tensor, so one optimizer step moves both
    by the summed gradient); without, two tensors."""
    # judged by behaviour, not by what the worker says about storage: a copy of the embedding
    # and the embedding itself give the same logits until an optimizer step
    model, state = reference(name, seed=12)
    tied = CONFIGS[name].get("tie_weights", True)
    if not tied:  # an untied model whose two matrices start equal: tying would not show otherwise
        state = {**state, "lm_head.weight": state["tok_emb.weight"].clone()}
        model.load_state_dict(state)
    idx, targets = tokens(name, seed=13), tokens(name, seed=14)
    got = worker.adapters.gpt.train_step(config=CONFIGS[name], state_dict=state, idx=idx, targets=targets,
                                         dtype=F64)
    wrong = (mistakes.UNTIED if tied else
             "tie_weights=False, yet lm_head.weight is tok_emb.weight: keep two tensors")
    check_tensor(got["logits_after"], after_one_step(model, idx, targets),
                 f"GPT({name}) logits after one AdamW step (tie_weights={tied})",
                 tol=gpt_tolerance(stepped(model, idx, targets), idx, n_terms=60),
                 mistakes=lambda: [(wrong, after_one_step(retied(model, not tied), idx, targets))])


@pytest.mark.points(3)
@pytest.mark.rules("gpt.learned-positions", "gpt.norm_f-always")
@pytest.mark.parametrize("name", CONFIGS)
def test_gpt_logits(worker, name):
    """logits match the reference with the same weights."""
    model, state = reference(name, seed=1)
    idx = tokens(name, seed=2)
    got = worker.adapters.gpt.forward(config=CONFIGS[name], state_dict=state, idx=idx, dtype=F64)
    with torch.no_grad():
        expected = model(idx)
    check_tensor(got["out"], expected, f"GPT({name})(idx (2, 9))", tol=gpt_tolerance(model, idx),
                 mistakes=lambda: mistakes.gpt_mistakes(model, idx))


@pytest.mark.points(1)
@pytest.mark.rules("gpt.logits-shape")
def test_gpt_single_token(worker):
    """a one-token sequence works (the first step of generation)."""
    model, state = reference("llama-untied", seed=3)
    idx = tokens("llama-untied", seed=4, length=1, batch=3)
    got = worker.adapters.gpt.forward(config=CONFIGS["llama-untied"], state_dict=state, idx=idx, dtype=F64)
    with torch.no_grad():
        expected = model(idx)
    # one token at position 0: angle 0, cos 1 and sin 0 exactly, so the plain tolerance
    check_tensor(got["out"], expected, "GPT(llama)(idx (3, 1))", tol=gpt_tolerance(model, idx))


@pytest.mark.points(2)
@pytest.mark.rules("gpt.tied")
@pytest.mark.parametrize("name", ["gpt2-tied", "llama-untied"])
def test_gpt_gradients(worker, name):
    """gradients of every parameter match (a tied embedding gets both of its uses)."""
    model, state = reference(name, seed=5)
    idx = tokens(name, seed=6)
    grad_out = torch.randn(2, 9, CONFIGS[name]["vocab_size"], dtype=F64,
                           generator=torch.Generator().manual_seed(7))
    got = worker.adapters.gpt.forward(config=CONFIGS[name], state_dict=state, idx=idx, dtype=F64,
                                      grad_output=grad_out)
    model(idx).backward(grad_out)
    for n, p in model.named_parameters():
        hint = f" ({mistakes.UNTIED}?)" if n == "tok_emb.weight" and model.config.tie_weights else ""
        check_tensor(got["param_grads"].get(n), p.grad, f"gradient of {n}{hint}", tol=gpt_tolerance(model, idx, 60))


@pytest.mark.points(2)
@pytest.mark.rules("gpt.tied")
@pytest.mark.parametrize("name", ["gpt2-tied", "llama-untied"])
def test_gpt_after_an_optimizer_step(worker, name):
    """after one AdamW step the model still matches the reference (every weight registered and
    updated; a tied head stays tied)."""
    model, state = reference(name, seed=8)
    idx = tokens(name, seed=9)
    targets = tokens(name, seed=10)
    got = worker.adapters.gpt.train_step(config=CONFIGS[name], state_dict=state, idx=idx, targets=targets,
                                         dtype=F64)
    reference_model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(reference_model.parameters(), lr=1e-2, weight_decay=0.0)
    loss = torch.nn.functional.cross_entropy(reference_model(idx).flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        expected = reference_model.eval()(idx)
    check_tensor(got["loss"], loss.detach(), "cross-entropy before the step", tol=gpt_tolerance(model, idx, 60))
    check_tensor(got["logits_after"], expected, "logits after one AdamW step",
                 tol=gpt_tolerance(reference_model, idx, 60))
