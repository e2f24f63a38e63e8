"""pairwise_distance: every backend against the reference, gradients, opcheck, torch.compile."""

from __future__ import annotations

import pytest
import torch

from molm_fast.ops import pairwise_distance, pairwise_distance_reference, use_backend
from tests.utils import assert_close_to_reference, fast_backends_for

CPU_BACKENDS = fast_backends_for("pairwise_distance", "cpu")
SHAPES = [(1, 1), (1, 2), (3, 3), (3, 7), (16, 8), (3, 9), (1, 31), (3, 64), (1, 130), (1, 258), (0, 5), (2, 0)]


def test_cpu_backends_are_built():
    assert "cpp" in CPU_BACKENDS, "molm_fast._C is not built: pip install . builds it"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("B,N", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(backend, B, N, dtype):
    if backend == "triton" and N > 64:
        pytest.skip("the Triton interpreter is too slow past N=64; larger N run in the gpu tests")
    coords = torch.randn(B, N, 3, dtype=dtype) * 5
    with use_backend(backend):
        out = pairwise_distance(coords)
    assert_close_to_reference(out, pairwise_distance_reference(coords))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_input(backend):
    base = torch.randn(3, 11, 5)
    coords = base[:, 1:, 1:4]  # strided view
    with use_backend(backend):
        out = pairwise_distance(coords)
    assert_close_to_reference(out, pairwise_distance_reference(coords.contiguous()))


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_backward(backend):
    coords = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    with use_backend(backend):
        assert torch.autograd.gradcheck(pairwise_distance, (coords,))
    grad = torch.randn(2, 6, 6)
    x_ref = coords.detach().float().requires_grad_()
    (g_ref,) = torch.autograd.grad(pairwise_distance_reference(x_ref), x_ref, grad)
    x = coords.detach().float().requires_grad_()
    with use_backend(backend):
        (g,) = torch.autograd.grad(pairwise_distance(x), x, grad)
    assert_close_to_reference(g, g_ref, name="grad coords")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"pairwise_distance: coords must be \[B, N, 3\], got \[2, 5, 2\]"):
        pairwise_distance(torch.randn(2, 5, 2))
    with pytest.raises(TypeError, match="float32 or float64"):
        pairwise_distance(torch.zeros(2, 5, 3, dtype=torch.int64))


def test_forcing_an_unavailable_backend_raises():
    with use_backend("cuda"), pytest.raises(RuntimeError, match="forced but is unavailable"):
        pairwise_distance(torch.randn(1, 3, 3))


def test_opcheck_and_compile():
    torch.library.opcheck(torch.ops.molm_fast.pairwise_distance.default, (torch.randn(2, 5, 3),))
    coords = torch.randn(2, 7, 3)
    out = torch.compile(pairwise_distance, fullgraph=True)(coords)
    assert_close_to_reference(out, pairwise_distance_reference(coords))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("B,N", [(1, 1), (3, 7), (16, 64), (3, 130), (2, 258)])
def test_gpu_forward_matches_reference(backend, B, N):
    coords = torch.randn(B, N, 3, device="cuda") * 5
    with use_backend(backend):
        out = pairwise_distance(coords)
    assert_close_to_reference(out, pairwise_distance_reference(coords.double()).float())
