"""gaussian_pair_bias: Uni-Mol's layer-0 attention bias from coordinates and atom types.

    x_ij = mul[e_ij] * |c_i - c_j| + bias[e_ij],  G_ijk = exp(-((x_ij - mu_k) / s_k)^2 / 2) / (sqrt(2 * 3.14159) s_k)
    out[b, :, i, j] = W2 gelu(W1 G_ij + b1) + b2,  s_k = |std_k| + 1e-5,  e_ij = t_i * num_types + t_j

Shapes: padded coords [B, N, 3] float, tokens [B, N] int64 -> [B, H, N, N] in w1's dtype (H = w2.shape[0]).
Packed coords [T, 3], tokens [T], cu_seqlens [B + 1] int32 -> 1-D packed pair tensor (molecule b's [H, n, n]
block at H * cu_pairs[b], cu_pairs the exclusive cumsum of n_b^2). Every pair touching a pad token gets
distance 0 and edge type 0 (the collater's fill values, spec 3d-molm.md §1.2 "D3Collater"), and pad KEY
columns get -inf (the encoder's mask, applied once). Gaussians in fp32 (fp64 for fp64 parameters), then cast
to the parameter dtype, as upstream GaussianLayer (§1.2, §8.3). Saved for backward: the inputs only; the fused
backends recompute the Gaussians and the hidden layer per tile. Differentiable: coords (through the distance;
pad pairs have constant distance 0), mul/bias embedding rows, means, stds, w1, b1, w2, b2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from molm_fast.ops import _backend
from molm_fast.ops.linear import cpu_has_bf16_gemm, linear
from molm_fast.ops.pairwise_distance import pairwise_distance_reference

OP = "gaussian_pair_bias"
PI = 3.14159  # upstream's literal, not math.pi (spec §8.3)
_PARAMS = ("mul_weight", "bias_weight", "means", "stds", "w1", "b1", "w2", "b2")


def _gaussian_pair_bias_padded_reference(coords, tokens, mul_weight, bias_weight, means, stds, w1, b1, w2, b2,
                                         num_types, pad_idx):
    pad = tokens.eq(pad_idx)  # [B, N]
    pair_pad = pad[:, :, None] | pad[:, None, :]  # [B, N, N]
    dist = pairwise_distance_reference(coords).masked_fill(pair_pad, 0)  # [B, N, N]
    edge = (tokens[:, :, None] * num_types + tokens[:, None, :]).masked_fill(pair_pad, 0)  # [B, N, N]
    mul = F.embedding(edge, mul_weight.view(-1, 1)).to(dist.dtype)  # [B, N, N, 1]
    bias = F.embedding(edge, bias_weight.view(-1, 1)).to(dist.dtype)  # [B, N, N, 1]
    compute = torch.promote_types(torch.float32, means.dtype)  # fp32 (fp64 only for fp64 parameters)
    x = (mul * dist.unsqueeze(-1) + bias).to(compute)  # [B, N, N, 1]
    mean = means.to(compute).view(-1)  # [K]
    std = stds.to(compute).view(-1).abs() + 1e-5  # [K]
    gauss = torch.exp(-0.5 * ((x - mean) / std) ** 2) / ((2 * PI) ** 0.5 * std)  # [B, N, N, K] fp32
    hidden = F.gelu(F.linear(gauss.to(w1.dtype), w1, b1))  # [B, N, N, C]
    out = F.linear(hidden, w2, b2).permute(0, 3, 1, 2).contiguous()  # [B, H, N, N]
    return out.masked_fill(pad[:, None, None, :], float("-inf"))


def gaussian_pair_bias_reference(coords, tokens, mul_weight, bias_weight, means, stds, w1, b1, w2, b2, *,
                                 cu_seqlens=None, max_seqlen=None, num_types=31, pad_idx=0):
    """Plain PyTorch, upstream GaussianLayer + gbf_proj + permute + pad-key mask; packed runs molecule by molecule."""
    params = (mul_weight, bias_weight, means, stds, w1, b1, w2, b2)
    if cu_seqlens is None:
        return _gaussian_pair_bias_padded_reference(coords, tokens, *params, num_types, pad_idx)
    bounds = cu_seqlens.tolist()
    blocks = [w1.new_zeros(0)]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        block = _gaussian_pair_bias_padded_reference(coords[None, start:end], tokens[None, start:end], *params,
                                                     num_types, pad_idx)  # [1, H, n, n]
        blocks.append(block.reshape(-1))
    return torch.cat(blocks)  # [H * sum n_b^2]


# ---- glue per backend ------------------------------------------------------------------------------------
def _packed_sizes(cu_seqlens: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Total pairs and cu_pairs [B + 1] int64 (exclusive cumsum of n_b^2) of a packed batch."""
    cu_pairs = _backend.pair_offsets(cu_seqlens)  # [B + 1] int64
    return int(cu_pairs[-1]), cu_pairs


def _forward_reference(coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    return gaussian_pair_bias_reference(coords, tokens, *params, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                                        num_types=num_types, pad_idx=pad_idx)


def _padded_backward_reference(grad, coords, tokens, params, num_types, pad_idx):
    """The analytic backward in plain PyTorch, all in fp32 (fp64 for fp64 inputs); grad [B, H, N, N]."""
    compute = torch.promote_types(torch.float32, torch.promote_types(coords.dtype, params[4].dtype))
    mul_weight, bias_weight, means, stds, w1, b1, w2, b2 = (p.to(compute) for p in params)
    pad = tokens.eq(pad_idx)  # [B, N]
    pair_pad = pad[:, :, None] | pad[:, None, :]  # [B, N, N]
    diff = (coords[:, :, None] - coords[:, None, :]).to(compute)  # [B, N, N, 3]
    dist = torch.linalg.vector_norm(diff, dim=-1).masked_fill(pair_pad, 0)  # [B, N, N]
    edge = (tokens[:, :, None] * num_types + tokens[:, None, :]).masked_fill(pair_pad, 0)  # [B, N, N]
    mul = mul_weight.view(-1)[edge]  # [B, N, N]
    x = mul * dist + bias_weight.view(-1)[edge]  # [B, N, N]
    std = stds.view(-1).abs() + 1e-5  # [K]
    u = (x[..., None] - means.view(-1)) / std  # [B, N, N, K]
    gauss = torch.exp(-0.5 * u * u) / ((2 * PI) ** 0.5 * std)  # [B, N, N, K]
    h = F.linear(gauss, w1, b1)  # [B, N, N, C]
    gy = grad.to(compute).permute(0, 2, 3, 1).masked_fill(pad[:, None, :, None], 0)  # [B, N, N, H]; -inf keys: 0
    d_w2 = torch.einsum("bijh,bijc->hc", gy, F.gelu(h))
    cdf = 0.5 * (1 + torch.erf(h * 0.5**0.5))
    d_h = (gy @ w2) * (cdf + h * torch.exp(-0.5 * h * h) / (2 * math.pi) ** 0.5)  # [B, N, N, C]; exact GELU'
    d_w1 = torch.einsum("bijc,bijk->ck", d_h, gauss)
    t = (d_h @ w1) * gauss / std  # [B, N, N, K]: dL/dG * G / s
    d_x = -(t * u).sum(-1)  # [B, N, N]
    d_means = (t * u).sum((0, 1, 2)).view_as(means)
    d_stds = ((t * (u * u - 1)).sum((0, 1, 2)) * torch.sign(stds.view(-1))).view_as(stds)
    d_mul = torch.zeros_like(mul_weight.view(-1)).index_add_(0, edge.flatten(), (d_x * dist).flatten())
    d_bias = torch.zeros_like(bias_weight.view(-1)).index_add_(0, edge.flatten(), d_x.flatten())
    w = torch.where(dist > 0, d_x * mul / dist.clamp_min(torch.finfo(compute).tiny), 0)  # [B, N, N]; pads: 0
    d_coords = (w[..., None] * diff).sum(2) - (w[..., None] * diff).sum(1)  # [B, N, 3]
    return [d_coords, d_mul.view_as(mul_weight), d_bias.view_as(bias_weight), d_means, d_stds, d_w1, d_h.sum((0, 1, 2)),
            d_w2, gy.sum((0, 1, 2))]


def _backward_reference(grad, coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    if cu_seqlens is None:
        return _padded_backward_reference(grad, coords, tokens, params, num_types, pad_idx)
    _, cu_pairs = _packed_sizes(cu_seqlens)
    H, grads = params[6].shape[0], None
    d_coords = torch.zeros_like(coords)
    for b, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)):
        n, first = end - start, H * int(cu_pairs[b])
        block = grad[first:first + H * n * n].view(1, H, n, n)
        g = _padded_backward_reference(block, coords[None, start:end], tokens[None, start:end], params, num_types,
                                       pad_idx)
        d_coords[start:end] = g[0][0]
        grads = g[1:] if grads is None else [a + c for a, c in zip(grads, g[1:], strict=True)]
    grads = grads or [torch.zeros_like(p) for p in params]
    return [d_coords, *grads]


def _flat(coords, tokens, params, cu_seqlens):
    """Inputs as the native kernels take them: coords [T, 3] and parameters contiguous in the compute dtype
    (fp64 for fp64 parameters, else fp32), tokens [T] int64, the packed offsets, and the output's length."""
    compute = torch.float64 if params[4].dtype == torch.float64 else torch.float32
    xyz = coords.reshape(-1, 3).to(compute).contiguous()  # [T, 3]
    flat = [p.to(compute).contiguous() for p in params]
    H = params[6].shape[0]
    if cu_seqlens is None:
        B, N = coords.shape[:2]
        return compute, xyz, tokens.reshape(-1).contiguous(), flat, None, None, B, N, (B, H, N, N)
    pairs, cu_pairs = _packed_sizes(cu_seqlens)
    return compute, xyz, tokens.contiguous(), flat, cu_seqlens.contiguous(), cu_pairs, cu_seqlens.numel() - 1, 0, \
        (H * pairs,)


def _sizes(params):
    """K, C, H of the Gaussian basis and gbf_proj."""
    return params[4].shape[1], params[4].shape[0], params[6].shape[0]


def _ptr(t):
    return 0 if t is None else t.data_ptr()


_GEMM_CHUNK_PAIRS = 4096  # pairs per chunk of the bf16 path: G (1 MiB), the hidden layer and y stay in L2


def _row_chunks(cu_seqlens, B: int, N: int, limit: int) -> list[tuple[int, int, int]]:
    """(t0, t1, pairs): query rows [t0, t1) with <= ``limit`` pairs (a longer single row gets a chunk of its own)."""
    if cu_seqlens is None:
        per_row = [N] * (B * N)
    else:
        n = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        per_row = torch.repeat_interleave(n, n).tolist()  # [T] pairs of each row
    chunks, t0, acc = [], 0, 0
    for t, p in enumerate(per_row):
        if acc and acc + p > limit:
            chunks.append((t0, t, acc))
            t0, acc = t, 0
        acc += p
    if t0 < len(per_row):
        chunks.append((t0, len(per_row), acc))
    return chunks


def _forward_cpp_bf16(coords, tokens, params, cu_seqlens, num_types, pad_idx):
    """bf16 parameters: the C++ kernel makes the bf16 Gaussians of a chunk of rows, gbf_proj runs on PyTorch's bf16
    GEMMs (oneDNN; AMX where the CPU has it) with upstream's bf16 rounding points, the C++ kernel scatters the
    result into the [H, n, n] blocks; chunks of ~4k pairs keep G, the hidden layer and y in cache."""
    _, xyz, tok, flat, cu, cu_pairs, B, N, shape = _flat(coords, tokens, params, cu_seqlens)
    w1, b1, w2, b2 = params[4:]
    K, _, H = _sizes(params)
    out = torch.empty(shape, dtype=torch.bfloat16)
    lib = _backend.load_module("cpp")
    for t0, t1, n_pairs in _row_chunks(cu, B, N, _GEMM_CHUNK_PAIRS):
        g = torch.empty(n_pairs, K, dtype=torch.bfloat16)  # [P, K]
        lib.gaussian_pair_bias_basis_cpu(xyz.data_ptr(), tok.data_ptr(), _ptr(cu), _ptr(cu_pairs),
                                         *(p.data_ptr() for p in flat[:4]), g.data_ptr(), B, N, tok.numel(), t0, t1,
                                         K, num_types, pad_idx)
        y = linear(linear(g, w1, b1, activation="gelu"), w2, b2)  # [P, H] bf16 (ops.linear: GELU fused, packed weights)
        lib.gaussian_pair_bias_scatter_cpu(y.data_ptr(), tok.data_ptr(), _ptr(cu), _ptr(cu_pairs), out.data_ptr(),
                                           B, N, tok.numel(), t0, t1, H, pad_idx)
    return out


def _mostly_real_pairs(tokens, cu_seqlens, pad_idx) -> bool:
    """Packed, or padded with >= 70% of the pairs touching no pad: the bf16 GEMM path runs every pair, while the
    fp32 kernel computes the pad pairs' shared value once, so it wins on heavily padded batches."""
    if cu_seqlens is not None or tokens.numel() == 0:
        return True
    real = tokens.ne(pad_idx).sum(-1)  # [B]
    return int((real * real).sum()) >= 0.7 * tokens.shape[0] * tokens.shape[1] ** 2


def _forward_cpp(coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    # the bf16 GEMM path needs a CPU with bf16 units (else PyTorch's bf16 GEMMs are emulated: the fp32 kernel wins)
    if (params[4].dtype == torch.bfloat16 and coords.device.type == "cpu" and cpu_has_bf16_gemm()
            and _mostly_real_pairs(tokens, cu_seqlens, pad_idx)):
        return _forward_cpp_bf16(coords, tokens, params, cu_seqlens, num_types, pad_idx)
    compute, xyz, tok, flat, cu, cu_pairs, B, N, shape = _flat(coords, tokens, params, cu_seqlens)
    dtype = params[4].dtype
    out = torch.empty(shape, dtype=dtype if dtype in (compute, torch.bfloat16) else compute)
    _backend.load_module("cpp").gaussian_pair_bias_forward_cpu(
        xyz.data_ptr(), tok.data_ptr(), _ptr(cu), _ptr(cu_pairs), *(p.data_ptr() for p in flat), out.data_ptr(),
        B, N, tok.numel(), *_sizes(params), num_types, pad_idx, _backend.DTYPE_CODES[compute], _backend.dtype_code(out))
    return out.to(dtype)


def _backward_cpp(grad, coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    compute, xyz, tok, flat, cu, cu_pairs, B, N, _ = _flat(coords, tokens, params, cu_seqlens)
    grads = [torch.empty_like(t) for t in (xyz, *flat)]
    _backend.load_module("cpp").gaussian_pair_bias_backward_cpu(
        grad.to(compute).contiguous().data_ptr(), xyz.data_ptr(), tok.data_ptr(), _ptr(cu), _ptr(cu_pairs),
        *(p.data_ptr() for p in flat), *(g.data_ptr() for g in grads), B, N, tok.numel(), *_sizes(params), num_types,
        pad_idx, _backend.DTYPE_CODES[compute])
    return [grads[0].view_as(coords), *grads[1:]]


def _tiles(cu_seqlens, cu_pairs, B, N, per_tile):
    """(tile count, work list [tiles, 2] int32 of (molecule, chunk) for packed batches else None, chunks per padded
    molecule): the tiles of per_tile consecutive pairs that the Triton and CUDA kernels walk."""
    if cu_seqlens is None:
        chunks = -(-N * N // per_tile)
        return B * chunks, None, chunks
    chunks = (cu_pairs[1:] - cu_pairs[:-1] + per_tile - 1) // per_tile  # [B]
    b = torch.repeat_interleave(torch.arange(B, device=chunks.device), chunks)  # [tiles]
    first = torch.repeat_interleave(torch.cumsum(chunks, 0) - chunks, chunks)  # [tiles]
    work = torch.stack([b, torch.arange(b.numel(), device=b.device) - first], 1).to(torch.int32).contiguous()
    return work.shape[0], work, 1


def _triton_inputs(coords, tokens, params, cu_seqlens, backward):
    """Triton takes the parameters in their own dtype (bf16 dots), coordinates in the compute dtype."""
    from molm_fast.kernels.gaussian_pair_bias import pairs_per_program

    compute, xyz, tok, _, cu, cu_pairs, B, N, shape = _flat(coords, tokens, params, cu_seqlens)
    tiles = _tiles(cu, cu_pairs, B, N, pairs_per_program(xyz.device, backward))
    return compute, xyz, tok, [p.contiguous() for p in params], cu, cu_pairs, tiles, N, shape


def _forward_triton(coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    from molm_fast.kernels.gaussian_pair_bias import gaussian_pair_bias_forward_triton

    compute, xyz, tok, flat, cu, cu_pairs, tiles, N, shape = _triton_inputs(coords, tokens, params, cu_seqlens, False)
    interpret = coords.device.type == "cpu"  # the interpreter truncates to bf16: store fp32, round here
    out = torch.empty(shape, dtype=compute if interpret else params[4].dtype, device=coords.device)
    out = gaussian_pair_bias_forward_triton(xyz, tok, flat, cu, cu_pairs, tiles, N, out, num_types, pad_idx)
    return out.to(params[4].dtype)


def _backward_triton(grad, coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    from molm_fast.kernels.gaussian_pair_bias import gaussian_pair_bias_backward_triton

    compute, xyz, tok, flat, cu, cu_pairs, tiles, N, _ = _triton_inputs(coords, tokens, params, cu_seqlens, True)
    grads = [torch.zeros(t.shape, dtype=compute, device=t.device) for t in (xyz, *flat)]
    gaussian_pair_bias_backward_triton(grad.contiguous(), xyz, tok, flat, cu, cu_pairs, tiles, N, grads, num_types,
                                       pad_idx)
    return [grads[0].view_as(coords), *grads[1:]]


CUDA_TILE = {False: 32, True: 16}  # pairs per tile of the forward / backward kernels (csrc/gaussian_pair_bias.cu)


def _cuda_inputs(coords, tokens, params, cu_seqlens, backward):
    if params[4].dtype == torch.float64:
        raise TypeError(f"{OP}: the cuda backend computes in float32; use the triton or reference backend for float64")
    _, xyz, tok, flat, cu, cu_pairs, B, N, shape = _flat(coords, tokens, params, cu_seqlens)
    tiles, work, chunks = _tiles(cu, cu_pairs, B, N, CUDA_TILE[backward])
    transposed = [flat[4].t().contiguous(), flat[6].t().contiguous()]  # w1t [K, C], w2t [C, H]
    ptrs = [_ptr(t) for t in (xyz, tok, cu, cu_pairs, work, *flat, *transposed)]  # the callers keep them alive
    return xyz, flat, ptrs, (tiles, N, chunks, *_sizes(params)), shape, (tok, cu, cu_pairs, work, transposed)


def _forward_cuda(coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    xyz, flat, ptrs, sizes, shape, _alive = _cuda_inputs(coords, tokens, params, cu_seqlens, False)
    dtype = params[4].dtype
    out = torch.empty(shape, dtype=dtype, device=coords.device)
    _backend.load_module("cuda").gaussian_pair_bias_forward_cuda(
        *ptrs, out.data_ptr(), *sizes, num_types, pad_idx, _backend.dtype_code(out), _backend.cuda_stream(out.device))
    return out


def _backward_cuda(grad, coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    xyz, flat, ptrs, sizes, _, _alive = _cuda_inputs(coords, tokens, params, cu_seqlens, True)
    grad = grad.float().contiguous()
    grads = [torch.zeros_like(t) for t in (xyz, *flat)]
    _backend.load_module("cuda").gaussian_pair_bias_backward_cuda(
        grad.data_ptr(), *ptrs, *(g.data_ptr() for g in grads), *sizes, num_types, pad_idx,
        _backend.cuda_stream(grad.device))
    return [grads[0].view_as(coords), *grads[1:]]


_FORWARD = {"reference": _forward_reference, "cpp": _forward_cpp, "triton": _forward_triton, "cuda": _forward_cuda}
_BACKWARD = {"reference": _backward_reference, "cpp": _backward_cpp, "triton": _backward_triton,
             "cuda": _backward_cuda}
_backend.register(OP, _FORWARD)


# ---- torch.library registration --------------------------------------------------------------------------
@torch.library.custom_op("molm_fast::gaussian_pair_bias", mutates_args=())
def _gaussian_pair_bias_op(coords: torch.Tensor, tokens: torch.Tensor, mul_weight: torch.Tensor,
                           bias_weight: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, w1: torch.Tensor,
                           b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, cu_seqlens: torch.Tensor | None,
                           max_seqlen: int, num_types: int, pad_idx: int) -> torch.Tensor:
    params = (mul_weight, bias_weight, means, stds, w1, b1, w2, b2)
    if coords.numel() == 0:
        if cu_seqlens is None:
            return w1.new_empty(coords.shape[0], w2.shape[0], coords.shape[1], coords.shape[1])
        return w1.new_empty(0)
    backend = _backend.pick(OP, coords.device)
    return _FORWARD[backend](coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx)


@_gaussian_pair_bias_op.register_fake
def _(coords, tokens, mul_weight, bias_weight, means, stds, w1, b1, w2, b2, cu_seqlens, max_seqlen, num_types,
      pad_idx):
    if cu_seqlens is None:
        return w1.new_empty(coords.shape[0], w2.shape[0], coords.shape[1], coords.shape[1])
    return w1.new_empty(torch.library.get_ctx().new_dynamic_size())


@torch.library.custom_op("molm_fast::gaussian_pair_bias_backward", mutates_args=())
def _gaussian_pair_bias_backward_op(grad: torch.Tensor, coords: torch.Tensor, tokens: torch.Tensor,
                                    mul_weight: torch.Tensor, bias_weight: torch.Tensor, means: torch.Tensor,
                                    stds: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                                    b2: torch.Tensor, cu_seqlens: torch.Tensor | None, max_seqlen: int,
                                    num_types: int, pad_idx: int) -> list[torch.Tensor]:
    params = (mul_weight, bias_weight, means, stds, w1, b1, w2, b2)
    if coords.numel() == 0:
        return [torch.zeros_like(t) for t in (coords, *params)]
    backend = _backend.pick(OP, coords.device)
    grads = _BACKWARD[backend](grad, coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx)
    return [g.to(t.dtype) for g, t in zip(grads, (coords, *params), strict=True)]


@_gaussian_pair_bias_backward_op.register_fake
def _(grad, coords, tokens, mul_weight, bias_weight, means, stds, w1, b1, w2, b2, cu_seqlens, max_seqlen, num_types,
      pad_idx):
    return [torch.empty_like(t) for t in (coords, mul_weight, bias_weight, means, stds, w1, b1, w2, b2)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:10], inputs[10])
    ctx.max_seqlen, ctx.num_types, ctx.pad_idx = inputs[11:]


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    grads = _gaussian_pair_bias_backward_op(grad.contiguous(), *saved, ctx.max_seqlen, ctx.num_types, ctx.pad_idx)
    return grads[0], None, *grads[1:], None, None, None, None


_gaussian_pair_bias_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public function ---------------------------------------------------------------------------------------
def _check(coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx):
    named = dict(zip(_PARAMS, params, strict=True))
    for name, t in {"coords": coords, "tokens": tokens, **named}.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if coords.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{OP}: coords must be float32 or float64, got {coords.dtype}")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{OP}: tokens must be int64 (or int32), got {tokens.dtype}")
    dtype = named["w1"].dtype
    for name, t in named.items():
        if t.dtype != dtype or not dtype.is_floating_point:
            raise TypeError(f"{OP}: {name} must have w1's floating dtype {dtype}, got {t.dtype}")
        if t.device != coords.device:
            raise ValueError(f"{OP}: {name} must be on coords' device {coords.device}, got {t.device}")
    if not isinstance(num_types, int) or num_types < 1:
        raise ValueError(f"{OP}: num_types must be a positive int, got {num_types!r}")
    E, w1, w2 = num_types * num_types, named["w1"], named["w2"]
    if w1.dim() != 2 or w2.dim() != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"{OP}: w1 must be [C, K] and w2 [H, C], got {list(w1.shape)} and {list(w2.shape)}")
    C, K, H = w1.shape[0], w1.shape[1], w2.shape[0]
    expected = {"mul_weight": (E, 1), "bias_weight": (E, 1), "means": (1, K), "stds": (1, K), "b1": (C,), "b2": (H,)}
    for name, shape in expected.items():
        if named[name].numel() != math.prod(shape) or named[name].shape[-1] != shape[-1]:
            raise ValueError(f"{OP}: {name} must be {list(shape)}, got {list(named[name].shape)}")
    if cu_seqlens is None:
        if coords.dim() != 3 or coords.shape[-1] != 3:
            raise ValueError(f"{OP}: coords must be [B, N, 3], got {list(coords.shape)}")
        if tokens.shape != coords.shape[:2]:
            raise ValueError(f"{OP}: tokens must be [B, N] = {list(coords.shape[:2])}, got {list(tokens.shape)}")
    else:
        if coords.dim() != 2 or coords.shape[-1] != 3:
            raise ValueError(f"{OP}: coords must be [T, 3] when cu_seqlens is given, got {list(coords.shape)}")
        if tokens.shape != coords.shape[:1]:
            raise ValueError(f"{OP}: tokens must be [T] = [{coords.shape[0]}], got {list(tokens.shape)}")
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise TypeError(f"{OP}: cu_seqlens must be [B + 1] int32, got {list(cu_seqlens.shape)} {cu_seqlens.dtype}")
    if torch.compiler.is_compiling():
        return max_seqlen or 0
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= num_types):
        raise ValueError(f"{OP}: tokens must be in [0, num_types={num_types}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    if cu_seqlens is None:
        return 0
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != coords.shape[0] or bool((lengths < 0).any()):
        raise ValueError(f"{OP}: cu_seqlens must rise from 0 to T = {coords.shape[0]}, got {cu_seqlens.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_seqlen is not None and max_seqlen < longest:
        raise ValueError(f"{OP}: max_seqlen must be >= the longest molecule ({longest}), got {max_seqlen}")
    return longest if max_seqlen is None else max_seqlen


def gaussian_pair_bias(coords, tokens, mul_weight, bias_weight, means, stds, w1, b1, w2, b2, *, cu_seqlens=None,
                       max_seqlen=None, num_types=31, pad_idx=0):
    """Uni-Mol's layer-0 pair bias (GaussianLayer + gbf_proj) fused, padded or packed.

    Args:
        coords: [B, N, 3] (padded) or [T, 3] (packed), float32 or float64.
        tokens: [B, N] or [T] int64 atom types; ``pad_idx`` marks padding.
        mul_weight, bias_weight: [num_types^2, 1] (gbf.mul / gbf.bias). means, stds: [1, K] (gbf.means / gbf.stds).
        w1: [C, K], b1: [C], w2: [H, C], b2: [H] (gbf_proj.linear1 / linear2). All parameters share one dtype.
        cu_seqlens: [B + 1] int32 packed offsets; max_seqlen: the longest molecule (computed when None).
    Returns:
        padded: [B, H, N, N] in w1's dtype; packed: [H * sum n_b^2] (molecule b's [H, n_b, n_b] block at
        H * cu_pairs[b]). Pairs touching a pad get distance 0 and edge type 0; pad key columns are -inf.
    """
    params = (mul_weight, bias_weight, means, stds, w1, b1, w2, b2)
    max_seqlen = _check(coords, tokens, params, cu_seqlens, max_seqlen, num_types, pad_idx)
    return torch.ops.molm_fast.gaussian_pair_bias(coords, tokens.long(), *params, cu_seqlens, max_seqlen, num_types,
                                                  pad_idx)
