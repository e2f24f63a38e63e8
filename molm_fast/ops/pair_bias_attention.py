"""pair_bias_attention: Uni-Mol's attention with a dense pair bias that also returns the pre-softmax logits.

    logits = (q * scale) @ k^T + bias          (the next layer's bias; q scaled first, exactly as Uni-Mol)
    out    = dropout(softmax(logits)) @ v      (rows whose keys are all -inf give out = 0, never NaN)

Padded: q, k, v logical [B, H, N, D] (any strides), bias [B, H, N, N] -> out [B, H, N, D] (stored as [B, N, H, D],
so out.transpose(1, 2).reshape(B, N, H * D) is free), logits [B, H, N, N] contiguous. Packed (cu_seqlens [B+1]
int32): q, k, v [T, H, D], bias/logits 1-D packed pair tensors (molecule b's [H, n_b, n_b] block at H*cu_pairs[b]),
out [T, H, D]. Saved for backward: q, k, v, bias (the previous layer's logits, kept anyway), out and the row
log-sum-exp ([B, H, N] or [T, H]; fp32, fp64 for fp64 inputs); the softmax is recomputed in fp32 from q k^T + bias and
the LSE (exactly the forward's, also for bf16), never stored, and the dropout mask regenerated from its Philox seed
(molm_fast/ops/_random.py). The gradient reaching the returned logits is added to dbias. Spec: 3d-molm.md §1.2
(encoder forward), performance.md §2.9.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.weak import WeakIdKeyDictionary

from molm_fast.ops import _backend
from molm_fast.ops._random import dropout_keep

OP = "pair_bias_attention"
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def pair_bias_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, *,
                                  scale: float = 1.0, dropout_p: float = 0.0, keep: torch.Tensor | None = None,
                                  cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch, as Uni-Mol's SelfMultiheadAttention + softmax_dropout. Returns (out, logits).

    ``keep`` (bool, logits' shape) replaces torch's own dropout draw, so a test can feed the Philox mask.
    """
    if cu_seqlens is not None:
        return _packed_reference(q, k, v, bias, scale=scale, dropout_p=dropout_p, keep=keep, cu_seqlens=cu_seqlens)
    q = q * scale
    logits = q @ k.transpose(-1, -2)  # [B, H, N, N]
    logits = logits + bias
    masked = torch.isneginf(logits).all(-1, keepdim=True)  # [B, H, N, 1] rows with no key at all
    p = torch.softmax(logits.masked_fill(masked, 0.0), dim=-1).masked_fill(masked, 0.0)
    if dropout_p > 0:
        p = torch.nn.functional.dropout(p, dropout_p) if keep is None else p * keep / (1.0 - dropout_p)
    return p @ v, logits  # [B, H, N, D], [B, H, N, N]


def packed_blocks(cu_seqlens: torch.Tensor, H: int) -> Iterator[tuple[int, int, int]]:
    """(first token, n_b, first pair element) of each molecule of a packed batch."""
    bounds = cu_seqlens.tolist()
    pair = 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        yield start, end - start, H * pair
        pair += (end - start) ** 2


def _packed_reference(q, k, v, bias, *, scale, dropout_p, keep, cu_seqlens):
    H = q.shape[1]
    outs, logits = [], []
    for start, n, pair in packed_blocks(cu_seqlens, H):
        tok, blk = slice(start, start + n), slice(pair, pair + H * n * n)
        o, lg = pair_bias_attention_reference(
            q[tok].transpose(0, 1)[None], k[tok].transpose(0, 1)[None], v[tok].transpose(0, 1)[None],
            bias[blk].view(1, H, n, n), scale=scale, dropout_p=dropout_p,
            keep=None if keep is None else keep[blk].view(1, H, n, n))
        outs.append(o[0].transpose(0, 1))  # [n, H, D]
        logits.append(lg.reshape(-1))
    return torch.cat(outs), torch.cat(logits)  # [T, H, D], [H * sum n^2]


# ---- glue per backend ------------------------------------------------------------------------------------
def _new_out(q: torch.Tensor, packed: bool) -> torch.Tensor:
    if packed:
        return q.new_empty(q.shape)  # [T, H, D]
    B, H, N, D = q.shape
    return q.new_empty(B, N, H, D).transpose(1, 2)  # [B, H, N, D] stored as [B, N, H, D]


def _new_lse(q: torch.Tensor, packed: bool) -> torch.Tensor:
    shape = (q.shape[0], q.shape[1]) if packed else q.shape[:3]  # [T, H] or [B, H, N]
    return q.new_empty(shape, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)


def _forward_reference(q, k, v, bias, scale, dropout_p, seed, cu_seqlens, max_seqlen):
    keep = dropout_keep(seed, bias.numel(), dropout_p, q.device).view(bias.shape) if dropout_p > 0 else None
    out, logits = pair_bias_attention_reference(q, k, v, bias, scale=scale, dropout_p=dropout_p, keep=keep,
                                                cu_seqlens=cu_seqlens)
    if cu_seqlens is None:
        lse = _lse(q, k, bias, scale, logits)  # [B, H, N]
    else:
        H = q.shape[1]
        lse = torch.cat([_lse(q[t:t + n].transpose(0, 1), k[t:t + n].transpose(0, 1),
                              bias[pair:pair + H * n * n].view(H, n, n), scale,
                              logits[pair:pair + H * n * n].view(H, n, n)).t()
                         for t, n, pair in packed_blocks(cu_seqlens, H)])  # [T, H]
    packed = cu_seqlens is not None
    return _new_out(q, packed).copy_(out), logits.contiguous(), _new_lse(q, packed).copy_(lse)


def _lse(q, k, bias, scale, logits):
    """Row log-sum-exp of the unrounded logits, which the kernels save (-inf on rows with no key). The reference's
    own logits are unrounded in fp32/fp64; for bf16 they are recomputed in fp32 so the backward's p matches."""
    if q.dtype in (torch.float32, torch.float64):
        return torch.logsumexp(logits, dim=-1)
    return torch.logsumexp((q.float() * scale) @ k.float().transpose(-1, -2) + bias.float(), dim=-1)


def _backward_reference(grad_out, grad_logits, q, k, v, bias, out, lse, scale, dropout_p, seed, cu_seqlens,
                        max_seqlen):
    """The backward written out (it is what the kernels compute): p is recomputed from q, k, bias and the LSE."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    keep = dropout_keep(seed, bias.numel(), dropout_p, q.device) if dropout_p > 0 else None
    if cu_seqlens is None:
        grads = _backward_reference_padded(grad_out, grad_logits, q, k, v, bias, out, lse, scale, dropout_p,
                                           None if keep is None else keep.view(bias.shape), compute)
        return _as_grads(q, k, v, grads, packed=False)
    H = q.shape[1]
    dq, dk, dv, dbias = [], [], [], []
    for start, n, pair in packed_blocks(cu_seqlens, H):
        tok, blk = slice(start, start + n), slice(pair, pair + H * n * n)
        tokens = [t[tok].transpose(0, 1)[None] for t in (grad_out, q, k, v, out)]  # [1, H, n, D] each
        pairs = [None if t is None else t[blk].view(1, H, n, n) for t in (grad_logits, bias, keep)]
        g = _backward_reference_padded(tokens[0], pairs[0], *tokens[1:4], pairs[1], tokens[4], lse[tok].t()[None],
                                       scale, dropout_p, pairs[2], compute)
        for acc, t in zip((dq, dk, dv), g[:3]):
            acc.append(t[0].transpose(0, 1))
        dbias.append(g[3].reshape(-1))
    return _as_grads(q, k, v, [torch.cat(g) for g in (dq, dk, dv, dbias)], packed=True)


def _as_grads(q, k, v, grads, packed):
    """dq, dk, dv in the kernels' layout (_new_out), dbias contiguous, all in q's dtype."""
    dq, dk, dv, dbias = grads
    return (_new_out(q, packed).copy_(dq), _new_out(k, packed).copy_(dk), _new_out(v, packed).copy_(dv),
            dbias.to(q.dtype).contiguous())


def _backward_reference_padded(grad_out, grad_logits, q, k, v, bias, out, lse, scale, dropout_p, keep, compute):
    go, q, k, v = (t.to(compute) for t in (grad_out, q, k, v))
    lse = lse.to(compute)[..., None]  # [B, H, N, 1]
    logits = (q * scale) @ k.transpose(-1, -2) + bias.to(compute)  # [B, H, N, N], the forward's, unrounded
    p = torch.where(torch.isneginf(lse), 0.0, torch.exp(logits - lse))  # [B, H, N, N]
    drop = 1.0 if keep is None else keep / (1.0 - dropout_p)
    dp = (go @ v.transpose(-1, -2)) * drop  # [B, H, N, N]
    delta = (go * out.to(compute)).sum(-1, keepdim=True)  # [B, H, N, 1] = rowsum(p * dp)
    dlogits = p * (dp - delta)
    if grad_logits is not None:
        dlogits = dlogits + grad_logits.to(compute)
    dq = (dlogits @ k) * scale
    dk = dlogits.transpose(-1, -2) @ (q * scale)
    dv = (p * drop).transpose(-1, -2) @ go
    return dq, dk, dv, dlogits


def _strides(t: torch.Tensor | None, packed: bool) -> list[int]:
    """4 strides per token tensor as the native entries take them: (b, h, token, d); b-stride 0 when packed."""
    if t is None:
        return [0, 0, 0, 0]
    if t.dim() == 1:  # a packed pair tensor: the entries compute its layout
        return [0, 0, 0, 1]
    if packed:
        return [0, t.stride(1), t.stride(0), t.stride(2)]
    return list(t.stride())


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _native_sizes(q: torch.Tensor, cu_seqlens, max_seqlen: int) -> tuple[int, int, int, int]:
    if cu_seqlens is None:
        B, H, N, D = q.shape
        return B, H, N, D
    return cu_seqlens.numel() - 1, q.shape[1], max_seqlen, q.shape[2]


def _forward_native(q, k, v, bias, packed):
    """What the native forward entries take: (q, k, v, bias) with a contiguous last dim (a packed bias contiguous),
    the new (out, logits, lse), and the strides of q, k, v, out, bias."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    bias = bias.contiguous() if packed else bias
    outputs = _new_out(q, packed), bias.new_empty(bias.shape), _new_lse(q, packed)
    strides = sum((_strides(t, packed) for t in (q, k, v, outputs[0], bias)), [])
    return (q, k, v, bias), outputs, strides


def _forward_cpp(q, k, v, bias, scale, dropout_p, seed, cu_seqlens, max_seqlen):
    inputs, outputs, strides = _forward_native(q, k, v, bias, cu_seqlens is not None)
    _backend.load_module("cpp").pair_bias_attention_forward_cpu(
        *_ptrs(*inputs, *outputs, cu_seqlens), *_native_sizes(q, cu_seqlens, max_seqlen), v.shape[-1], strides,
        scale, dropout_p, seed, _backend.dtype_code(q))
    return outputs


def _backward_native(grad_out, grad_logits, q, k, v, bias, out, packed):
    """What the native backward entries take: (grad_out, grad_logits, q, k, v, bias, out) with a contiguous last dim
    (grad_logits, and a packed bias, contiguous), the new (dq, dk, dv, dbias), and the strides of q, k, v, out, bias,
    grad_out, dq, dk, dv."""
    grad_out, q, k, v, out = (_last_dim_contiguous(t) for t in (grad_out, q, k, v, out))
    grad_logits = None if grad_logits is None else grad_logits.contiguous()
    bias = bias.contiguous() if packed else bias
    grads = _new_out(q, packed), _new_out(k, packed), _new_out(v, packed), bias.new_empty(bias.shape)
    strides = sum((_strides(t, packed) for t in (q, k, v, out, bias, grad_out, *grads[:3])), [])
    return (grad_out, grad_logits, q, k, v, bias, out), grads, strides


def _ptrs(*tensors) -> list[int]:
    return [0 if t is None else t.data_ptr() for t in tensors]


def _backward_cpp(grad_out, grad_logits, q, k, v, bias, out, lse, scale, dropout_p, seed, cu_seqlens,
                  max_seqlen):
    inputs, grads, strides = _backward_native(grad_out, grad_logits, q, k, v, bias, out, cu_seqlens is not None)
    _backend.load_module("cpp").pair_bias_attention_backward_cpu(
        *_ptrs(*inputs, lse, *grads, cu_seqlens), *_native_sizes(q, cu_seqlens, max_seqlen), strides, scale,
        dropout_p, seed, _backend.dtype_code(q))
    return grads


def _forward_triton(q, k, v, bias, scale, dropout_p, seed, cu_seqlens, max_seqlen):
    from molm_fast.kernels.pair_bias_attention import pair_bias_attention_forward_triton

    inputs, outputs, _ = _forward_native(q, k, v, bias, cu_seqlens is not None)
    pair_bias_attention_forward_triton(*inputs, *outputs, scale, dropout_p, seed, cu_seqlens, max_seqlen)
    return outputs


def _backward_triton(grad_out, grad_logits, q, k, v, bias, out, lse, scale, dropout_p, seed, cu_seqlens,
                     max_seqlen):
    from molm_fast.kernels.pair_bias_attention import pair_bias_attention_backward_triton

    inputs, grads, _ = _backward_native(grad_out, grad_logits, q, k, v, bias, out, cu_seqlens is not None)
    pair_bias_attention_backward_triton(*inputs, lse, *grads, scale, dropout_p, seed, cu_seqlens, max_seqlen)
    return grads


def _forward_cuda(q, k, v, bias, scale, dropout_p, seed, cu_seqlens, max_seqlen):
    inputs, outputs, strides = _forward_native(q, k, v, bias, cu_seqlens is not None)
    cu_pairs = None if cu_seqlens is None else _backend.pair_offsets(cu_seqlens)  # held until the launch is queued
    _backend.load_module("cuda").pair_bias_attention_forward_cuda(
        *_ptrs(*inputs, *outputs, cu_seqlens, cu_pairs), *_native_sizes(q, cu_seqlens, max_seqlen), strides, scale,
        dropout_p, seed, _backend.dtype_code(q), _backend.cuda_stream(q.device))
    return outputs


def _backward_cuda(grad_out, grad_logits, q, k, v, bias, out, lse, scale, dropout_p, seed, cu_seqlens,
                   max_seqlen):
    """Two deterministic kernels (csrc/pair_bias_attention.cu): one over query rows (dbias, dq), one over keys
    (dk, dv, summed over rows in a fixed order); both recompute p from q, k, bias and the LSE and regenerate the
    Philox mask, as the C++ and Triton backwards do."""
    inputs, grads, strides = _backward_native(grad_out, grad_logits, q, k, v, bias, out, cu_seqlens is not None)
    cu_pairs = None if cu_seqlens is None else _backend.pair_offsets(cu_seqlens)  # held until the launches are queued
    _backend.load_module("cuda").pair_bias_attention_backward_cuda(
        *_ptrs(*inputs, lse, *grads, cu_seqlens, cu_pairs), *_native_sizes(q, cu_seqlens, max_seqlen), strides,
        scale, dropout_p, seed, _backend.dtype_code(q), _backend.cuda_stream(q.device))
    return grads


_FORWARD = {"reference": _forward_reference, "cpp": _forward_cpp, "triton": _forward_triton, "cuda": _forward_cuda}
_BACKWARD = {"reference": _backward_reference, "cpp": _backward_cpp, "triton": _backward_triton,
             "cuda": _backward_cuda}
_backend.register(OP, _FORWARD)


# ---- torch.library registration --------------------------------------------------------------------------
@torch.library.custom_op("molm_fast::pair_bias_attention", mutates_args=())
def _pair_bias_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
                            dropout_p: float, seed: int, cu_seqlens: torch.Tensor | None,
                            max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _FORWARD[_backend.pick(OP, q.device)](q, k, v, bias, scale, dropout_p, seed, cu_seqlens, max_seqlen)


@_pair_bias_attention_op.register_fake
def _(q, k, v, bias, scale, dropout_p, seed, cu_seqlens, max_seqlen):
    packed = cu_seqlens is not None
    return _new_out(q, packed), bias.new_empty(bias.shape), _new_lse(q, packed)


@torch.library.custom_op("molm_fast::pair_bias_attention_backward", mutates_args=())
def _pair_bias_attention_backward_op(
        grad_out: torch.Tensor, grad_logits: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
        bias: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, scale: float, dropout_p: float, seed: int,
        cu_seqlens: torch.Tensor | None, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    return _BACKWARD[_backend.pick(OP, q.device)](grad_out, grad_logits, q, k, v, bias, out, lse, scale,
                                                   dropout_p, seed, cu_seqlens, max_seqlen)


@_pair_bias_attention_backward_op.register_fake
def _(grad_out, grad_logits, q, k, v, bias, out, lse, scale, dropout_p, seed, cu_seqlens, max_seqlen):
    packed = cu_seqlens is not None
    return _new_out(q, packed), _new_out(k, packed), _new_out(v, packed), bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, scale, dropout_p, seed, cu_seqlens, max_seqlen = inputs
    out, _, lse = output
    ctx.save_for_backward(q, k, v, bias, out, lse, cu_seqlens)
    ctx.args = (scale, dropout_p, seed, max_seqlen)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_logits, grad_lse):
    q, k, v, bias, out, lse, cu_seqlens = ctx.saved_tensors
    scale, dropout_p, seed, max_seqlen = ctx.args
    if grad_out is None and grad_logits is None:
        return (None,) * 9
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, dbias = torch.ops.molm_fast.pair_bias_attention_backward(
        grad_out, grad_logits, q, k, v, bias, out, lse, scale, dropout_p, seed, cu_seqlens, max_seqlen)
    return dq, dk, dv, dbias, None, None, None, None, None


_pair_bias_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public function ---------------------------------------------------------------------------------------
def _check(q, k, v, bias, dropout_p, cu_seqlens, max_seqlen) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != q.dtype or t.dtype not in DTYPES:
            raise TypeError(f"{OP}: {name} must be float32, float64 or bfloat16 like q, got {t.dtype} (q {q.dtype})")
        if t.device != q.device:
            raise ValueError(f"{OP}: {name} must be on q's device {q.device}, got {t.device}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{OP}: dropout_p must be in [0, 1), got {dropout_p}")
    if cu_seqlens is None:
        if q.dim() != 4:
            raise ValueError(f"{OP}: q must be [B, H, N, D] (or [T, H, D] with cu_seqlens), got {list(q.shape)}")
        for name, t in (("k", k), ("v", v)):
            if t.shape != q.shape:
                raise ValueError(f"{OP}: {name} must be [B, H, N, D] = {list(q.shape)}, got {list(t.shape)}")
        expected = [*q.shape[:3], q.shape[2]]
        if list(bias.shape) != expected:
            raise ValueError(f"{OP}: bias must be [B, H, N, N] = {expected}, got {list(bias.shape)}")
        return
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1:
        raise TypeError(f"{OP}: cu_seqlens must be a 1-D int32 tensor [B + 1], got {cu_seqlens!r:.80}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"{OP}: cu_seqlens must be on q's device {q.device}, got {cu_seqlens.device}")
    if q.dim() != 3:
        raise ValueError(f"{OP}: q must be [T, H, D] with cu_seqlens, got {list(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{OP}: {name} must be [T, H, D] = {list(q.shape)}, got {list(t.shape)}")
    if bias.dim() != 1:
        raise ValueError(f"{OP}: bias must be a 1-D packed pair tensor with cu_seqlens, got {list(bias.shape)}")
    if not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"{OP}: max_seqlen must be an int >= the longest molecule, got {max_seqlen!r}")
    if cu_seqlens.device.type == "cpu":  # on CUDA this would cost a sync per call; the collate guarantees it
        _check_cu_seqlens(q, bias, cu_seqlens, max_seqlen)


# cu_seqlens already checked against (T, H, max_seqlen, bias numel), with its version then: the 15 layers of one
# packed batch share one cu_seqlens, so its ~10 small tensor ops (~0.1 ms) run once per batch, not per layer.
_CHECKED_CU: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _check_cu_seqlens(q, bias, cu_seqlens, max_seqlen) -> None:
    key = None if cu_seqlens.is_inference() else (cu_seqlens._version, q.shape[0], q.shape[1], max_seqlen,
                                                  bias.numel())  # inference tensors keep no version: always check
    if key is not None and _CHECKED_CU.get(cu_seqlens) == key:
        return
    lens = cu_seqlens.diff()
    if cu_seqlens.numel() == 0 or int(cu_seqlens[0]) != 0 or bool((lens < 0).any()):
        raise ValueError(f"{OP}: cu_seqlens must start at 0 and not decrease, got {cu_seqlens.tolist()[:8]}")
    if int(cu_seqlens[-1]) != q.shape[0]:
        raise ValueError(f"{OP}: cu_seqlens[-1] must be T = {q.shape[0]}, got {int(cu_seqlens[-1])}")
    if lens.numel() and int(lens.max()) > max_seqlen:
        raise ValueError(f"{OP}: max_seqlen must be >= the longest molecule {int(lens.max())}, got {max_seqlen}")
    pairs = q.shape[1] * int((lens.long() ** 2).sum())
    if bias.numel() != pairs:
        raise ValueError(f"{OP}: bias must have H * sum(n_b^2) = {pairs} elements, got {bias.numel()}")
    if key is not None:
        _CHECKED_CU[cu_seqlens] = key


def pair_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, *,
                        scale: float = 1.0, dropout_p: float = 0.0, cu_seqlens: torch.Tensor | None = None,
                        max_seqlen: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with a dense pair bias that also returns the logits (Uni-Mol's self-attention core).

    Args:
        q, k, v: padded [B, H, N, D] (any strides, e.g. ``x.view(B, N, H, D).transpose(1, 2)``), or packed
            [T, H, D] with ``cu_seqlens``; float32, float64 or bfloat16 (math in fp32, fp64 for fp64).
        bias: [B, H, N, N] (padded) or the 1-D packed pair tensor (length H * sum n_b^2), q's dtype; -inf masks.
        scale: multiplies q before q @ k^T (Uni-Mol: D ** -0.5).
        dropout_p: dropout on the probabilities (pass 0 in eval); Philox mask drawn from torch's CPU generator.
        cu_seqlens: [B + 1] int32 offsets of a packed batch; max_seqlen: its longest molecule.
    Returns:
        (out, logits): out like q ([B, H, N, D], stored [B, N, H, D]; or [T, H, D]); logits like bias,
        = (q * scale) @ k^T + bias, the next layer's bias. Rows with every key -inf give out = 0.
    """
    _check(q, k, v, bias, dropout_p, cu_seqlens, max_seqlen)
    packed = cu_seqlens is not None
    if (q.shape[0] if packed else q.shape[0] * q.shape[2]) == 0 or q.shape[1] == 0:
        return _new_out(q, packed).zero_(), bias.new_empty(bias.shape)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item()) if dropout_p > 0 else 0
    max_seqlen = q.shape[2] if not packed else max_seqlen
    out, logits, _ = torch.ops.molm_fast.pair_bias_attention(q, k, v, bias, float(scale), float(dropout_p), seed,
                                                             cu_seqlens, max_seqlen)
    return out, logits
