"""Worker-side helpers of exercises/attention.py: softmax written by hand: called with torch's
softmaxes disabled.

Called from the suite as ``worker.adapters.attention.NAME(...)``; see the package docstring."""
import contextlib

import torch

from . import _forbid


def call_without_builtin_softmax(sub, target, args, kwargs=None):
    """Call ``target`` while every public softmax of torch raises ``ForbiddenCall``."""
    function = sub.load(target)
    message = f"{target} called torch's softmax; the exercise asks you to write it from exp and sum"
    with contextlib.ExitStack() as stack:
        for owner, name in [(torch, "softmax"), (torch.Tensor, "softmax"),
                            (torch.nn.functional, "softmax"), (torch.special, "softmax"),
                            (torch, "_softmax"), (torch.nn.Softmax, "forward")]:
            if hasattr(owner, name):
                stack.enter_context(_forbid(owner, name, message))
        return function(*args, **(kwargs or {}))
