"""linear: every CPU backend against the unfused sequence F.linear -> F.gelu -> residual add in float64 (2-D and 3-D
inputs, with and without bias, GELU and residual, bf16 and fp32, the AMX path and the oneDNN one), the packed-weight
caches following in-place weight updates, thread-count independence, and autograd falling back to the reference."""

from __future__ import annotations

import ctypes
import importlib
import math
import mmap

import pytest
import torch
import torch.nn.functional as F

from molm_fast.ops import linear, use_backend
from tests.utils import assert_close_to_reference, backends_for

OP = "linear"
CPU_BACKENDS = backends_for(OP, "cpu")
mod = importlib.import_module("molm_fast.ops.linear")  # the module (the package exports the function)


def _amx() -> bool:
    """Whether the cpp backend takes the AMX path here (it needs oneDNN's bf16 support too, like every bf16 path)."""
    return "cpp" in CPU_BACKENDS and mod.cpu_has_bf16_gemm() and bool(
        importlib.import_module("molm_fast._C").linear_amx_usable())


def _ref64(x, w, b, activation, residual):
    y = F.linear(x.double(), w.double(), None if b is None else b.double())
    if activation == "gelu":
        y = F.gelu(y)
    return y if residual is None else residual.double() + y


# (x shape, K, N, bias): N and K multiples of 32 take the AMX path where the CPU has it; the others oneDNN's
SHAPES = [((1, 8), 8, 24, True), ((37, 64), 64, 96, True), ((2, 5, 32), 32, 16, False), ((0, 16), 16, 8, True),
          ((1, 32), 32, 32, True), ((33, 64), 64, 96, False), ((3, 7, 128), 128, 64, True), ((70, 96), 96, 160, True),
          ((0, 64), 64, 32, True)]


# MOLM_FAST_CPU_GENERIC=1 turns the AMX path off (-> oneDNN), so both C++ paths are checked on an AMX CPU
BACKEND_PATHS = [(b, g) for b in CPU_BACKENDS for g in (["0", "1"] if b == "cpp" else ["0"])]


@pytest.mark.parametrize("backend,generic", BACKEND_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation,with_residual", [(None, False), ("gelu", False), (None, True), ("gelu", True)])
@pytest.mark.parametrize("shape,K,N,has_bias", SHAPES)
def test_matches_reference(backend, generic, dtype, activation, with_residual, shape, K, N, has_bias, monkeypatch):
    monkeypatch.setenv("MOLM_FAST_CPU_GENERIC", generic)
    x = torch.randn(shape).to(dtype)
    w = (torch.randn(N, K) / K**0.5).to(dtype)
    b = torch.randn(N).to(dtype) if has_bias else None
    r = torch.randn(*shape[:-1], N).to(dtype) if with_residual else None
    with torch.inference_mode(), use_backend(**{OP: backend}):
        out = linear(x, w, b, activation=activation, residual=r)
    ref = _ref64(x, w, b, activation, r)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close_to_reference(out, ref.float() if dtype == torch.bfloat16 else ref)


@pytest.mark.skipif(not _amx(), reason="needs a CPU with AMX-BF16 and the OS's tile permission (Intel Xeon 4th gen+)")
@pytest.mark.parametrize("M", [1, 16, 31, 32, 33, 300])
def test_amx_rounds_where_pytorch_rounds(M):
    """The AMX epilogue rounds to bf16 after the bias, after the GELU and after the add, like the three bf16
    tensors of the unfused sequence: it agrees with PyTorch's bf16 sequence to within one bf16 rounding at the
    last step (a different rounding order would drift by several)."""
    x, w = torch.randn(M, 256).bfloat16(), (torch.randn(96, 256) / 16).bfloat16()
    b, r = torch.randn(96).bfloat16(), torch.randn(M, 96).bfloat16()
    with torch.inference_mode():
        with use_backend(**{OP: "cpp"}):
            out = linear(x, w, b, activation="gelu", residual=r)
        with use_backend(**{OP: "reference"}):
            ref = linear(x, w, b, activation="gelu", residual=r)
    ulp = torch.finfo(torch.bfloat16).eps * ref.float().abs().clamp_min(2.0**-126)
    assert ((out.float() - ref.float()).abs() <= 2 * ulp).all()
    assert (out == ref).float().mean() > 0.99


@pytest.mark.skipif(not _amx(), reason="needs a CPU with AMX-BF16 and the OS's tile permission (Intel Xeon 4th gen+)")
def test_amx_same_bits_for_any_thread_count():
    x, w, b = torch.randn(101, 128).bfloat16(), (torch.randn(256, 128) / 11).bfloat16(), torch.randn(256).bfloat16()
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 3, 8):
            torch.set_num_threads(threads)
            with torch.inference_mode(), use_backend(**{OP: "cpp"}):
                outs.append(linear(x, w, b, activation="gelu"))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def _guarded(shape, at_end: bool, keep: list) -> torch.Tensor:
    """A bf16 tensor flush against an unreadable page (after its end or before its start): a read past it faults."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                              ctypes.c_int, ctypes.c_int, ctypes.c_long]
    page, nbytes = mmap.PAGESIZE, 2 * math.prod(shape)
    pages = -(-nbytes // page) + 2
    base = libc.mmap(None, pages * page, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    assert libc.mprotect(ctypes.c_void_p(base), page, 0) == 0
    assert libc.mprotect(ctypes.c_void_p(base + (pages - 1) * page), page, 0) == 0
    start = base + (pages - 1) * page - nbytes if at_end else base + page
    keep.append((libc, base, pages * page))
    buf = (ctypes.c_uint8 * nbytes).from_address(start)
    t = torch.frombuffer(buf, dtype=torch.bfloat16, count=math.prod(shape)).view(shape)
    t.copy_(torch.randn(shape))
    return t


@pytest.mark.skipif(not _amx(), reason="needs a CPU with AMX-BF16 and the OS's tile permission (Intel Xeon 4th gen+)")
@pytest.mark.parametrize("at_end", [True, False])
@pytest.mark.parametrize("M,K,N", [(1, 32, 32), (17, 64, 96), (33, 128, 64), (100, 2048, 512)])
def test_amx_reads_nothing_past_its_inputs(M, K, N, at_end):
    """Tile loads are not checked by sanitizers: every input here sits against an unreadable page instead, so a
    tile read past x, the bias or the residual would crash the test; the result must still be right."""
    keep: list = []
    try:
        x, r = _guarded((M, K), at_end, keep), _guarded((M, N), at_end, keep)
        w, b = (torch.randn(N, K) / K**0.5).bfloat16(), _guarded((N,), at_end, keep)
        with torch.inference_mode(), use_backend(**{OP: "cpp"}):
            out = linear(x, w, b, activation="gelu", residual=r)
        assert_close_to_reference(out, _ref64(x, w, b, "gelu", r).float())
    finally:
        for libc, base, size in keep:
            libc.munmap(ctypes.c_void_p(base), ctypes.c_size_t(size))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("K,N", [(32, 48), (64, 64)])  # oneDNN's layout, AMX's
def test_weight_updated_in_place_is_repacked(backend, K, N):
    x = torch.randn(9, K).bfloat16()
    layer = torch.nn.Linear(K, N).bfloat16()
    with use_backend(**{OP: backend}):
        with torch.inference_mode():
            first = linear(x, layer.weight, layer.bias)
        with torch.no_grad():
            layer.weight.mul_(-2)  # the cached packed copy must not be served again
        with torch.inference_mode():
            second = linear(x, layer.weight, layer.bias)
    ref = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    assert_close_to_reference(second, ref.float())
    assert not torch.equal(first, second)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_clear_packed_weights_after_a_write_through_data(backend):
    """A write through .data bypasses the version counter the cache keys on; after clear_packed_weights() the next
    call uses the current weight (the documented contract)."""
    x = torch.randn(9, 64).bfloat16()
    layer = torch.nn.Linear(64, 64).bfloat16()
    with use_backend(**{OP: backend}), torch.inference_mode():
        linear(x, layer.weight, layer.bias)
        layer.weight.data.mul_(-2)
        mod.clear_packed_weights()
        out = linear(x, layer.weight, layer.bias)
    ref = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    assert_close_to_reference(out, ref.float())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autograd_takes_the_reference(backend):
    x = torch.randn(5, 32, dtype=torch.bfloat16, requires_grad=True)
    layer = torch.nn.Linear(32, 64).bfloat16()
    r = torch.randn(5, 64).bfloat16()
    with use_backend(**{OP: backend}):
        out = linear(x, layer.weight, layer.bias, activation="gelu", residual=r)
    out.float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    assert_close_to_reference(out.detach(), _ref64(x.detach(), layer.weight, layer.bias, "gelu", r).float())


def test_cpp_packs_each_weight_once():
    if "cpp" not in CPU_BACKENDS or not mod.cpu_has_bf16_gemm():
        pytest.skip("the C++ backend or oneDNN bf16 (AVX512-BW/VL/DQ or AVX-NE-CONVERT) is not available here")
    w, x = torch.randn(64, 32).bfloat16(), torch.randn(3, 32).bfloat16()
    layout = "amx" if _amx() else "onednn"
    with torch.inference_mode(), use_backend(**{OP: "cpp"}):
        linear(x, w)
        packed = mod._PACKED[w][layout][2]
        linear(x, w)
        assert mod._PACKED[w][layout][2] is packed


def test_bad_arguments_are_named():
    x, w = torch.randn(3, 32), torch.randn(64, 32)
    with pytest.raises(ValueError, match="activation must be one of"):
        linear(x, w, activation="relu")
    with pytest.raises(ValueError, match=r"residual \[3, 63\] does not match"):
        linear(x, w, residual=torch.randn(3, 63))


def test_cpp_entry_checks_its_arguments():
    if "cpp" not in CPU_BACKENDS:
        pytest.skip("the C++ backend is not built here")
    C = importlib.import_module("molm_fast._C")
    x, out = torch.zeros(2, 48).bfloat16(), torch.empty(2, 64).bfloat16()
    with pytest.raises(ValueError, match="multiples of 32"):
        C.linear_pack_weight_cpu(x.data_ptr(), x.data_ptr(), 2, 48)
    if not C.linear_amx_usable():
        with pytest.raises(ValueError, match="needs AMX-TILE"):
            C.linear_forward_cpu(x.data_ptr(), x.data_ptr(), 0, 0, out.data_ptr(), 2, 64, 32, 0)
        return
    with pytest.raises(ValueError, match="multiples of 32"):
        C.linear_forward_cpu(x.data_ptr(), x.data_ptr(), 0, 0, out.data_ptr(), 2, 64, 48, 0)
    with pytest.raises(ValueError, match="activation must be"):
        C.linear_forward_cpu(x.data_ptr(), x.data_ptr(), 0, 0, out.data_ptr(), 2, 64, 32, 7)
    with pytest.raises(ValueError, match="x must not be a null pointer"):
        C.linear_forward_cpu(0, x.data_ptr(), 0, 0, out.data_ptr(), 2, 64, 32, 0)
