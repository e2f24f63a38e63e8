"""gaussian_pair_bias: every backend against the reference (padded and packed), gradients, gradcheck, opcheck, compile.

fp32 outputs are compared with the reference run in float64 on the same inputs (the truth): the reference in fp32
has its own ~5e-6 relative rounding error on Uni-Mol-sized layers, so fp32-vs-fp32 would measure two errors.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from molm_fast.ops import gaussian_pair_bias, gaussian_pair_bias_reference, use_backend
from tests.utils import assert_close_to_reference, fast_backends_for

OP = "gaussian_pair_bias"
CPU_BACKENDS = fast_backends_for(OP, "cpu")
NUM_TYPES = 31
SHAPES = [(1, 1), (3, 1), (1, 2), (3, 3), (16, 7), (3, 8), (16, 9), (3, 31), (1, 64), (3, 64), (1, 130), (1, 258)]
TRITON_SHAPES = {(1, 1), (3, 1), (1, 2), (3, 3), (16, 7), (3, 8)}  # the interpreter is slow: larger N run in gpu tests
NAMES = ["coords", "mul_weight", "bias_weight", "means", "stds", "w1", "b1", "w2", "b2"]


def make_params(dtype=torch.float32, K=128, C=128, H=64, num_types=NUM_TYPES, device="cpu"):
    """Uni-Mol-like parameters: upstream's U(0, 3) means, stds away from 0 (as trained ones are)."""
    E = num_types * num_types
    p = [torch.randn(E, 1) * 0.3 + 1, torch.randn(E, 1) * 0.3, torch.rand(1, K) * 3, torch.rand(1, K) * 2.5 + 0.5,
         torch.randn(C, K) / K**0.5, torch.randn(C) * 0.1, torch.randn(H, C) / C**0.5, torch.randn(H) * 0.1]
    return [t.to(device=device, dtype=dtype) for t in p]


def make_padded(B, N, num_types=NUM_TYPES, device="cpu"):
    """coords [B, N, 3] and tokens [B, N] with random lengths (one-atom and all-pad molecules when B > 2)."""
    coords = torch.randn(B, N, 3, device=device) * 2
    tokens = torch.randint(1, num_types, (B, N), device=device)
    lengths = torch.randint(1, N + 1, (B,), device=device)
    if B > 2:
        lengths[1], lengths[2] = 0, 1  # an all-pad molecule (all-pad rows) and a one-atom one
    tokens[torch.arange(N, device=device) >= lengths[:, None]] = 0
    return coords, tokens


def make_packed(lengths, num_types=NUM_TYPES, device="cpu"):
    T = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return torch.randn(T, 3, device=device) * 2, torch.randint(1, num_types, (T,), device=device), cu


def truth(coords, tokens, params, **kw):
    """The reference in float64 on the same inputs."""
    return gaussian_pair_bias_reference(coords.double(), tokens, *(p.double() for p in params), **kw)


def grads_of(fn, coords, params, grad):
    leaves = [t.detach().clone().requires_grad_() for t in (coords, *params)]
    return torch.autograd.grad(fn(leaves[0], *leaves[1:]), leaves, grad)


def reference_grads_reordered(coords, tokens, params, grad, generator, **kw):
    """The fp32 reference's gradients with the K Gaussians and C hidden channels permuted (the same function,
    another summation order), mapped back to the original order: its rounding error, for ``rounding=``."""
    mul, bias, means, stds, w1, b1, w2, b2 = params
    pk, pc = torch.randperm(means.shape[1], generator=generator), torch.randperm(w1.shape[0], generator=generator)
    permuted = [mul, bias, means[:, pk], stds[:, pk], w1[pc][:, pk], b1[pc], w2[:, pc], b2]
    g = grads_of(lambda c, *p: gaussian_pair_bias_reference(c, tokens, *p, **kw), coords, permuted, grad)
    back = [torch.empty_like(x) for x in g]
    back[0], back[1], back[2], back[8] = g[0], g[1], g[2], g[8]  # coords, mul, bias, b2: not permuted
    back[3][:, pk], back[4][:, pk], back[6][pc], back[7][:, pc] = g[3], g[4], g[6], g[7]  # means, stds, b1, w2
    back[5][pc[:, None], pk[None, :]] = g[5]  # w1 [C, K]
    return back


def check_backward(backend, coords, tokens, params, **kw):
    out = truth(coords, tokens, params, **kw)
    grad = torch.randn_like(out)
    expected = grads_of(lambda c, *p: gaussian_pair_bias_reference(c, tokens, *p, **kw), coords.double(),
                        [p.double() for p in params], grad)
    with use_backend(backend):
        got = grads_of(lambda c, *p: gaussian_pair_bias(c, tokens, *p, **kw), coords, params, grad.float())
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    orders = [grads_of(lambda c, *p: gaussian_pair_bias_reference(c, tokens, *p, **kw), coords, params,
                       grad.float())]
    orders += [reference_grads_reordered(coords, tokens, params, grad.float(), gen, **kw) for _ in range(3)]
    for i, (name, g, e) in enumerate(zip(NAMES, got, expected, strict=True)):  # parameter gradients are sums that
        assert_close_to_reference(g, e.float(), name=f"grad {name}", rounding=[o[i] for o in orders])  # cancel


def test_cpu_backends_are_built():
    assert "cpp" in CPU_BACKENDS, "molm_fast._C is not built: pip install . builds it"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("B,N", SHAPES)
def test_forward_padded(backend, B, N):
    if backend == "triton" and (B, N) not in TRITON_SHAPES:
        pytest.skip("the Triton interpreter is too slow at this size; it runs in the gpu tests")
    coords, tokens = make_padded(B, N)
    params = make_params()
    with use_backend(backend):
        out = gaussian_pair_bias(coords, tokens, *params)
    assert out.dtype == torch.float32
    assert_close_to_reference(out, truth(coords, tokens, params).float())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("lengths", [[1], [3, 1, 7], [9, 0, 31, 2], [64, 5, 130]])
def test_forward_packed(backend, lengths):
    if backend == "triton" and max(lengths) > 9:
        pytest.skip("the Triton interpreter is too slow at this size; it runs in the gpu tests")
    coords, tokens, cu = make_packed(lengths)
    tokens[1 % len(tokens)] = 0  # a pad token inside a packed molecule behaves as in a padded batch
    params = make_params()
    with use_backend(backend):
        out = gaussian_pair_bias(coords, tokens, *params, cu_seqlens=cu)
    assert_close_to_reference(out, truth(coords, tokens, params, cu_seqlens=cu).float())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_packed_equals_padded_blocks(backend):
    coords, tokens, cu = make_packed([5, 1, 3])
    params = make_params()
    with use_backend(backend):
        packed = gaussian_pair_bias(coords, tokens, *params, cu_seqlens=cu)
        padded = gaussian_pair_bias(coords[None, 0:5], tokens[None, 0:5], *params)
    assert_close_to_reference(packed[: 64 * 25], padded.reshape(-1))


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("B,N", [(1, 1), (3, 5), (2, 33)])
def test_backward_padded(backend, B, N):
    if backend == "triton" and N > 8:
        pytest.skip("the Triton interpreter is too slow at this size; it runs in the gpu tests")
    coords, tokens = make_padded(B, N)
    check_backward(backend, coords, tokens, make_params())


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_backward_packed(backend):
    coords, tokens, cu = make_packed([4, 1, 0, 6])
    tokens[5] = 0
    check_backward(backend, coords, tokens, make_params(), cu_seqlens=cu)


@pytest.mark.parametrize("backend", ["reference"] + [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_float64(backend, packed):
    """Every input that has a gradient, at small sizes (K=5, C=6, H=3, 4 atom types), in float64."""
    params = [p.requires_grad_() for p in make_params(torch.float64, K=5, C=6, H=3, num_types=4)]
    if packed:
        coords, tokens, cu = make_packed([3, 1, 2], num_types=4)
        tokens[4] = 0
    else:
        (coords, tokens), cu = make_padded(3, 3, num_types=4), None
    coords = coords.double().requires_grad_()

    def fn(c, *p):  # -inf (pad keys) is constant; gradcheck's finite differences need finite outputs
        return gaussian_pair_bias(c, tokens, *p, cu_seqlens=cu, num_types=4).nan_to_num(neginf=0.0)

    with use_backend(backend):
        assert torch.autograd.gradcheck(fn, (coords, *params))


def test_gradcheck_float64_uni_mol_sizes():
    """The cpp backend at the real sizes (K=C=128, H=64) through gradcheck's random projections."""
    params = [p.requires_grad_() for p in make_params(torch.float64)]
    coords, tokens = make_padded(1, 3)
    coords = coords.double().requires_grad_()
    with use_backend("cpp"):
        assert torch.autograd.gradcheck(lambda c, *p: gaussian_pair_bias(c, tokens, *p).nan_to_num(neginf=0.0),
                                        (coords, *params), fast_mode=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bfloat16_parameters(backend):
    coords, tokens = make_padded(3, 9)
    params = [p.bfloat16() for p in make_params()]  # the truth runs on the same (bf16-rounded) parameters
    with use_backend(backend):
        out = gaussian_pair_bias(coords, tokens, *params)
    assert out.dtype == torch.bfloat16
    assert_close_to_reference(out, truth(coords, tokens, params).float())


@pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="the C++ backend is not built")
@pytest.mark.parametrize("generic", ["1", "0"])
def test_cpp_bfloat16_gemm_path_in_chunks(monkeypatch, generic):
    """bf16 parameters on the C++ backend: Gaussians and scatter in C++ (AVX-512 loop, or the generic one forced by
    MOLM_FAST_CPU_GENERIC=1), gbf_proj on PyTorch's bf16 GEMMs, rows in chunks (made tiny here so batches span
    several, with molecules split across chunks), padded with pads and packed with a zero-length molecule."""
    gpb = importlib.import_module("molm_fast.ops.gaussian_pair_bias")  # the module (the package exports the function)
    monkeypatch.setenv("MOLM_FAST_CPU_GENERIC", generic)
    monkeypatch.setattr(gpb, "_GEMM_CHUNK_PAIRS", 50)
    params = [p.bfloat16() for p in make_params(H=20)]  # H not a multiple of 16: partial head tiles
    coords, tokens = make_padded(2, 19)
    tokens[0] = torch.randint(1, NUM_TYPES, (19,))
    tokens[0, 7] = tokens[1, -1] = 0  # a pad inside a molecule and one at the end: >= 70% real pairs, so the
    tokens[1, :-1] = torch.randint(1, NUM_TYPES, (18,))  # GEMM path runs (heavier padding takes the fp32 kernel)
    assert gpb._mostly_real_pairs(tokens, None, 0)
    with use_backend("cpp"):
        out = gaussian_pair_bias(coords, tokens, *params)
    assert_close_to_reference(out, truth(coords, tokens, params).float())
    coords, tokens, cu = make_packed([7, 0, 17, 1, 33])
    with use_backend("cpp"):
        out = gaussian_pair_bias(coords, tokens, *params, cu_seqlens=cu, max_seqlen=33)
    assert_close_to_reference(out, truth(coords, tokens, params, cu_seqlens=cu, max_seqlen=33).float())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_inputs_and_int32_tokens(backend):
    coords, tokens = make_padded(3, 8)
    wide = torch.randn(3, 8, 5)
    wide[..., 1:4] = coords
    params = make_params()
    w1_t = params[4].t().contiguous().t()  # same values, column-major
    with use_backend(backend):
        out = gaussian_pair_bias(wide[..., 1:4], tokens.int(), *params[:4], w1_t, *params[5:])
    assert_close_to_reference(out, truth(coords, tokens, params).float())


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_empty_batches(backend):
    params = make_params()
    with use_backend(backend):
        assert gaussian_pair_bias(torch.zeros(0, 5, 3), torch.zeros(0, 5, dtype=torch.long), *params).shape == (
            0, 64, 5, 5)
        assert gaussian_pair_bias(torch.zeros(2, 0, 3), torch.zeros(2, 0, dtype=torch.long), *params).shape == (
            2, 64, 0, 0)
        cu = torch.zeros(1, dtype=torch.int32)
        assert gaussian_pair_bias(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), *params,
                                  cu_seqlens=cu).shape == (0,)


def test_pad_semantics():
    """Pad keys are -inf; a pad query row sees distance 0 and edge type 0 for every real key."""
    coords, tokens = torch.randn(1, 4, 3), torch.tensor([[1, 5, 0, 0]])
    params = make_params()
    out = gaussian_pair_bias(coords, tokens, *params)
    assert torch.isneginf(out[..., 2:]).all() and torch.isfinite(out[..., :2]).all()
    assert torch.equal(out[0, :, 2, 0], out[0, :, 3, 1])
    origin = gaussian_pair_bias_reference(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long) + 0, *params,
                                          pad_idx=-1)  # edge type 0, distance 0, nothing masked
    assert_close_to_reference(out[0, :, 2, 0], origin[0, :, 0, 0])


def test_bad_arguments():
    params = make_params()
    coords, tokens = make_padded(2, 5)
    with pytest.raises(ValueError, match=r"gaussian_pair_bias: coords must be \[B, N, 3\], got \[2, 5, 2\]"):
        gaussian_pair_bias(coords[..., :2], tokens, *params)
    with pytest.raises(ValueError, match=r"tokens must be \[B, N\] = \[2, 5\], got \[2, 4\]"):
        gaussian_pair_bias(coords, tokens[:, :4], *params)
    with pytest.raises(TypeError, match="tokens must be int64"):
        gaussian_pair_bias(coords, tokens.float(), *params)
    with pytest.raises(TypeError, match="coords must be float32 or float64"):
        gaussian_pair_bias(coords.half(), tokens, *params)
    with pytest.raises(TypeError, match="b2 must have w1's floating dtype"):
        gaussian_pair_bias(coords, tokens, *params[:7], params[7].double())
    with pytest.raises(ValueError, match=r"mul_weight must be \[961, 1\], got \[960, 1\]"):
        gaussian_pair_bias(coords, tokens, params[0][:960], *params[1:])
    with pytest.raises(ValueError, match=r"tokens must be in \[0, num_types=31\)"):
        gaussian_pair_bias(coords, tokens + 31, *params)
    c, t, cu = make_packed([2, 3])
    with pytest.raises(TypeError, match="cu_seqlens must be \\[B \\+ 1\\] int32"):
        gaussian_pair_bias(c, t, *params, cu_seqlens=cu.long())
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to T = 5"):
        gaussian_pair_bias(c, t, *params, cu_seqlens=torch.tensor([0, 2, 4], dtype=torch.int32))
    with pytest.raises(ValueError, match="max_seqlen must be >= the longest molecule"):
        gaussian_pair_bias(c, t, *params, cu_seqlens=cu, max_seqlen=2)


def test_opcheck_and_compile():
    coords, tokens = make_padded(2, 5)
    params = [p.requires_grad_() for p in make_params()]
    torch.library.opcheck(torch.ops.molm_fast.gaussian_pair_bias.default, (coords, tokens, *params, None, 0, 31, 0))
    out = torch.compile(lambda c, t, *p: gaussian_pair_bias(c, t, *p), fullgraph=True)(coords, tokens, *params)
    assert_close_to_reference(out, truth(coords, tokens, params).float())
    c, t, cu = make_packed([3, 5, 1])  # packed: the output length is data-dependent (an unbacked size)
    packed = torch.compile(lambda c, t, cu, *p: gaussian_pair_bias(c, t, *p, cu_seqlens=cu, max_seqlen=5),
                           fullgraph=True)(c, t, cu, *params)
    assert_close_to_reference(packed, truth(c, t, params, cu_seqlens=cu).float())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("B,N", [(1, 1), (3, 7), (16, 9), (16, 64), (3, 130), (2, 258)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_forward(backend, B, N, dtype):
    coords, tokens = make_padded(B, N, device="cuda")
    params = make_params(dtype, device="cuda")
    with use_backend(backend):
        out = gaussian_pair_bias(coords, tokens, *params)
    assert out.dtype == dtype
    assert_close_to_reference(out, truth(coords, tokens, params).float(), dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_packed_and_backward(backend):
    coords, tokens, cu = make_packed([1, 9, 64, 0, 130, 31], device="cuda")
    params = make_params(device="cuda")
    with use_backend(backend):
        out = gaussian_pair_bias(coords, tokens, *params, cu_seqlens=cu)
    assert_close_to_reference(out, truth(coords, tokens, params, cu_seqlens=cu).float())
    check_backward(backend, coords, tokens, params, cu_seqlens=cu)
    padded_coords, padded_tokens = make_padded(3, 33, device="cuda")
    check_backward(backend, padded_coords, padded_tokens, params)
