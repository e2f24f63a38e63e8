"""molm_fast: a fast, faithful, checkpoint-compatible 3D-MoLM (Li et al., ICLR 2024).

Uni-Mol encoder -> Q-Former -> causal LM, with fused Triton / CUDA / C++ kernels for the encoder's
Gaussian pair bias and pair-bias attention and for the Q-Former cross-attention. Every fast path has a
plain-PyTorch reference (``molm_fast.ops.<op>_reference``; a model's reference is the model run with
backend ``reference``).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

_LAZY = {"MoLM": "molm_fast.models.molm"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'molm_fast' has no attribute {name!r}")


def build_info() -> dict[str, Any]:
    """What was built and what will run: versions, native modules, Triton, OpenMP threads and per-op backends."""
    import torch

    import molm_fast.ops  # noqa: F401  (registers every op)
    from molm_fast.ops import _backend

    info: dict[str, Any] = {"version": __version__, "torch": torch.__version__}
    try:
        c = _backend.load_module("cpp")
        info["cpp"] = True
        info["openmp"] = bool(c.has_openmp)
        info["openmp_threads"] = int(c.openmp_max_threads())
    except ImportError as exc:
        info.update(cpp=False, cpp_error=str(exc), openmp=False, openmp_threads=0)
    try:
        cu = _backend.load_module("cuda")
        info["cuda"] = True
        info["cuda_archs"] = [int(a) for a in str(cu.cuda_archs).split(",") if a]
    except ImportError:
        info["cuda"] = False
        info["cuda_archs"] = []
    info["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    try:
        info["triton"] = _backend.load_module("triton").__version__
    except ImportError:
        info["triton"] = None
    info["forced_backend"] = os.environ.get("MOLM_FAST_BACKEND") or None
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    info["backends"] = {
        dev.type: {op: _backend.pick(op, dev) for op in _backend.registered()} for dev in devices
    }
    return info


__all__ = ["__version__", "build_info", "MoLM"]
