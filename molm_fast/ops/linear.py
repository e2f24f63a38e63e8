"""linear: y = x W^T + b for the encoder's projections (in_proj, out_proj, fc1, fc2), on the CPU's best GEMM.

Shapes: x [..., K], weight [M, K], bias [M] or None -> [..., M] in x's dtype (x, weight and bias share it).
Backends: ``reference`` is ``F.linear``. ``cpp`` (CPU, bf16, no gradient needed, not while torch.compile traces)
calls oneDNN's linear with the bias fused into the GEMM (``torch.ops.mkldnn._linear_pointwise``) on the weight
reordered once into oneDNN's blocked layout (cached per weight tensor, redone when the weight changes in place):
``F.linear`` runs addmm, which first writes the broadcast bias into the output and re-reads it in the GEMM, and
re-packs the plain weight on every call; on the Uni-Mol shapes (T ~ 300-700 packed tokens, 512 <-> 2048) the
fused call takes ~20% less time (AMX bf16, 1 thread). Same math: fp32 accumulation, bias added in fp32, one
rounding to bf16. Everything else (autograd, fp32, other devices) takes ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from molm_fast.ops import _backend

OP = "linear"


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


# ---- glue per backend ------------------------------------------------------------------------------------
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> (data_ptr, version, oneDNN-packed weight)


def _packed_weight(weight: torch.Tensor) -> torch.Tensor:
    version = 0 if weight.is_inference() else weight._version  # inference tensors cannot change in place later
    hit = _PACKED.get(weight)
    if hit is not None and hit[0] == weight.data_ptr() and hit[1] == version:
        return hit[2]
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
    _PACKED[weight] = (weight.data_ptr(), version, packed)
    return packed


@functools.cache
def cpu_has_bf16_gemm() -> bool:
    """Whether this CPU has bf16 GEMM units oneDNN uses (the bf16 fast paths and bf16 CPU benchmarks key on it);
    its bf16 weight reorder needs AVX512-BW/VL/DQ or AVX-NE-CONVERT (an AVX2-only AMD EPYC has neither)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpp_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.bfloat16 or weight.dtype != x.dtype or weight.dim() != 2:
        return False
    if bias is not None and (bias.dtype != x.dtype or bias.dim() != 1):
        return False
    if not cpu_has_bf16_gemm() or torch.compiler.is_compiling():
        return False
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    return not (needs_grad and torch.is_grad_enabled())


def _forward_cpp(x, weight, bias):
    if not _cpp_applies(x, weight, bias):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, _packed_weight(weight), bias, "none", [], "")


_FORWARD = {"reference": linear_reference, "cpp": _forward_cpp}
_backend.register(OP, _FORWARD)


# ---- public function ---------------------------------------------------------------------------------------
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on the CPU in bf16 inference, oneDNN's fused-bias GEMM (module docstring)."""
    if torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    forced = _backend.forced_backend(OP)
    if forced is not None and forced not in _FORWARD:  # a whole model forced to "triton"/"cuda": GEMMs stay F.linear
        return linear_reference(x, weight, bias)
    return _FORWARD[_backend.pick(OP, x.device)](x, weight, bias)
