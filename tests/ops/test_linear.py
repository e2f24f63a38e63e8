"""linear: every CPU backend against F.linear in float64 (2-D and 3-D inputs, with and without bias, bf16 and fp32),
the packed-weight cache following in-place weight updates, and autograd falling back to F.linear."""

from __future__ import annotations

import importlib

import pytest
import torch

from molm_fast.ops import linear, use_backend
from tests.utils import assert_close_to_reference, backends_for

OP = "linear"
CPU_BACKENDS = backends_for(OP, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,K,M,has_bias", [((1, 8), 8, 24, True), ((37, 64), 64, 96, True),
                                                ((2, 5, 32), 32, 16, False), ((0, 16), 16, 8, True)])
def test_matches_reference(backend, dtype, shape, K, M, has_bias):
    x = torch.randn(shape).to(dtype)
    w = (torch.randn(M, K) / K**0.5).to(dtype)
    b = torch.randn(M).to(dtype) if has_bias else None
    with torch.inference_mode(), use_backend(**{OP: backend}):
        out = linear(x, w, b)
    ref = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close_to_reference(out, ref.float() if dtype == torch.bfloat16 else ref)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weight_updated_in_place_is_repacked(backend):
    x = torch.randn(9, 32).bfloat16()
    layer = torch.nn.Linear(32, 48).bfloat16()
    with use_backend(**{OP: backend}):
        with torch.inference_mode():
            first = linear(x, layer.weight, layer.bias)
        with torch.no_grad():
            layer.weight.mul_(-2)  # the cached oneDNN copy must not be served again
        with torch.inference_mode():
            second = linear(x, layer.weight, layer.bias)
    ref = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    assert_close_to_reference(second, ref.float())
    assert not torch.equal(first, second)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autograd_takes_f_linear(backend):
    x = torch.randn(5, 16, dtype=torch.bfloat16, requires_grad=True)
    layer = torch.nn.Linear(16, 8).bfloat16()
    with use_backend(**{OP: backend}):
        out = linear(x, layer.weight, layer.bias)
    out.float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    ref = torch.nn.functional.linear(x.detach().double(), layer.weight.double(), layer.bias.double())
    assert_close_to_reference(out.detach(), ref.float())


def test_cpp_packs_each_weight_once():
    mod = importlib.import_module("molm_fast.ops.linear")  # the module (the package exports the function)
    if "cpp" not in CPU_BACKENDS or not mod.cpu_has_bf16_gemm():
        pytest.skip("the C++ backend or oneDNN bf16 (AVX512-BW/VL/DQ or AVX-NE-CONVERT) is not available here")
    w, x = torch.randn(24, 16).bfloat16(), torch.randn(3, 16).bfloat16()
    with torch.inference_mode(), use_backend(**{OP: "cpp"}):
        linear(x, w)
        packed = mod._PACKED[w][2]
        linear(x, w)
        assert mod._PACKED[w][2] is packed
