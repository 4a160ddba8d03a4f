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


@pytest.fixture(scope="session")
def attention():
    return _exercise("attention")


@pytest.fixture(scope="session")
def rope():
    return _exercise("rope")


@pytest.fixture(scope="session")
def positional():
    return _exercise("positional")


@pytest.fixture(scope="session")
def layers():
    return _exercise("layers")


@pytest.fixture(scope="session")
def decoder_block():
    return _exercise("decoder_block")


@pytest.fixture(scope="session")
def gpt():
    return _exercise("gpt")


@pytest.fixture(scope="session")
def kv_cache():
    return _exercise("kv_cache")


@pytest.fixture(scope="session")
def flash_attention():
    return _exercise("flash_attention")


@pytest.fixture(scope="session")
def flash_attention_triton():
    return _exercise("flash_attention_triton")
