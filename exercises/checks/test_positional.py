"""Public suite: exercises/positional.py (lecture 03): sinusoidal encodings and ALiBi."""
import pytest
import torch

from autograder.compare import angle_tolerance, check_tensor, tolerance

F32 = torch.float32


@pytest.mark.points(1)
@pytest.mark.mirrors("sinusoidal_values")
@pytest.mark.parametrize("max_len,d_model", [(10, 8), (300, 32), (6, 5)])
def test_public_sinusoidal(worker, reference, max_len, d_model):
    """sinusoidal_encoding: even dims sin(pos / 10000^(2i/d)), odd dims cos(...)."""
    expected = reference(lambda s: s.mistakes.sinusoidal_reference(max_len, d_model))
    known = reference.mistakes(lambda s: s.mistakes.sinusoidal_mistakes(max_len, d_model))
    got = worker.call("positional.sinusoidal_encoding", max_len, d_model)
    check_tensor(got, expected, f"sinusoidal_encoding({max_len}, {d_model})", dtype=F32,
                 tol=angle_tolerance(F32, max_len - 1), mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("sinusoidal_relative_offset")
def test_public_sinusoidal_relative_offset(worker):
    """PE(pos + k) is a fixed linear map of PE(pos): the same for every pos."""
    pe = worker.call("positional.sinusoidal_encoding", 32, 6)
    assert isinstance(pe, torch.Tensor) and pe.shape == (32, 6), "expected a (32, 6) tensor"
    k = 3
    a, b = pe[:14].double(), pe[k:14 + k].double()
    m = torch.linalg.lstsq(a, b).solution
    check_tensor(pe[14:28].double() @ m, pe[14 + k:28 + k].double(), "PE[pos + 3] predicted as PE[pos] @ M",
                 tol=1e-4)


@pytest.mark.points(1)
@pytest.mark.mirrors("alibi_slopes")
@pytest.mark.parametrize("n_heads", [4, 10, 5])
def test_public_alibi_slopes(worker, reference, n_heads):
    """alibi_slopes follows Press et al., including head counts that are not a power of two."""
    expected = reference(lambda s: s.positional.alibi_slopes(n_heads).double())
    known = reference.mistakes(lambda s: s.mistakes.alibi_slopes_mistakes(n_heads))
    got = worker.call("positional.alibi_slopes", n_heads)
    check_tensor(got, expected, f"alibi_slopes({n_heads})", dtype=F32, tol=tolerance(F32), mistakes=known)


@pytest.mark.points(1)
@pytest.mark.mirrors("alibi_bias")
@pytest.mark.parametrize("n_heads,n_q,n_k", [(2, 4, 4), (4, 2, 6)], ids=["square", "offset"])
def test_public_alibi_bias(worker, reference, n_heads, n_q, n_k):
    """alibi_bias is -slope * (query position - key position) for past keys, 0 for future ones."""
    expected = reference(lambda s: s.positional.alibi_bias(n_heads, n_q, n_k).double())
    known = reference.mistakes(lambda s: s.mistakes.alibi_bias_mistakes(n_heads, n_q, n_k,
                                                                        s.positional.alibi_slopes(n_heads)))
    got = worker.call("positional.alibi_bias", n_heads, n_q, n_k)
    check_tensor(got, expected, f"alibi_bias({n_heads}, {n_q}, {n_k})", dtype=F32, tol=tolerance(F32, n_k),
                 mistakes=known)
