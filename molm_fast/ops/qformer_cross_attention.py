"""qformer_cross_attention: each molecule's Q query tokens attend to that molecule's atom states only.

    s = (q @ k^T) * scale  (+ (1 - key_mask) * finfo.min)     p = softmax(s)     out = p @ v
Shapes: q [B, H, Q, D] (any strides, last dim contiguous preferred). Keys/values either padded [B, H, N, D]
with an optional ``key_mask`` [B, N] bool (True = attend, HF's ``encoder_attention_mask`` meaning), or packed
[T, H, D] with ``cu_seqlens`` [B + 1] int32 (every key of a molecule attended, no padded key computed).
Out [B, H, Q, D] in q's dtype. Saved for backward: q, k, v and the row log-sum-exp ``lse`` [B, H, Q] fp32; the
backward takes delta = sum_j p_j dp_j (as autograd's softmax backward), not do . o, so one key gives dq = 0 exactly.

The mask follows the reference (LAVIS BertSelfAttention, spec 3d-molm.md §1.3) exactly: the masked scores get
``+finfo.min``, so a row with NO attendable key (regime (b): the upstream-inverted mask on a molecule without
pads) becomes the uniform average over all N keys, and its q/k gradients are the softmax backward of the uniform
probabilities (what autograd gives upstream, although the forward no longer depends on q and k). Every backend
reproduces this with an explicit per-molecule "uniform" flag instead of adding finfo.min. The canonical
``lse`` of such a row is log(N) (scores taken as 0), so a forward and backward from different backends mix.

Which key_mask to pass (upstream-inverted or corrected) is decided by ``qformer_key_mask`` below; the inverted
semantics read the pad positions, so they need the padded layout; corrected semantics (and the upstream
no-pad regime (c)) run on packed keys. ``qformer_cross_kv`` computes the K/V projections of all cross-attention
layers in one GEMM. Attention dropout (training) runs the reference math: random streams never match across
backends, and this op is a small part of the Q-Former's cost (performance.md §5.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from molm_fast.ops import _backend

OP = "qformer_cross_attention"


def qformer_cross_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                                      key_mask: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                                      scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Plain PyTorch, as LAVIS's BertSelfAttention: matmul, scale, + (1 - mask) * finfo.min, softmax, dropout, @ v."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if cu_seqlens is not None:  # packed keys: one molecule at a time, every key attended
        outs = []
        for b in range(q.shape[0]):
            s, e = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
            kb, vb = k[s:e].transpose(0, 1), v[s:e].transpose(0, 1)  # [H, n, D]
            outs.append(qformer_cross_attention_reference(q[b:b + 1], kb[None], vb[None], scale=scale,
                                                          dropout_p=dropout_p))
        return torch.cat(outs, 0) if outs else q.new_empty(q.shape)
    probs = _reference_probs(q, k, key_mask, scale)  # [B, H, Q, N]
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)  # [B, H, Q, D]


def _reference_probs(q, k, key_mask, scale) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, Q, N]
    if key_mask is not None:
        extended = (1.0 - key_mask.to(scores.dtype))[:, None, None, :] * torch.finfo(scores.dtype).min  # [B,1,1,N]
        scores = scores + extended
    return torch.softmax(scores, dim=-1)


def _canonical_lse(q, k, key_mask, cu_seqlens, scale) -> torch.Tensor:
    """The row log-sum-exp every backend saves: masked keys excluded, uniform rows -> log(N). [B, H, Q] fp32."""
    if cu_seqlens is not None:
        rows = []
        for b in range(q.shape[0]):
            s, e = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
            rows.append(_canonical_lse(q[b:b + 1], k[s:e].transpose(0, 1)[None], None, None, scale))
        return torch.cat(rows, 0) if rows else q.new_empty(q.shape[:3], dtype=torch.float32)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [B, H, Q, N] fp32
    if key_mask is not None:
        uniform = ~key_mask.any(1)  # [B]
        keep = key_mask | uniform[:, None]  # [B, N]
        scores = torch.where(uniform[:, None, None, None], 0.0, scores)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    return torch.logsumexp(scores, dim=-1)  # [B, H, Q]


# ---- glue per backend ------------------------------------------------------------------------------------
def _forward_reference(q, k, v, key_mask, cu_seqlens, max_seqlen, scale):
    out = qformer_cross_attention_reference(q, k, v, key_mask=key_mask, cu_seqlens=cu_seqlens, scale=scale)
    return out.contiguous(), _canonical_lse(q, k, key_mask, cu_seqlens, scale)


def _backward_reference(grad_out, q, k, v, lse, key_mask, cu_seqlens, max_seqlen, scale):
    """The reference's autograd written out (a custom op's body runs below autograd): softmax backward of the
    recomputed probabilities, uniform rows included."""
    if cu_seqlens is not None:
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        dq = []
        for b in range(q.shape[0]):
            s, e = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
            grads = _backward_reference(grad_out[b:b + 1], q[b:b + 1], k[s:e].transpose(0, 1)[None],
                                        v[s:e].transpose(0, 1)[None], None, None, None, None, scale)
            dq.append(grads[0])
            dk[s:e], dv[s:e] = grads[1][0].transpose(0, 1), grads[2][0].transpose(0, 1)
        return torch.cat(dq, 0), dk, dv
    probs = _reference_probs(q, k, key_mask, scale)  # [B, H, Q, N]
    dv = torch.matmul(probs.transpose(-1, -2), grad_out)  # [B, H, N, D]
    dp = torch.matmul(grad_out, v.transpose(-1, -2))  # [B, H, Q, N]
    ds = probs * (dp - (probs * dp).sum(-1, keepdim=True)) * scale
    return torch.matmul(ds, k), torch.matmul(ds.transpose(-1, -2), q), dv


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, head, token) strides of a key-like tensor: padded [B, H, N, D] or packed [T, H, D] (batch 0)."""
    return (0, t.stride(1), t.stride(0)) if varlen else (t.stride(0), t.stride(1), t.stride(2))


def _native_args(q, k, v, key_mask, cu_seqlens, max_seqlen):
    """Sizes and the mask/offset pointers shared by the C++ and CUDA entries."""
    varlen = cu_seqlens is not None
    B, H, Q, D = q.shape
    N = max_seqlen if varlen else k.shape[2]
    mask = key_mask.to(torch.uint8).contiguous() if key_mask is not None else None
    cu = cu_seqlens.to(torch.int32).contiguous() if varlen else None
    ptrs = (mask.data_ptr() if mask is not None else 0, cu.data_ptr() if cu is not None else 0)
    return (B, H, Q, N, D), ptrs, (mask, cu), varlen


def _native_forward(module: str, q, k, v, key_mask, cu_seqlens, max_seqlen, scale):
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    sizes, (mask_ptr, cu_ptr), keep_alive, varlen = _native_args(q, k, v, key_mask, cu_seqlens, max_seqlen)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [B, H, Q, D]
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)  # [B, H, Q] fp32
    args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), mask_ptr, cu_ptr, out.data_ptr(), lse.data_ptr(), *sizes,
            float(scale), int(varlen), *q.stride()[:3], *_strides(k, varlen), *_strides(v, varlen),
            _backend.dtype_code(q))
    if module == "cpp":
        _backend.load_module("cpp").qformer_cross_attention_forward_cpu(*args)
    else:
        _backend.load_module("cuda").qformer_cross_attention_forward_cuda(*args, _backend.cuda_stream(q.device))
    return out, lse


def _native_backward(module: str, grad_out, q, k, v, lse, key_mask, cu_seqlens, max_seqlen, scale):
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    grad_out = grad_out.contiguous()
    sizes, (mask_ptr, cu_ptr), keep_alive, varlen = _native_args(q, k, v, key_mask, cu_seqlens, max_seqlen)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # [B, H, Q, D]
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)  # [B, H, N, D] or [T, H, D]
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), mask_ptr, cu_ptr, lse.contiguous().data_ptr(),
            grad_out.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), *sizes, float(scale), int(varlen),
            *q.stride()[:3], *_strides(k, varlen), *_strides(v, varlen), *_strides(dk, varlen),
            _backend.dtype_code(q))
    if module == "cpp":
        _backend.load_module("cpp").qformer_cross_attention_backward_cpu(*args)
    else:
        _backend.load_module("cuda").qformer_cross_attention_backward_cuda(*args, _backend.cuda_stream(q.device))
    return dq, dk, dv


def _forward_triton(q, k, v, key_mask, cu_seqlens, max_seqlen, scale):
    from molm_fast.kernels.qformer_cross_attention import qformer_cross_attention_forward_triton

    return qformer_cross_attention_forward_triton(q, k, v, key_mask, cu_seqlens, max_seqlen, scale)


def _backward_triton(grad_out, q, k, v, lse, key_mask, cu_seqlens, max_seqlen, scale):
    from molm_fast.kernels.qformer_cross_attention import qformer_cross_attention_backward_triton

    return qformer_cross_attention_backward_triton(grad_out, q, k, v, lse, key_mask, cu_seqlens, max_seqlen, scale)


_FORWARD = {"reference": _forward_reference, "triton": _forward_triton,
            "cpp": lambda *a: _native_forward("cpp", *a), "cuda": lambda *a: _native_forward("cuda", *a)}
_BACKWARD = {"reference": _backward_reference, "triton": _backward_triton,
             "cpp": lambda *a: _native_backward("cpp", *a), "cuda": lambda *a: _native_backward("cuda", *a)}
_backend.register(OP, _FORWARD)


# ---- torch.library registration --------------------------------------------------------------------------
@torch.library.custom_op("molm_fast::qformer_cross_attention", mutates_args=())
def _qformer_cross_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                                cu_seqlens: torch.Tensor | None, max_seqlen: int,
                                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if q.numel() == 0 or k.numel() == 0:  # no molecules, no queries or no keys at all: out 0, lse -inf
        return q.new_zeros(q.shape), q.new_full(q.shape[:3], float("-inf"), dtype=torch.float32)
    return _FORWARD[_backend.pick(OP, q.device)](q, k, v, key_mask, cu_seqlens, max_seqlen, scale)


@_qformer_cross_attention_op.register_fake
def _(q, k, v, key_mask, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("molm_fast::qformer_cross_attention_backward", mutates_args=())
def _qformer_cross_attention_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                         lse: torch.Tensor, key_mask: torch.Tensor | None,
                                         cu_seqlens: torch.Tensor | None, max_seqlen: int,
                                         scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q.numel() == 0 or k.numel() == 0:
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    dq, dk, dv = _BACKWARD[_backend.pick(OP, q.device)](grad_out, q, k, v, lse, key_mask, cu_seqlens,
                                                         max_seqlen, scale)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_qformer_cross_attention_backward_op.register_fake
def _(grad_out, q, k, v, lse, key_mask, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_mask, cu_seqlens, max_seqlen, scale = inputs
    ctx.save_for_backward(q, k, v, output[1], key_mask, cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, lse, key_mask, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _qformer_cross_attention_backward_op(grad_out, q, k, v, lse, key_mask, cu_seqlens,
                                                      ctx.max_seqlen, ctx.scale)
    return dq, dk, dv, None, None, None, None


_qformer_cross_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public functions --------------------------------------------------------------------------------------
def qformer_key_mask(padding_mask: torch.Tensor | None, *, corrected: bool = False) -> torch.Tensor | None:
    """The cross-attention ``key_mask`` (True = attend) from Uni-Mol's ``padding_mask`` [B, N] (True = PAD).

    Upstream (default, spec §1.3): 3D-MoLM passes the pad mask unchanged as the attend mask, so queries read
    ONLY pad positions (regime a); a molecule without pads in a padded batch attends to nothing and gets the
    uniform average (regime b); ``padding_mask=None`` (no pads anywhere) means attend to everything (regime c).
    ``corrected=True`` attends to the real tokens ([CLS], atoms, [SEP]).
    """
    if padding_mask is None or not corrected and not bool(padding_mask.any()):
        return None
    return ~padding_mask if corrected else padding_mask.bool()


def qformer_cross_kv(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, num_layers: int,
                     num_heads: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K and V of every cross-attention layer from one GEMM over the encoder states (performance.md §3).

    hidden [B, N, C] (padded) or [T, C] (packed); weight [L * 2 * H * D, C] = the layers' key and value weights
    concatenated as (layer 0 key, layer 0 value, layer 1 key, ...), e.g. ``torch.cat`` of the nn.Linear weights;
    bias [L * 2 * H * D] or None. Returns L pairs (k, v), views without copies: [B, H, N, D] or [T, H, D].
    """
    if weight.dim() != 2 or weight.shape[0] % (2 * num_layers * num_heads) != 0:
        raise ValueError(f"qformer_cross_kv: weight must be [L * 2 * H * D, C] with L * 2 * H = "
                         f"{2 * num_layers * num_heads}, got {list(weight.shape)}")
    if hidden.dim() not in (2, 3) or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"qformer_cross_kv: hidden must be [B, N, {weight.shape[1]}] or [T, {weight.shape[1]}], "
                         f"got {list(hidden.shape)}")
    D = weight.shape[0] // (2 * num_layers * num_heads)
    kv = F.linear(hidden, weight, bias)  # [..., L * 2 * H * D]
    kv = kv.view(*hidden.shape[:-1], num_layers, 2, num_heads, D)  # [B, N, L, 2, H, D] or [T, L, 2, H, D]
    if hidden.dim() == 3:
        return [(kv[:, :, i, 0].transpose(1, 2), kv[:, :, i, 1].transpose(1, 2)) for i in range(num_layers)]
    return [(kv[:, i, 0], kv[:, i, 1]) for i in range(num_layers)]


def qformer_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_mask: torch.Tensor | None = None,
                            cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                            scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Q-Former cross-attention of each molecule's queries to that molecule's keys (spec §1.3).

    Args:
        q: [B, H, Q, D] float32/bfloat16/float16 (float64 on the CPU backends), any strides.
        k, v: padded [B, H, N, D] or, with ``cu_seqlens``, packed [T, H, D]; q's dtype.
        key_mask: padded only, [B, N] bool, True = attend (use ``qformer_key_mask`` to build it with the
            upstream-inverted or the corrected semantics). A molecule with no True key gets the uniform average
            over its N keys, as upstream's ``+finfo.min`` mask gives. None = attend to every key.
        cu_seqlens: [B + 1] int32 offsets of each molecule's keys in the packed k/v (T = cu_seqlens[-1]).
        max_seqlen: the largest cu_seqlens[b + 1] - cu_seqlens[b] (computed when None).
        scale: score scale, default D ** -0.5.
        dropout_p: attention dropout on the probabilities (training); > 0 runs the reference math.
    Returns:
        [B, H, Q, D] in q's dtype; a molecule with no keys at all gets zeros.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise TypeError(f"{OP}: {name} must be a floating tensor, got {t.dtype}")
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{OP}: {name} must match q's dtype and device ({q.dtype}, {q.device}), "
                            f"got ({t.dtype}, {t.device})")
    if q.dim() != 4:
        raise ValueError(f"{OP}: q must be [B, H, Q, D], got {list(q.shape)}")
    B, H, Q, D = q.shape
    if cu_seqlens is None:
        if list(k.shape[:2]) != [B, H] or k.dim() != 4 or k.shape[3] != D or k.shape != v.shape:
            raise ValueError(f"{OP}: k and v must be [B, H, N, D] = [{B}, {H}, N, {D}], got {list(k.shape)} and "
                             f"{list(v.shape)}")
        if key_mask is not None:
            if key_mask.dtype != torch.bool:
                raise TypeError(f"{OP}: key_mask must be bool (True = attend), got {key_mask.dtype}")
            if list(key_mask.shape) != [B, k.shape[2]]:
                raise ValueError(f"{OP}: key_mask must be [B, N] = [{B}, {k.shape[2]}], got {list(key_mask.shape)}")
        max_seqlen = k.shape[2]
    else:
        if key_mask is not None:
            raise ValueError(f"{OP}: key_mask is for padded keys; packed keys (cu_seqlens) attend to every key")
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.shape != (B + 1,):
            raise ValueError(f"{OP}: cu_seqlens must be int32 [B + 1] = [{B + 1}], got {cu_seqlens.dtype} "
                             f"{list(cu_seqlens.shape)}")
        if k.dim() != 3 or list(k.shape[1:]) != [H, D] or k.shape != v.shape:
            raise ValueError(f"{OP}: packed k and v must be [T, H, D] = [T, {H}, {D}], got {list(k.shape)} and "
                             f"{list(v.shape)}")
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).cpu()
        if B and (int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != k.shape[0] or bool((lengths < 0).any())):
            raise ValueError(f"{OP}: cu_seqlens must rise from 0 to T = {k.shape[0]}, got {cu_seqlens.tolist()}")
        if max_seqlen is None:
            max_seqlen = int(lengths.max()) if B else 0
    scale = D ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"{OP}: scale must be finite, got {scale}")
    if dropout_p > 0:
        return qformer_cross_attention_reference(q, k, v, key_mask=key_mask, cu_seqlens=cu_seqlens, scale=scale,
                                                 dropout_p=dropout_p)
    return torch.ops.molm_fast.qformer_cross_attention(q, k, v, key_mask, cu_seqlens, int(max_seqlen), scale)[0]
