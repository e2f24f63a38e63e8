"""linear: out = residual + act(x W^T + b), the encoder's projections (in_proj, out_proj, fc1 + GELU, fc2 + residual).

Shapes: x [..., K], weight [N, K], bias [N] or None, residual [..., N] or None -> [..., N] in x's dtype (all tensors
share it); ``activation`` is None or ``"gelu"`` (exact, erf). The reference is the unfused PyTorch sequence
``F.linear`` -> ``F.gelu`` -> ``residual + y``, each step a tensor of x's dtype.
Backends: ``reference`` is that sequence. ``cpp`` (CPU, bf16, no gradient needed, not while torch.compile traces):
  - where the CPU has AMX (``_C.linear_amx_usable()``) and N, K are multiples of 32: molm_fast's own AMX GEMM
    (csrc/linear_cpu.cpp) on the weight packed once into AMX's VNNI order, the GELU and the residual add done in
    its epilogue with the same bf16 rounding points as the reference. oneDNN gives the N = 512 projections one
    thread's speed at 2 threads (benchmarks/notes/encoder_cpu_bf16.md); this one splits N across threads;
  - elsewhere with oneDNN bf16 (AVX512-BF16): oneDNN's linear with the bias fused (``_linear_pointwise``) on the
    weight reordered once into oneDNN's blocked layout; ``F.linear`` runs addmm, which writes the broadcast bias into
    the output first and re-packs the plain weight on every call; then GELU and the add as in the reference.
Same math on every path: fp32 accumulation, bias added in fp32, one rounding to bf16 per step. Everything else
(autograd, fp32, other devices) takes the reference. Packed weights are cached per weight tensor (one packed copy
each: 94 MB for the paper-sized encoder in bf16; freed with the weight) and redone when
the weight changes in place through PyTorch's version counter (``copy_``, ``mul_``, ``load_state_dict``, an
optimizer step). Two kinds of write bypass that counter and are not seen: writes through ``weight.data`` and
in-place changes of inference tensors (made under ``torch.inference_mode``); after either, call
``clear_packed_weights()``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from molm_fast.ops import _backend

OP = "linear"
ACTIVATIONS = {None: 0, "gelu": 1}  # codes of csrc/linear_cpu.cpp


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                     activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    return _epilogue(F.linear(x, weight, bias), activation, residual)


def _epilogue(y: torch.Tensor, activation: str | None, residual: torch.Tensor | None) -> torch.Tensor:
    if activation == "gelu":
        y = F.gelu(y)
    return y if residual is None else residual + y


# ---- glue per backend ------------------------------------------------------------------------------------
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> {layout: (data_ptr, version, packed weight)}


def _packed_weight(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """``weight`` in ``layout`` ("amx": csrc/linear_cpu.cpp's VNNI order, "onednn": oneDNN's blocked one), cached."""
    version = 0 if weight.is_inference() else weight._version  # inference tensors have no version counter
    cache = _PACKED.setdefault(weight, {})
    hit = cache.get(layout)
    if hit is not None and hit[0] == weight.data_ptr() and hit[1] == version:
        return hit[2]
    w = weight.detach()
    if layout == "amx":
        w = w.contiguous()  # held by name: a temporary's pointer would dangle during the call
        packed = torch.empty_like(w)
        _backend.load_module("cpp").linear_pack_weight_cpu(w.data_ptr(), packed.data_ptr(), *w.shape)
    else:
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
    cache[layout] = (weight.data_ptr(), version, packed)
    return packed


def clear_packed_weights() -> None:
    """Drop every cached packed weight (after writes the cache cannot see: module docstring)."""
    _PACKED.clear()


@functools.cache
def cpu_has_bf16_gemm() -> bool:
    """Whether this CPU has bf16 GEMM units oneDNN uses (the bf16 fast paths and bf16 CPU benchmarks key on it);
    its bf16 weight reorder needs AVX512-BW/VL/DQ or AVX-NE-CONVERT (an AVX2-only AMD EPYC has neither)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpp_applies(x, weight, bias, residual) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.bfloat16 or weight.dtype != x.dtype or weight.dim() != 2:
        return False
    if bias is not None and (bias.dtype != x.dtype or bias.dim() != 1):
        return False
    if residual is not None and residual.dtype != x.dtype:
        return False
    if not cpu_has_bf16_gemm() or torch.compiler.is_compiling():
        return False
    tensors = (x, weight, bias, residual)
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _amx_applies(weight: torch.Tensor) -> bool:
    N, K = weight.shape
    return N % 32 == 0 and K % 32 == 0 and N > 0 and K > 0 and _backend.load_module("cpp").linear_amx_usable()


def _forward_cpp(x, weight, bias, *, activation, residual):
    if not _cpp_applies(x, weight, bias, residual):
        return linear_reference(x, weight, bias, activation=activation, residual=residual)
    if not _amx_applies(weight):
        y = torch.ops.mkldnn._linear_pointwise(x, _packed_weight(weight, "onednn"), bias, "none", [], "")
        return _epilogue(y, activation, residual)
    N, K = weight.shape
    x2 = x.reshape(-1, K).contiguous()  # [M, K]
    out = x.new_empty(*x.shape[:-1], N)
    b = None if bias is None else bias.contiguous()
    r = None if residual is None else residual.expand(out.shape).contiguous()
    _backend.load_module("cpp").linear_forward_cpu(
        x2.data_ptr(), _packed_weight(weight, "amx").data_ptr(), 0 if b is None else b.data_ptr(),
        0 if r is None else r.data_ptr(), out.data_ptr(), x2.shape[0], N, K, ACTIVATIONS[activation])
    return out


_FORWARD = {"reference": linear_reference, "cpp": _forward_cpp}
_backend.register(OP, _FORWARD)


# ---- public function ---------------------------------------------------------------------------------------
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + act(F.linear(x, weight, bias))`` (act: None or ``"gelu"``); on the CPU in bf16 inference one
    fused AMX (or oneDNN) GEMM (module docstring)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear: activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if residual is not None and residual.shape[-1] != weight.shape[0]:
        raise ValueError(f"linear: residual {list(residual.shape)} does not match the output's last dim "
                         f"{weight.shape[0]} (weight {list(weight.shape)})")
    if torch.compiler.is_compiling():
        return linear_reference(x, weight, bias, activation=activation, residual=residual)
    forced = _backend.forced_backend(OP)
    if forced is not None and forced not in _FORWARD:  # a whole model forced to "triton"/"cuda": GEMMs stay F.linear
        return linear_reference(x, weight, bias, activation=activation, residual=residual)
    return _FORWARD[_backend.pick(OP, x.device)](x, weight, bias, activation=activation, residual=residual)
