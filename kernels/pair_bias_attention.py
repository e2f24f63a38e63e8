"""pair_bias_attention in Triton: logits = (q*scale) k^T + bias written once, out = dropout(softmax) v, row LSE;
backward dq, dk, dv, dbias (= dlogits + grad on the logits) with p recomputed from q, k, bias and the LSE.

Whole rows in one block (N <= a few hundred, performance.md §2.9), so the softmax needs no online rescaling. The
head dim (8 in Uni-Mol) is zero-padded to 16, tl.dot's smallest K: exact, and the op is memory-bound anyway. fp32
dots run in IEEE precision (the fp32 parity bar is 1e-5, TF32 would miss it); bf16 dots take bf16 operands, as
Uni-Mol's bf16 bmm does (q*scale is rounded to bf16 first, exactly as the reference). One kernel body serves padded
and packed batches (IS_VARLEN); dropout draws Philox from (seed, element index of the logits), as every backend does.
Forward: one program per (molecule, head, block of rows). Backward: one program per (molecule, head), walking the
row blocks and keeping dk and dv in registers (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from molm_fast.kernels._common import dropout_keep, next_power_of_2


@triton.jit
def _problem(b, h, H, N, cu_ptr, cu_pairs_ptr, stride_bb, stride_bh, stride_bi, stride_bj, IS_VARLEN: tl.constexpr):
    """(first token, n, offset of the pair block in the contiguous logits, first LSE element, LSE row stride,
    first bias element, bias row stride, bias column stride) of molecule b, head h."""
    if IS_VARLEN:
        t0 = tl.load(cu_ptr + b).to(tl.int64)
        n = tl.load(cu_ptr + b + 1).to(tl.int64) - t0
        pair = H * tl.load(cu_pairs_ptr + b) + h * n * n
        return t0, n, pair, t0 * H + h, H, pair, n, 1
    else:
        return (b * 0, N + b * 0, (b * H + h) * N * N, (b * H + h) * N, 1, b * stride_bb + h * stride_bh,
                stride_bi, stride_bj)


@triton.jit
def _logits_block(q_ptr, k_ptr, bias_ptr, rows, cols, n, scale, stride_qn, stride_kn, bias_base, stride_bi,
                  stride_bj, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_M, BLOCK_N] fp32 logits (q*scale) k^T + bias, -inf outside the molecule; also q*scale [BLOCK_M, D]."""
    dims = tl.arange(0, BLOCK_D)
    mr, mc, md = rows < n, cols < n, dims < HEAD_DIM
    q = tl.load(q_ptr + rows[:, None] * stride_qn + dims[None, :], mask=mr[:, None] & md[None, :], other=0.0)
    k = tl.load(k_ptr + cols[:, None] * stride_kn + dims[None, :], mask=mc[:, None] & md[None, :], other=0.0)
    qs = (q.to(tl.float32) * scale).to(q.dtype)  # Uni-Mol scales q in its own dtype
    if q.dtype == tl.float32:
        s = tl.dot(qs, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(qs, tl.trans(k), out_dtype=tl.float32)
    m2 = mr[:, None] & mc[None, :]
    bias = tl.load(bias_ptr + bias_base + rows[:, None] * stride_bi + cols[None, :] * stride_bj, mask=m2,
                   other=float("-inf"))
    return tl.where(m2, s + bias.to(tl.float32), float("-inf")), qs, k


@triton.jit
def _dot(a, b, FP32: tl.constexpr):
    if FP32:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b, out_dtype=tl.float32)


@triton.jit
def _pair_bias_attention_forward_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, logits_ptr, lse_ptr, cu_ptr, cu_pairs_ptr,
    H, N, scale, dropout_p, seed,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_bb, stride_bh, stride_bi, stride_bj,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    WRITE_LOGITS: tl.constexpr,
):
    """HEAD_DIM is q's and k's head dim, HEAD_DIM_V v's and out's (they differ on the low-rank path, which also
    writes no logits: WRITE_LOGITS False)."""
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    t0, n, pair, lse_base, lse_stride, bias_base, stride_i, stride_j = _problem(
        b, h, H, N, cu_ptr, cu_pairs_ptr, stride_bb, stride_bh, stride_bi, stride_bj, IS_VARLEN)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    if tl.program_id(1) * BLOCK_M < n:
        cols = tl.arange(0, BLOCK_N)
        dims = tl.arange(0, BLOCK_DV)
        mr, mc = rows < n, cols < n
        s, _, _ = _logits_block(q_ptr + b * stride_qb + h * stride_qh + t0 * stride_qn,
                                k_ptr + b * stride_kb + h * stride_kh + t0 * stride_kn, bias_ptr, rows, cols, n,
                                scale, stride_qn, stride_kn, bias_base, stride_i, stride_j, HEAD_DIM, BLOCK_D)
        m2 = mr[:, None] & mc[None, :]
        elem = pair + rows[:, None] * n + cols[None, :]  # [BLOCK_M, BLOCK_N] int64 index into the logits
        if WRITE_LOGITS:
            tl.store(logits_ptr + elem, s.to(logits_ptr.dtype.element_ty), mask=m2)
        m = tl.max(s, 1)
        empty = m == float("-inf")  # a row with no key: out 0, LSE -inf
        m = tl.where(empty, 0.0, m)
        e = tl.exp(s - m[:, None])
        denom = tl.where(empty, 1.0, tl.sum(e, 1))  # e is all 0 on empty rows
        tl.store(lse_ptr + lse_base + rows * lse_stride, tl.where(empty, float("-inf"), m + tl.log(denom)), mask=mr)
        p = e / denom[:, None]
        if HAS_DROPOUT:
            p = tl.where(dropout_keep(seed, elem, dropout_p), p / (1.0 - dropout_p), 0.0)
        v = tl.load(v_ptr + b * stride_vb + h * stride_vh + (t0 + cols[:, None]) * stride_vn + dims[None, :],
                    mask=mc[:, None] & (dims[None, :] < HEAD_DIM_V), other=0.0)
        o = _dot(p.to(v.dtype), v, v.dtype == tl.float32)
        out = out_ptr + b * stride_ob + h * stride_oh + (t0 + rows[:, None]) * stride_on + dims[None, :]
        tl.store(out, o.to(out_ptr.dtype.element_ty), mask=mr[:, None] & (dims[None, :] < HEAD_DIM_V))


@triton.jit
def _pair_bias_attention_backward_kernel(
    go_ptr, gl_ptr, q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, lse_ptr, dq_ptr, dk_ptr, dv_ptr, dbias_ptr,
    cu_ptr, cu_pairs_ptr, H, N, scale, dropout_p, seed,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_gb, stride_gh, stride_gn, stride_bb, stride_bh, stride_bi, stride_bj,
    stride_dqb, stride_dqh, stride_dqn, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_GRAD_LOGITS: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    b, h = bh // H, bh % H
    t0, n, pair, lse_base, lse_stride, bias_base, stride_i, stride_j = _problem(
        b, h, H, N, cu_ptr, cu_pairs_ptr, stride_bb, stride_bh, stride_bi, stride_bj, IS_VARLEN)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    mc, md = cols < n, dims < HEAD_DIM
    q_base = b * stride_qb + h * stride_qh + t0 * stride_qn
    k_base = b * stride_kb + h * stride_kh + t0 * stride_kn
    v = tl.load(v_ptr + b * stride_vb + h * stride_vh + (t0 + cols[:, None]) * stride_vn + dims[None, :],
                mask=mc[:, None] & md[None, :], other=0.0)
    FP32: tl.constexpr = q_ptr.dtype.element_ty == tl.float32
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for start in range(0, n, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mr = rows < n
        m2 = mr[:, None] & mc[None, :]
        s, qs, k = _logits_block(q_ptr + q_base, k_ptr + k_base, bias_ptr, rows, cols, n, scale, stride_qn,
                                 stride_kn, bias_base, stride_i, stride_j, HEAD_DIM, BLOCK_D)
        lse = tl.load(lse_ptr + lse_base + rows * lse_stride, mask=mr, other=float("-inf"))
        empty = lse == float("-inf")
        p = tl.exp(s - tl.where(empty, 0.0, lse)[:, None])
        p = tl.where(empty[:, None], 0.0, p)
        rm = mr[:, None] & md[None, :]
        go = tl.load(go_ptr + b * stride_gb + h * stride_gh + (t0 + rows[:, None]) * stride_gn + dims[None, :],
                     mask=rm, other=0.0)
        o = tl.load(out_ptr + b * stride_ob + h * stride_oh + (t0 + rows[:, None]) * stride_on + dims[None, :],
                    mask=rm, other=0.0)
        delta = tl.sum(go.to(tl.float32) * o.to(tl.float32), 1)  # [BLOCK_M] = rowsum(p * dp)
        dp = _dot(go, tl.trans(v), FP32)
        elem = pair + rows[:, None] * n + cols[None, :]
        if HAS_DROPOUT:
            f = tl.where(dropout_keep(seed, elem, dropout_p), 1.0 / (1.0 - dropout_p), 0.0)
            pd = p * f
            dp = dp * f
        else:
            pd = p
        ds = p * (dp - delta[:, None])
        if HAS_GRAD_LOGITS:
            ds += tl.load(gl_ptr + elem, mask=m2, other=0.0).to(tl.float32)
        ds = tl.where(m2, ds, 0.0)
        tl.store(dbias_ptr + elem, ds.to(dbias_ptr.dtype.element_ty), mask=m2)
        dq = _dot(ds.to(k.dtype), k, FP32) * scale
        dq_rows = dq_ptr + b * stride_dqb + h * stride_dqh + (t0 + rows[:, None]) * stride_dqn + dims[None, :]
        tl.store(dq_rows, dq.to(dq_ptr.dtype.element_ty), mask=rm)
        dk += _dot(tl.trans(ds.to(qs.dtype)), qs, FP32)
        dv += _dot(tl.trans(pd.to(go.dtype)), go, FP32)
    cm = mc[:, None] & md[None, :]
    tl.store(dk_ptr + b * stride_dkb + h * stride_dkh + (t0 + cols[:, None]) * stride_dkn + dims[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=cm)
    tl.store(dv_ptr + b * stride_dvb + h * stride_dvh + (t0 + cols[:, None]) * stride_dvn + dims[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=cm)


def _token_strides(t: torch.Tensor, packed: bool) -> tuple[int, int, int]:
    """(b, h, token) strides of a [B, H, N, D] or packed [T, H, D] tensor whose last dim is contiguous."""
    return (0, t.stride(1), t.stride(0)) if packed else (t.stride(0), t.stride(1), t.stride(2))


def _setup(q, bias, cu_seqlens, max_seqlen):
    packed = cu_seqlens is not None
    if packed:
        B, H, D = cu_seqlens.numel() - 1, q.shape[1], q.shape[2]
        cu_pairs = torch.zeros(B + 1, dtype=torch.int64, device=q.device)
        cu_pairs[1:] = (cu_seqlens.diff().long() ** 2).cumsum(0)
        bias_strides = (0, 0, 0, 1)
        cu = cu_seqlens
    else:
        B, H, _, D = q.shape
        cu = cu_pairs = q  # unused placeholders
        bias_strides = tuple(bias.stride())
    BLOCK_N = next_power_of_2(max_seqlen)
    return packed, B, H, D, cu, cu_pairs, bias_strides, BLOCK_N, next_power_of_2(D)


def pair_bias_attention_forward_triton(q, k, v, bias, out, logits, lse, scale, dropout_p, seed, cu_seqlens,
                                       max_seqlen):
    """Fills out, logits (None: not written, the low-rank path) and lse, allocated by the caller; q, k, v need a
    contiguous last dim; v's head dim may differ from q's and k's."""
    packed, B, H, D, cu, cu_pairs, bias_strides, BLOCK_N, BLOCK_D = _setup(q, bias, cu_seqlens, max_seqlen)
    BLOCK_M = max(16, min(64, 4096 // BLOCK_N))
    grid = (B * H, triton.cdiv(max_seqlen, BLOCK_M))
    Dv = v.shape[-1]
    _pair_bias_attention_forward_kernel[grid](
        q, k, v, bias, out, logits if logits is not None else out, lse, cu, cu_pairs, H, max_seqlen, scale,
        dropout_p, seed, *_token_strides(q, packed), *_token_strides(k, packed), *_token_strides(v, packed),
        *_token_strides(out, packed), *bias_strides,
        HEAD_DIM=D, BLOCK_D=BLOCK_D, HEAD_DIM_V=Dv, BLOCK_DV=next_power_of_2(Dv), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        IS_VARLEN=packed, HAS_DROPOUT=dropout_p > 0, WRITE_LOGITS=logits is not None,
        num_warps=8 if BLOCK_N >= 256 else 4,  # whole rows of 256-512 keys: spread the row block over more threads
    )


def pair_bias_attention_backward_triton(grad_out, grad_logits, q, k, v, bias, out, lse, dq, dk, dv, dbias, scale,
                                        dropout_p, seed, cu_seqlens, max_seqlen):
    """Fills dq, dk, dv and dbias (contiguous, the logits' layout), all allocated by the caller."""
    packed, B, H, D, cu, cu_pairs, bias_strides, BLOCK_N, BLOCK_D = _setup(q, bias, cu_seqlens, max_seqlen)
    BLOCK_M = 16
    _pair_bias_attention_backward_kernel[(B * H,)](
        grad_out, grad_logits if grad_logits is not None else bias, q, k, v, bias, out, lse, dq, dk, dv, dbias,
        cu, cu_pairs, H, max_seqlen, scale, dropout_p, seed,
        *_token_strides(q, packed), *_token_strides(k, packed), *_token_strides(v, packed),
        *_token_strides(out, packed), *_token_strides(grad_out, packed), *bias_strides,
        *_token_strides(dq, packed), *_token_strides(dk, packed), *_token_strides(dv, packed),
        HEAD_DIM=D, BLOCK_D=BLOCK_D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, IS_VARLEN=packed, HAS_DROPOUT=dropout_p > 0,
        HAS_GRAD_LOGITS=grad_logits is not None, num_warps=8 if BLOCK_N >= 256 else 4,
    )
