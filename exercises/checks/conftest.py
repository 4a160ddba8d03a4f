"""Public checks: quick shape and small-number tests you may run as often as you like.

    pytest exercises/checks            # checks exercises/
    COURSE_IMPL=solutions pytest exercises/checks   # (instructors) checks solutions/

They run your code in this process and see only easy cases; the hidden suite that grades
you (`python3 course.py grade`) tries many more shapes, dtypes and edge cases.
"""
import importlib
import os

import torch

# without a GPU, Triton kernels run in its interpreter; this must be set before triton loads
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root


def _exercise(name):
    return importlib.import_module(f"{os.environ.get('COURSE_IMPL', 'exercises')}.{name}")


def _module_fixture(name):
    @pytest.fixture(scope="session", name=name)
    def module():
        return _exercise(name)

    return module


# one fixture per exercise module: a test asks for `attention`, `rope`, ... by name
for _name in ("attention", "rope", "positional", "layers", "decoder_block", "gpt", "kv_cache",
              "flash_attention", "flash_attention_triton", "seq2seq"):
    globals()[f"{_name}_module"] = _module_fixture(_name)
