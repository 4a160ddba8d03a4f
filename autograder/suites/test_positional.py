"""Hidden suite: exercises/positional.py (lecture 03): sinusoidal encodings and ALiBi.

The truth is computed in float64; sinusoid angles in float32 drift by about
max_len * eps32 (grading notes), so the tolerance grows with the largest position.
"""
import pytest
import torch

from autograder.mistakes import positional as mistakes
from autograder.compare import angle_tolerance, check_tensor, tolerance
from solutions.positional import alibi_bias, alibi_slopes  # closed forms, exact in float32

F32 = torch.float32


@pytest.mark.points(1)
@pytest.mark.rules("sinusoidal.sin-even-cos-odd",
                   "sinusoidal.exponent",
                   "sinusoidal.positions",
                   "sinusoidal.shape")
@pytest.mark.parametrize("max_len,d_model", [(1, 8), (12, 6), (50, 16), (2048, 64), (9, 7)])
def test_sinusoidal_values(worker, max_len, d_model):
    """sinusoidal_encoding: even dims sin(pos / 10000^(2i/d)), odd dims cos(...)."""
    got = worker.call("positional.sinusoidal_encoding", max_len, d_model)
    check_tensor(got, mistakes.sinusoidal_reference(max_len, d_model),
                 f"sinusoidal_encoding({max_len}, {d_model})", dtype=F32,
                 tol=angle_tolerance(F32, max_len - 1),
                 mistakes=lambda: mistakes.sinusoidal_mistakes(max_len, d_model))


@pytest.mark.points(1)
@pytest.mark.rules("sinusoidal.positions")
def test_sinusoidal_relative_offset(worker):
    """PE(pos + k) is a fixed rotation of PE(pos): the same for every pos."""
    pe = worker.call("positional.sinusoidal_encoding", 40, 8)
    assert isinstance(pe, torch.Tensor) and pe.shape == (40, 8), "expected a (40, 8) tensor"
    k = 5
    # solve PE[pos + k] = PE[pos] @ M over pos 0..19, then check M predicts pos 20..34
    a, b = pe[:20].double(), pe[k:20 + k].double()
    m = torch.linalg.lstsq(a, b).solution
    predicted = pe[20:35].double() @ m
    check_tensor(predicted, pe[20 + k:35 + k].double(), "PE[pos + 5] predicted as PE[pos] @ M",
                 tol=1e-4)


@pytest.mark.points(1)
@pytest.mark.rules("alibi_slopes.power-of-two", "alibi_slopes.other-counts")
@pytest.mark.parametrize("n_heads", [1, 8, 16, 6, 12, 3])
def test_alibi_slopes(worker, n_heads):
    """alibi_slopes follows Press et al., including head counts that are not a power of two."""
    got = worker.call("positional.alibi_slopes", n_heads)
    check_tensor(got, alibi_slopes(n_heads).double(), f"alibi_slopes({n_heads})", dtype=F32,
                 tol=tolerance(F32), mistakes=lambda: mistakes.alibi_slopes_mistakes(n_heads))


@pytest.mark.points(1)
@pytest.mark.rules("alibi_slopes.other-counts",
                   "alibi_bias.sign",
                   "alibi_bias.offset",
                   "alibi_bias.future-zero")
@pytest.mark.parametrize("n_heads,n_q,n_k", [(4, 5, 5), (6, 3, 7), (12, 1, 9)],
                         ids=["square", "offset", "decode"])
def test_alibi_bias(worker, n_heads, n_q, n_k):
    """alibi_bias is -slope * (query position - key position) for past keys, 0 for future ones."""
    got = worker.call("positional.alibi_bias", n_heads, n_q, n_k)
    check_tensor(got, alibi_bias(n_heads, n_q, n_k).double(), f"alibi_bias({n_heads}, {n_q}, {n_k})",
                 dtype=F32, tol=tolerance(F32, n_k),
                 mistakes=lambda: mistakes.alibi_bias_mistakes(n_heads, n_q, n_k, alibi_slopes(n_heads)))
