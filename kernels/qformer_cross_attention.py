"""qformer_cross_attention in Triton: q [B, H, Q, D] attends to its molecule's keys (padded [B, H, N, D] with an
optional [B, N] mask, or packed [T, H, D] with cu_seqlens). One program per (molecule, head) holds all Q <= 32
query rows and walks the molecule's keys in blocks (online softmax forward; backward recomputes p from the row
LSE and writes dk/dv of its own keys, so no atomics). One body for padded and packed: IS_VARLEN.
A molecule whose mask has no True key is "uniform": scores taken as 0 over all N keys (upstream's +finfo.min).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from molm_fast.kernels._common import next_power_of_2


@triton.jit
def _mm(a, b, INPUT_PRECISION: tl.constexpr):
    """a @ b in fp32 (tf32 tensor cores for bf16/fp16 inputs, IEEE for fp32). The probabilities and score
    gradients stay fp32 (rounding them to bf16, flash-style, costs ~1% and the op is not compute-bound at Q = 8);
    the CPU interpreter's bf16 tl.dot is also wrong."""
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=INPUT_PRECISION)


@triton.jit
def _molecule_keys(cu_ptr, mask_ptr, b, N, stride_mb, IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """(first key row, key count, uniform flag) of molecule b."""
    if IS_VARLEN:
        start = tl.load(cu_ptr + b).to(tl.int64)
        n = tl.load(cu_ptr + b + 1).to(tl.int64) - start
    else:
        start = b * 0
        n = b * 0 + N
    count = 0
    if HAS_MASK:
        for n0 in range(0, N, BLOCK_N):
            offs = n0 + tl.arange(0, BLOCK_N)
            count += tl.sum(tl.load(mask_ptr + b * stride_mb + offs, mask=offs < N, other=0).to(tl.int32))
    uniform = HAS_MASK & (count == 0)
    return start, n, uniform


@triton.jit
def _scores(q, k, offs_n, n, mask_ptr, b, stride_mb, uniform, scale, HAS_MASK: tl.constexpr,
            INPUT_PRECISION: tl.constexpr):
    """Scores [BLOCK_Q, BLOCK_N] fp32 of one key block, with -inf on excluded keys."""
    s = _mm(q, tl.trans(k), INPUT_PRECISION) * scale
    keep = offs_n < n
    if HAS_MASK:
        attend = tl.load(mask_ptr + b * stride_mb + offs_n, mask=keep, other=0) != 0
        keep = keep & (attend | uniform)
        s = tl.where(uniform, 0.0, s)
    return tl.where(keep[None, :], s, float("-inf"))


@triton.jit
def _program_setup(q_ptr, k_ptr, v_ptr, mask_ptr, cu_ptr, Q, N, D, stride_qb, stride_qh, stride_qq, stride_kb,
                   stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb, BLOCK_Q: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_MASK: tl.constexpr):
    """This program's molecule b, head h, its keys (start, n, uniform), the q tile and the k/v base pointers."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    start, n, uniform = _molecule_keys(cu_ptr, mask_ptr, b, N, stride_mb, IS_VARLEN, HAS_MASK, BLOCK_N)
    offs_q, offs_d = tl.arange(0, BLOCK_Q), tl.arange(0, BLOCK_D)
    mq, md = offs_q < Q, offs_d < D
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_q[:, None] * stride_qq + offs_d[None, :],
                mask=mq[:, None] & md[None, :], other=0.0)  # [BLOCK_Q, BLOCK_D]
    k_base = k_ptr + b * stride_kb + h * stride_kh + start * stride_kn
    v_base = v_ptr + b * stride_vb + h * stride_vh + start * stride_vn
    return b, h, start, n, uniform, offs_q, offs_d, mq, md, q, k_base, v_base


@triton.jit
def _key_block(k_base, v_base, n0, n, offs_d, md, stride_kn, stride_vn, BLOCK_N: tl.constexpr):
    """Keys n0 .. n0 + BLOCK_N of the molecule: (offsets, [BLOCK_N, BLOCK_D] load mask, k, v)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    kv_mask = (offs_n < n)[:, None] & md[None, :]
    k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
    return offs_n, kv_mask, k, v


@triton.jit
def _qformer_cross_attention_forward_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, cu_ptr, o_ptr, lse_ptr, Q, N, D, scale,
    stride_qb, stride_qh, stride_qq, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    b, h, start, n, uniform, offs_q, offs_d, mq, md, q, k_base, v_base = _program_setup(
        q_ptr, k_ptr, v_ptr, mask_ptr, cu_ptr, Q, N, D, stride_qb, stride_qh, stride_qq, stride_kb, stride_kh,
        stride_kn, stride_vb, stride_vh, stride_vn, stride_mb, BLOCK_Q, BLOCK_N, BLOCK_D, IS_VARLEN, HAS_MASK)
    H = tl.num_programs(1)
    m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_Q,), tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    for n0 in range(0, n, BLOCK_N):
        offs_n, kv_mask, k, v = _key_block(k_base, v_base, n0, n, offs_d, md, stride_kn, stride_vn, BLOCK_N)
        s = _scores(q, k, offs_n, n, mask_ptr, b, stride_mb, uniform, scale, HAS_MASK, INPUT_PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])  # [BLOCK_Q, BLOCK_N] fp32
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mm(p, v, INPUT_PRECISION)
        m_i = m_new
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.log(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    row = (b * H + h) * Q + offs_q  # out [B, H, Q, D] and lse [B, H, Q] are contiguous
    tl.store(o_ptr + row[:, None] * D + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=mq[:, None] & md[None, :])
    tl.store(lse_ptr + row, lse, mask=mq)


@triton.jit
def _qformer_cross_attention_backward_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, cu_ptr, lse_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, Q, N, D, scale,
    stride_qb, stride_qh, stride_qq, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb,
    stride_dkb, stride_dkh, stride_dkn,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IS_VARLEN: tl.constexpr,
    HAS_MASK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    b, h, start, n, uniform, offs_q, offs_d, mq, md, q, k_base, v_base = _program_setup(
        q_ptr, k_ptr, v_ptr, mask_ptr, cu_ptr, Q, N, D, stride_qb, stride_qh, stride_qq, stride_kb, stride_kh,
        stride_kn, stride_vb, stride_vh, stride_vn, stride_mb, BLOCK_Q, BLOCK_N, BLOCK_D, IS_VARLEN, HAS_MASK)
    H = tl.num_programs(1)
    qd_mask = mq[:, None] & md[None, :]
    row = (b * H + h) * Q + offs_q  # do, dq [B, H, Q, D] and lse [B, H, Q] are contiguous
    do = tl.load(do_ptr + row[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(lse_ptr + row, mask=mq, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    # Pass 1: delta = sum_j p_j dp_j, as autograd's softmax backward (exact zeros for one key / uniform rows).
    delta = tl.zeros((BLOCK_Q,), tl.float32)
    for n0 in range(0, n, BLOCK_N):
        offs_n, kv_mask, k, v = _key_block(k_base, v_base, n0, n, offs_d, md, stride_kn, stride_vn, BLOCK_N)
        s = _scores(q, k, offs_n, n, mask_ptr, b, stride_mb, uniform, scale, HAS_MASK, INPUT_PRECISION)
        p = tl.where(mq[:, None], tl.exp(s - lse[:, None]), 0.0)  # [BLOCK_Q, BLOCK_N] fp32
        delta += tl.sum(p * _mm(do, tl.trans(v), INPUT_PRECISION), 1)
    # Pass 2: dk, dv of this molecule's keys (written once), dq accumulated.
    dq = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
    dk_base = dk_ptr + b * stride_dkb + h * stride_dkh + start * stride_dkn
    dv_base = dv_ptr + b * stride_dkb + h * stride_dkh + start * stride_dkn
    for n0 in range(0, n, BLOCK_N):
        offs_n, kv_mask, k, v = _key_block(k_base, v_base, n0, n, offs_d, md, stride_kn, stride_vn, BLOCK_N)
        s = _scores(q, k, offs_n, n, mask_ptr, b, stride_mb, uniform, scale, HAS_MASK, INPUT_PRECISION)
        p = tl.where(mq[:, None], tl.exp(s - lse[:, None]), 0.0)  # [BLOCK_Q, BLOCK_N] fp32
        dv = _mm(tl.trans(p), do, INPUT_PRECISION)  # [BLOCK_N, BLOCK_D]
        dp = _mm(do, tl.trans(v), INPUT_PRECISION)  # [BLOCK_Q, BLOCK_N]
        ds = p * (dp - delta[:, None]) * scale
        dq += _mm(ds, k, INPUT_PRECISION)
        dk = _mm(tl.trans(ds), q, INPUT_PRECISION)
        tl.store(dk_base + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty),
                 mask=kv_mask)
        tl.store(dv_base + offs_n[:, None] * stride_dkn + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty),
                 mask=kv_mask)
    tl.store(dq_ptr + row[:, None] * D + offs_d[None, :], dq.to(dq_ptr.dtype.element_ty), mask=qd_mask)


def _key_strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    return (0, t.stride(1), t.stride(0)) if varlen else (t.stride(0), t.stride(1), t.stride(2))


def _launch_args(q, k, v, key_mask, cu_seqlens, max_seqlen):
    varlen = cu_seqlens is not None
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, H, Q, D = q.shape
    N = max_seqlen if varlen else k.shape[2]
    mask = key_mask.to(torch.int8).contiguous() if key_mask is not None else None
    meta = dict(BLOCK_Q=next_power_of_2(Q), BLOCK_N=min(64, next_power_of_2(N)), BLOCK_D=next_power_of_2(D),
                IS_VARLEN=varlen, HAS_MASK=mask is not None,
                INPUT_PRECISION="ieee" if q.dtype == torch.float32 or q.device.type == "cpu" else "tf32")
    # Triton wants a tensor for every pointer: an unused one points at q (never read).
    ptrs = (mask if mask is not None else q, cu_seqlens if varlen else q)
    strides = (*q.stride()[:3], *_key_strides(k, varlen), *_key_strides(v, varlen),
               mask.stride(0) if mask is not None else 0)
    return (q, k, v), ptrs, (B, H), (Q, N, D), strides, meta


def qformer_cross_attention_forward_triton(q, k, v, key_mask, cu_seqlens, max_seqlen, scale):
    (q, k, v), (mask, cu), (B, H), sizes, strides, meta = _launch_args(q, k, v, key_mask, cu_seqlens, max_seqlen)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [B, H, Q, D]
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)  # [B, H, Q] fp32
    _qformer_cross_attention_forward_kernel[(B, H)](q, k, v, mask, cu, out, lse, *sizes, scale, *strides, **meta)
    return out, lse


def qformer_cross_attention_backward_triton(grad_out, q, k, v, lse, key_mask, cu_seqlens, max_seqlen, scale):
    (q, k, v), (mask, cu), (B, H), sizes, strides, meta = _launch_args(q, k, v, key_mask, cu_seqlens, max_seqlen)
    grad_out, lse = grad_out.contiguous(), lse.contiguous()
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [B, H, Q, D]
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)  # [B, H, N, D] or [T, H, D]
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    varlen = cu_seqlens is not None
    _qformer_cross_attention_backward_kernel[(B, H)](
        q, k, v, mask, cu, lse, grad_out, dq, dk, dv, *sizes, scale, *strides, *_key_strides(dk, varlen),
        **meta)
    return dq, dk, dv
