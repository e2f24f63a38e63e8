"""gaussian_pair_bias in Triton: coordinates + atom types -> Uni-Mol's layer-0 pair bias, forward and backward.

One program takes NUM_BLOCKS tiles of BLOCK_P pairs of one molecule (pairs flattened as p = i * n + j over the
molecule's [n, n] block): distance, edge affine, the K Gaussians in fp32 registers, then the two linears with
tl.dot (weights loaded once per program), so [pairs, K] never reaches global memory. Output rows h are
contiguous in p, so stores coalesce. Padded batches (IS_VARLEN = False) are packed ones with every n = N.
The backward recomputes the tile, keeps dW1, dW2, db1, db2, dmeans, dstds in registers over the program's
tiles and adds them once with atomics; per-pair scatters (mul/bias rows, coordinates) are atomics too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from molm_fast.kernels._common import next_power_of_2

ROOT_2PI = (2 * 3.14159) ** 0.5  # upstream's literal pi (spec 3d-molm.md §8.3)


@triton.jit
def _tile(coords_ptr, tokens_ptr, cu_seqlens_ptr, cu_pairs_ptr, mul_ptr, bias_ptr, work_ptr, pid, blk, N,
          CHUNKS, NUM_TYPES, PAD_IDX, IS_VARLEN: tl.constexpr, BLOCK_P: tl.constexpr, NUM_BLOCKS: tl.constexpr,
          CD: tl.constexpr):
    """The pairs of one tile: where the molecule starts, its size, its block, and per pair its features."""
    if IS_VARLEN:
        b = tl.load(work_ptr + 2 * pid).to(tl.int64)
        chunk = tl.load(work_ptr + 2 * pid + 1).to(tl.int64)
        start = tl.load(cu_seqlens_ptr + b).to(tl.int64)
        n = tl.load(cu_seqlens_ptr + b + 1).to(tl.int64) - start
        block = tl.load(cu_pairs_ptr + b)
    else:
        b = pid // CHUNKS
        chunk = pid % CHUNKS
        start = b * N
        n = b * 0 + N
        block = b * N * N
    p = (chunk * NUM_BLOCKS + blk) * BLOCK_P + tl.arange(0, BLOCK_P)  # [P] int64
    valid = p < n * n
    i = tl.where(valid, p // tl.maximum(n, 1), 0)
    j = tl.where(valid, p % tl.maximum(n, 1), 0)
    ti = tl.load(tokens_ptr + start + i, mask=valid, other=PAD_IDX)
    tj = tl.load(tokens_ptr + start + j, mask=valid, other=PAD_IDX)
    pair_pad = (ti == PAD_IDX) | (tj == PAD_IDX)
    ci = coords_ptr + 3 * (start + i)
    cj = coords_ptr + 3 * (start + j)
    d0 = tl.load(ci, mask=valid, other=0.0).to(CD) - tl.load(cj, mask=valid, other=0.0).to(CD)
    d1 = tl.load(ci + 1, mask=valid, other=0.0).to(CD) - tl.load(cj + 1, mask=valid, other=0.0).to(CD)
    d2 = tl.load(ci + 2, mask=valid, other=0.0).to(CD) - tl.load(cj + 2, mask=valid, other=0.0).to(CD)
    d2sum = d0 * d0 + d1 * d1 + d2 * d2
    if CD == tl.float64:
        dist = tl.sqrt(d2sum)
    else:
        dist = tl.sqrt_rn(d2sum)  # IEEE-rounded: the fp32 parity bar is 1e-5
    dist = tl.where(pair_pad, 0.0, dist)
    e = tl.where(pair_pad, 0, ti * NUM_TYPES + tj)
    mul = tl.load(mul_ptr + e, mask=valid, other=0.0).to(CD)
    x = mul * dist + tl.load(bias_ptr + e, mask=valid, other=0.0).to(CD)
    return start, n, block, p, valid, i, j, tj == PAD_IDX, dist, e, mul, x, d0, d1, d2


@triton.jit
def _gaussians(x, mean, std, ROOT: tl.constexpr):
    """[P, K] Gaussians of x [P] in x's dtype."""
    u = (x[:, None] - mean[None, :]) / std[None, :]
    return tl.exp(-0.5 * u * u) / (ROOT * std[None, :]), u


@triton.jit
def _gelu(h):
    return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))


@triton.jit
def _dot(a, b, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=INPUT_PRECISION, out_dtype=tl.float32
                  if DOT_DTYPE != tl.float64 else tl.float64)


@triton.jit
def _load_params(means_ptr, stds_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K, C, H, KP: tl.constexpr, CP: tl.constexpr,
                 HP: tl.constexpr, CD: tl.constexpr):
    """mean, std [KP] (CD), w1 [CP, KP], b1 [CP], w2 [HP, CP], b2 [HP]; zero past K, C, H so padding adds 0."""
    k, c, h = tl.arange(0, KP), tl.arange(0, CP), tl.arange(0, HP)
    mean = tl.load(means_ptr + k, mask=k < K, other=0.0).to(CD)
    std = tl.abs(tl.load(stds_ptr + k, mask=k < K, other=1.0).to(CD)) + 1e-5
    w1 = tl.load(w1_ptr + c[:, None] * K + k[None, :], mask=(c[:, None] < C) & (k[None, :] < K), other=0.0)
    w2 = tl.load(w2_ptr + h[:, None] * C + c[None, :], mask=(h[:, None] < H) & (c[None, :] < C), other=0.0)
    b1 = tl.load(b1_ptr + c, mask=c < C, other=0.0).to(CD)
    b2 = tl.load(b2_ptr + h, mask=h < H, other=0.0).to(CD)
    return mean, std, w1, b1, w2, b2


@triton.jit
def _gaussian_pair_bias_forward_kernel(
    coords_ptr, tokens_ptr, cu_seqlens_ptr, cu_pairs_ptr, work_ptr, mul_ptr, bias_ptr, means_ptr, stds_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr, N, CHUNKS, K, C, H, NUM_TYPES, PAD_IDX,
    IS_VARLEN: tl.constexpr, BLOCK_P: tl.constexpr, NUM_BLOCKS: tl.constexpr, KP: tl.constexpr, CP: tl.constexpr,
    HP: tl.constexpr, CD: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, ROOT: tl.constexpr,
    ACT_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    mean, std, w1, b1, w2, b2 = _load_params(means_ptr, stds_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K, C, H, KP, CP,
                                             HP, CD)
    h = tl.arange(0, HP)
    for blk in tl.static_range(NUM_BLOCKS):
        start, n, block, p, valid, i, j, pad_j, dist, e, mul, x, d0, d1, d2 = _tile(
            coords_ptr, tokens_ptr, cu_seqlens_ptr, cu_pairs_ptr, mul_ptr, bias_ptr, work_ptr, pid, blk, N, CHUNKS,
            NUM_TYPES, PAD_IDX, IS_VARLEN, BLOCK_P, NUM_BLOCKS, CD)
        g, _ = _gaussians(x, mean, std, ROOT)  # [P, KP] in CD
        g = g.to(ACT_DTYPE)  # upstream casts the Gaussians to the parameter dtype
        hid = _dot(g, tl.trans(w1), DOT_DTYPE, INPUT_PRECISION).to(CD) + b1[None, :]  # [P, CP]
        act = _gelu(hid).to(ACT_DTYPE)
        y = _dot(act, tl.trans(w2), DOT_DTYPE, INPUT_PRECISION).to(CD) + b2[None, :]  # [P, HP]
        y = tl.where(pad_j[:, None], float("-inf"), y)
        ptrs = out_ptr + H * block + h[None, :] * (n * n) + p[:, None]
        tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=valid[:, None] & (h[None, :] < H))


@triton.jit
def _gaussian_pair_bias_backward_kernel(
    grad_ptr, coords_ptr, tokens_ptr, cu_seqlens_ptr, cu_pairs_ptr, work_ptr, mul_ptr, bias_ptr, means_ptr, stds_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr, d_coords_ptr, d_mul_ptr, d_bias_ptr, d_means_ptr, d_stds_ptr, d_w1_ptr, d_b1_ptr,
    d_w2_ptr, d_b2_ptr, N, CHUNKS, K, C, H, NUM_TYPES, PAD_IDX,
    IS_VARLEN: tl.constexpr, BLOCK_P: tl.constexpr, NUM_BLOCKS: tl.constexpr, KP: tl.constexpr, CP: tl.constexpr,
    HP: tl.constexpr, CD: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, ROOT: tl.constexpr,
    ACT_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    mean, std, w1, b1, w2, b2 = _load_params(means_ptr, stds_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K, C, H, KP, CP,
                                             HP, CD)
    k, c, h = tl.arange(0, KP), tl.arange(0, CP), tl.arange(0, HP)
    acc_w1 = tl.zeros((CP, KP), dtype=CD)
    acc_w2 = tl.zeros((HP, CP), dtype=CD)
    acc_b1 = tl.zeros((CP,), dtype=CD)
    acc_b2 = tl.zeros((HP,), dtype=CD)
    acc_mean = tl.zeros((KP,), dtype=CD)
    acc_std = tl.zeros((KP,), dtype=CD)
    for blk in tl.static_range(NUM_BLOCKS):
        start, n, block, p, valid, i, j, pad_j, dist, e, mul, x, d0, d1, d2 = _tile(
            coords_ptr, tokens_ptr, cu_seqlens_ptr, cu_pairs_ptr, mul_ptr, bias_ptr, work_ptr, pid, blk, N, CHUNKS,
            NUM_TYPES, PAD_IDX, IS_VARLEN, BLOCK_P, NUM_BLOCKS, CD)
        live = valid & ~pad_j  # -inf outputs have no gradient
        g, u = _gaussians(x, mean, std, ROOT)  # [P, KP]
        hid = _dot(g, tl.trans(w1), DOT_DTYPE, INPUT_PRECISION).to(CD) + b1[None, :]  # [P, CP]
        act = _gelu(hid)
        gptrs = grad_ptr + H * block + h[None, :] * (n * n) + p[:, None]
        dy = tl.load(gptrs, mask=live[:, None] & (h[None, :] < H), other=0.0).to(CD)  # [P, HP]
        acc_b2 += tl.sum(dy, 0)
        acc_w2 += _dot(tl.trans(dy), act, DOT_DTYPE, INPUT_PRECISION).to(CD)
        cdf = 0.5 * (1.0 + tl.math.erf(hid * 0.7071067811865476))
        d_hid = _dot(dy, w2, DOT_DTYPE, INPUT_PRECISION).to(CD) * (cdf + hid * tl.exp(-0.5 * hid * hid)
                                                                   * 0.3989422804014327)  # [P, CP], exact GELU'
        acc_b1 += tl.sum(d_hid, 0)
        acc_w1 += _dot(tl.trans(d_hid), g, DOT_DTYPE, INPUT_PRECISION).to(CD)
        t = _dot(d_hid, w1, DOT_DTYPE, INPUT_PRECISION).to(CD) * g / std[None, :]  # [P, KP]: dL/dG * G / s
        acc_mean += tl.sum(t * u, 0)
        acc_std += tl.sum(t * (u * u - 1.0), 0)
        dx = tl.where(live, -tl.sum(t * u, 1), 0.0)  # [P]
        tl.atomic_add(d_mul_ptr + e, dx * dist, mask=live)
        tl.atomic_add(d_bias_ptr + e, dx, mask=live)
        w = tl.where(live & (dist > 0), dx * mul / tl.where(dist > 0, dist, 1.0), 0.0)
        gi = d_coords_ptr + 3 * (start + i)
        gj = d_coords_ptr + 3 * (start + j)
        tl.atomic_add(gi, w * d0, mask=live)
        tl.atomic_add(gi + 1, w * d1, mask=live)
        tl.atomic_add(gi + 2, w * d2, mask=live)
        tl.atomic_add(gj, -w * d0, mask=live)
        tl.atomic_add(gj + 1, -w * d1, mask=live)
        tl.atomic_add(gj + 2, -w * d2, mask=live)
    sign = tl.where(tl.load(stds_ptr + k, mask=k < K, other=0.0) > 0, 1.0, -1.0)
    sign = tl.where(tl.load(stds_ptr + k, mask=k < K, other=0.0) == 0, 0.0, sign)
    tl.atomic_add(d_means_ptr + k, acc_mean, mask=k < K)
    tl.atomic_add(d_stds_ptr + k, acc_std * sign, mask=k < K)
    tl.atomic_add(d_w1_ptr + c[:, None] * K + k[None, :], acc_w1, mask=(c[:, None] < C) & (k[None, :] < K))
    tl.atomic_add(d_w2_ptr + h[:, None] * C + c[None, :], acc_w2, mask=(h[:, None] < H) & (c[None, :] < C))
    tl.atomic_add(d_b1_ptr + c, acc_b1, mask=c < C)
    tl.atomic_add(d_b2_ptr + h, acc_b2, mask=h < H)


# ---- launchers -----------------------------------------------------------------------------------------------
def _config(w1: torch.Tensor, coords: torch.Tensor, backward: bool):
    K, C = w1.shape[1], w1.shape[0]
    interpret = coords.device.type == "cpu"  # the Triton interpreter
    fp64 = w1.dtype == torch.float64
    cd = tl.float64 if fp64 else tl.float32
    # The CPU interpreter truncates when it converts to bf16 (the GPU rounds to nearest): there, the Gaussians and
    # the activations stay in fp32, the dots multiply in fp32 and the glue rounds the output.
    lowp = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(w1.dtype)
    dot_dtype = cd if (lowp is None or interpret) else lowp
    act_dtype = cd if (lowp is None or interpret) else lowp
    return dict(KP=next_power_of_2(K), CP=next_power_of_2(C), CD=cd, DOT_DTYPE=dot_dtype, ACT_DTYPE=act_dtype,
                INPUT_PRECISION="ieee", ROOT=ROOT_2PI, **_blocks(coords.device, backward))


def _blocks(device: torch.device, backward: bool) -> dict:
    """Pairs per tile and tiles per program (the weights load once per program); 8 warps for the [P, 128] tiles."""
    if device.type == "cpu":  # the interpreter
        return dict(BLOCK_P=16, NUM_BLOCKS=1)
    return dict(BLOCK_P=32 if backward else 64, NUM_BLOCKS=4, num_warps=8)


def pairs_per_program(device: torch.device, backward: bool) -> int:
    """How many pairs one program takes (the glue builds the tile list from it)."""
    b = _blocks(device, backward)
    return b["BLOCK_P"] * b["NUM_BLOCKS"]


def gaussian_pair_bias_forward_triton(coords, tokens, params, cu_seqlens, cu_pairs, tiles, N, out, num_types,
                                      pad_idx):
    """coords [T, 3], tokens [T] int64, params contiguous; tiles = (grid, work [W, 2] int32 or None, chunks per
    padded molecule) for pairs_per_program(); writes out (padded [B, H, N, N] or packed)."""
    mul, bias, means, stds, w1, b1, w2, b2 = params
    cfg = _config(w1, coords, backward=False)
    H = w2.shape[0]
    grid, work, chunks = tiles
    if grid == 0:
        return out
    _gaussian_pair_bias_forward_kernel[(grid,)](
        coords, tokens, cu_seqlens, cu_pairs, work, mul, bias, means, stds, w1, b1, w2, b2, out, N, chunks,
        w1.shape[1], w1.shape[0], H, num_types, pad_idx, IS_VARLEN=cu_seqlens is not None, HP=next_power_of_2(H),
        **cfg)
    return out


def gaussian_pair_bias_backward_triton(grad, coords, tokens, params, cu_seqlens, cu_pairs, tiles, N, grads,
                                       num_types, pad_idx):
    """grads: zeroed [coords, mul, bias, means, stds, w1, b1, w2, b2] buffers in the compute dtype, added to."""
    mul, bias, means, stds, w1, b1, w2, b2 = params
    cfg = _config(w1, coords, backward=True)
    H = w2.shape[0]
    grid, work, chunks = tiles
    if grid == 0:
        return grads
    _gaussian_pair_bias_backward_kernel[(grid,)](
        grad, coords, tokens, cu_seqlens, cu_pairs, work, mul, bias, means, stds, w1, b1, w2, b2, *grads, N, chunks,
        w1.shape[1], w1.shape[0], H, num_types, pad_idx, IS_VARLEN=cu_seqlens is not None, HP=next_power_of_2(H),
        **cfg)
    return grads
