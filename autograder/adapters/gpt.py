"""Worker-side helpers of exercises/gpt.py: the student's GPT, built from the student's own
GPTConfig and BlockConfig.

Called from the suite as ``worker.adapters.gpt.NAME(...)``; see the package docstring."""
import torch

from . import _run, decoder_block, load_weights, parameter_table


def build(sub, config):
    """The student's GPT built from their own GPTConfig and BlockConfig classes."""
    block = decoder_block.block_config(sub, config["block"])
    gpt_config = sub.load("gpt.GPTConfig")(**{**config, "block": block})
    torch.manual_seed(0)
    return sub.load("gpt.GPT")(gpt_config)


def parameters(sub, config):
    return parameter_table(build(sub, config))


def config_fields(sub, config):
    """A few fields of the student's ``GPT(config).config`` (missing ones as None)."""
    kept = getattr(build(sub, config), "config", None)
    block = getattr(kept, "block", None)
    fields = {name: getattr(kept, name, None) for name in ("vocab_size", "max_seq_len", "n_layers")}
    fields.update({f"block.{name}": getattr(block, name, None) for name in ("d_model", "n_heads", "n_kv_heads")})
    return {key: value if type(value) in (int, float, bool, str) or value is None else repr(value)[:80]
            for key, value in fields.items()}


def forward(sub, config, state_dict, idx, *, dtype=None, grad_output=None):
    return _run(load_weights(build(sub, config), state_dict, dtype, "GPT"), [idx], {}, grad_output)


def first_adam_step(parameters, *, lr, eps=1e-8):
    """What torch.optim.AdamW's first step does without weight decay (zero moments, so the
    bias-corrected update is g / (|g| + eps)), written out: torch.optim's step imports
    torch._dynamo, a second of CPU in every worker that grades a GPT. The grader's expected
    values come from torch.optim.AdamW itself."""
    with torch.no_grad():
        for p in parameters:
            if p.grad is not None:
                p.sub_(lr * p.grad / (p.grad.abs() + eps))


def train_step(sub, config, state_dict, idx, targets, *, dtype=None, lr=1e-2):
    """One Adam step (trusted code, no weight decay) on the cross-entropy of the student's GPT, then
    the logits again: parameters that are not registered, or a head that is a copy of the
    embedding instead of the same tensor, show up here."""
    model = load_weights(build(sub, config), state_dict, dtype, "GPT").train()
    parameters = list(model.parameters())
    logits = model(idx)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    first_adam_step(parameters, lr=lr)
    with torch.no_grad():
        return {"loss": loss.detach(), "logits_after": model.eval()(idx)}
