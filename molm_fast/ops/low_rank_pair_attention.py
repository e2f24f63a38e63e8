"""low_rank_pair_attention: Uni-Mol's attention at inference from the exact low-rank logit chain (performance.md §2.9).

    logits_l = bias_0 + sum_{j <= l} (q_j * scale) k_j^T = bias_0 + Q_l K_l^T,    out_l = softmax(logits_l) v_l

where Q_l = [q_0 * scale, ..., q_l * scale] and K_l = [k_0, ..., k_l] are the scaled queries and the keys of layers
0..l concatenated along the head dim (8 (l + 1) wide) and bias_0 is the layer-0 (Gaussian) bias. The per-layer pair
tensors (the logits chain) are never written: each layer reads bias_0 once and recomputes the rank-8(l+1) product,
accumulated in fp32 (the reference rounds the chain to its dtype at every layer, so bf16 results differ within the
bf16 tolerance; fp32 agrees to rounding). -inf in bias_0 (pad keys) carries to every layer, as in the chain.

Shapes: padded q_cat, k_cat [B, H, N, Dk] (any strides with a contiguous last dim, e.g. slices of a preallocated
[B, N, H, 120] buffer), v [B, H, N, D], bias_0 [B, H, N, N] -> out [B, H, N, D] stored [B, N, H, D]; packed:
q_cat, k_cat [T, H, Dk], v [T, H, D], bias_0 the 1-D packed pair tensor, cu_seqlens [B + 1] int32 -> out [T, H, D].
Inference only: no autograd (use pair_bias_attention to train).
"""

from __future__ import annotations

import torch

from molm_fast.ops import _backend
from molm_fast.ops.pair_bias_attention import (
    DTYPES,
    _check,
    _last_dim_contiguous,
    _native_sizes,
    _new_lse,
    _new_out,
    _strides,
    pair_bias_attention_reference,
)

OP = "low_rank_pair_attention"


def low_rank_pair_attention_reference(q_cat: torch.Tensor, k_cat: torch.Tensor, v: torch.Tensor,
                                      bias0: torch.Tensor, *, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch: softmax(q_cat @ k_cat^T + bias0) @ v (rows with no key give 0)."""
    return pair_bias_attention_reference(q_cat, k_cat, v, bias0, scale=1.0, cu_seqlens=cu_seqlens)[0]


# ---- glue per backend ------------------------------------------------------------------------------------
def _forward_reference(q_cat, k_cat, v, bias0, cu_seqlens, max_seqlen):
    out = low_rank_pair_attention_reference(q_cat, k_cat, v, bias0, cu_seqlens=cu_seqlens)
    return _new_out(v, cu_seqlens is not None).copy_(out)


def _forward_cpp(q_cat, k_cat, v, bias0, cu_seqlens, max_seqlen):
    q_cat, k_cat, v = (_last_dim_contiguous(t) for t in (q_cat, k_cat, v))
    packed = cu_seqlens is not None
    bias0 = bias0.contiguous() if packed else bias0
    out, lse = _new_out(v, packed), _new_lse(q_cat, packed)
    strides = sum((_strides(t, packed) for t in (q_cat, k_cat, v, out, bias0)), [])
    _backend.load_module("cpp").pair_bias_attention_forward_cpu(
        q_cat.data_ptr(), k_cat.data_ptr(), v.data_ptr(), bias0.data_ptr(), out.data_ptr(), 0, lse.data_ptr(),
        cu_seqlens.data_ptr() if packed else 0, *_native_sizes(q_cat, cu_seqlens, max_seqlen), v.shape[-1],
        strides, 1.0, 0.0, 0, _backend.dtype_code(q_cat))
    return out


def _forward_triton(q_cat, k_cat, v, bias0, cu_seqlens, max_seqlen):
    from molm_fast.kernels.pair_bias_attention import pair_bias_attention_forward_triton

    q_cat, k_cat, v = (_last_dim_contiguous(t) for t in (q_cat, k_cat, v))
    packed = cu_seqlens is not None
    out, lse = _new_out(v, packed), _new_lse(q_cat, packed)
    pair_bias_attention_forward_triton(q_cat, k_cat, v, bias0.contiguous() if packed else bias0, out, None, lse, 1.0,
                                       0.0, 0, cu_seqlens, max_seqlen)
    return out


_FORWARD = {"reference": _forward_reference, "cpp": _forward_cpp, "triton": _forward_triton}
_backend.register(OP, _FORWARD)


# ---- torch.library registration --------------------------------------------------------------------------
@torch.library.custom_op("molm_fast::low_rank_pair_attention", mutates_args=())
def _low_rank_pair_attention_op(q_cat: torch.Tensor, k_cat: torch.Tensor, v: torch.Tensor, bias0: torch.Tensor,
                                cu_seqlens: torch.Tensor | None, max_seqlen: int) -> torch.Tensor:
    return _FORWARD[_backend.pick(OP, q_cat.device)](q_cat, k_cat, v, bias0, cu_seqlens, max_seqlen)


@_low_rank_pair_attention_op.register_fake
def _(q_cat, k_cat, v, bias0, cu_seqlens, max_seqlen):
    return _new_out(v, cu_seqlens is not None)


# ---- public function ---------------------------------------------------------------------------------------
def low_rank_pair_attention(q_cat: torch.Tensor, k_cat: torch.Tensor, v: torch.Tensor, bias0: torch.Tensor, *,
                            cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    """softmax(q_cat @ k_cat^T + bias0) @ v without writing the logits (Uni-Mol inference, see the module doc).

    Args:
        q_cat, k_cat: [B, H, N, Dk] (or packed [T, H, Dk]): the scaled queries and the keys of every layer so far,
            concatenated along the head dim; float32, float64 or bfloat16.
        v: [B, H, N, D] (or [T, H, D]) of this layer; bias0: the layer-0 bias [B, H, N, N] (or packed 1-D).
        cu_seqlens, max_seqlen: as ``pair_bias_attention``.
    Returns:
        out like v ([B, H, N, D] stored [B, N, H, D], or [T, H, D]).
    """
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                       for t in (q_cat, k_cat, v, bias0)):
        raise ValueError(f"{OP}: inference only (inputs require grad); train with pair_bias_attention")
    _check(q_cat, q_cat, q_cat, bias0, 0.0, cu_seqlens, max_seqlen)  # q_cat vs bias0: dtype, device, layout
    for name, t in (("k_cat", k_cat), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dtype != q_cat.dtype or t.dtype not in DTYPES:
            raise TypeError(f"{OP}: {name} must be a tensor of q_cat's dtype {q_cat.dtype}, got {t!r:.60}")
    if k_cat.shape != q_cat.shape:
        raise ValueError(f"{OP}: k_cat must match q_cat {list(q_cat.shape)}, got {list(k_cat.shape)}")
    if v.shape[:-1] != q_cat.shape[:-1]:
        raise ValueError(f"{OP}: v must be [..., D] with q_cat's leading dims {list(q_cat.shape[:-1])}, "
                         f"got {list(v.shape)}")
    packed = cu_seqlens is not None
    if (q_cat.shape[0] if packed else q_cat.shape[0] * q_cat.shape[2]) == 0 or q_cat.shape[1] == 0:
        return _new_out(v, packed).zero_()
    max_seqlen = q_cat.shape[2] if not packed else max_seqlen
    return torch.ops.molm_fast.low_rank_pair_attention(q_cat, k_cat, v, bias0, cu_seqlens, max_seqlen)
