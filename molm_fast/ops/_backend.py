"""The only place a backend is chosen for an op.

Backends: ``cuda`` (molm_fast._C_cuda), ``triton`` (molm_fast.kernels), ``cpp`` (molm_fast._C, CPU) and
``reference`` (plain PyTorch, always there). The automatic choice walks ``ORDER`` for the op and the
tensor's device type (fastest measured first, ``reference`` last) and takes the first backend that the op
implements and that is available. A backend picked automatically that fails to import is skipped
quietly (Liger-Kernel's rule); a backend the user forced and that is unavailable raises ``RuntimeError``
saying why. Forcing, strongest first:

* ``use_backend("triton")`` -- a context manager (tests, benchmarks); ``use_backend(pair_bias_attention="cpp")``
  forces one op only;
* ``MOLM_FAST_BACKEND=triton`` (every op) or ``MOLM_FAST_BACKEND="pair_bias_attention=triton,gaussian_pair_bias=cpp"``.

Triton runs on the CPU only under the interpreter (``TRITON_INTERPRET=1``), and only when forced.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import os
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

BACKENDS = ("cuda", "triton", "cpp", "reference")

# Fastest measured first, reference last. An op missing here uses DEFAULT_ORDER.
DEFAULT_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpp", "reference")}
ORDER: dict[str, dict[str, tuple[str, ...]]] = {
    "pairwise_distance": {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpp", "reference")},
    "qformer_cross_attention": {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")},
    "pair_bias_attention": {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpp", "reference")},
    # GPU order not yet measured: Triton runs the linears on bf16 tensor cores (and handles fp64), CUDA in fp32 FMA.
    "gaussian_pair_bias": {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpp", "reference")},
}

# dtype codes understood by csrc/common.h::DType.
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}

log = logging.getLogger("molm_fast.ops")
_forced: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("molm_fast_forced", default=None)


def _parse_env(value: str) -> dict[str, str]:
    """'triton' -> {'*': 'triton'}; 'a=cpp,b=triton' -> {'a': 'cpp', 'b': 'triton'}."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        op, _, name = item.rpartition("=")
        if name not in BACKENDS:
            raise RuntimeError(f"MOLM_FAST_BACKEND: unknown backend {name!r}; expected one of {BACKENDS}")
        out[op or "*"] = name
    return out


@contextlib.contextmanager
def use_backend(name: str | None = None, **per_op: str) -> Iterator[None]:
    """Force a backend for every op (``name``) and/or for single ops (``op=name``) inside the block."""
    forced = dict(_forced.get() or {})
    for backend in ([name] if name else []) + list(per_op.values()):
        if backend not in BACKENDS:
            raise ValueError(f"use_backend: unknown backend {backend!r}; expected one of {BACKENDS}")
    if name:
        forced = {"*": name}
    forced.update(per_op)
    token = _forced.set(forced)
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend(op: str) -> str | None:
    """The backend the user forced for ``op``, or None."""
    forced = _forced.get()
    if forced is None:
        forced = _parse_env(os.environ.get("MOLM_FAST_BACKEND", ""))
    return forced.get(op, forced.get("*"))


@functools.cache
def load_module(backend: str):
    """Import the module behind a backend; raises ImportError with the reason."""
    if backend == "cpp":
        return importlib.import_module("molm_fast._C")
    if backend == "cuda":
        return importlib.import_module("molm_fast._C_cuda")
    if backend == "triton":
        return importlib.import_module("triton")
    if backend == "reference":
        return None
    raise ValueError(f"unknown backend {backend!r}")


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """None if ``backend`` can run on ``device`` here, else why not (and how to get it)."""
    if backend == "reference":
        return None
    if backend == "cpp" and device.type != "cpu":
        return f"the cpp backend runs on the CPU, the tensors are on {device}"
    if backend == "cuda" and device.type != "cuda":
        return f"the cuda backend runs on CUDA devices, the tensors are on {device}"
    if backend == "triton" and device.type == "cpu" and not triton_interpret():
        return "triton runs on the CPU only in the interpreter: set TRITON_INTERPRET=1 before importing triton"
    if backend == "triton" and device.type not in ("cpu", "cuda"):
        return f"triton does not run on {device}"
    try:
        load_module(backend)
    except ImportError as exc:
        how = {
            "cpp": "reinstall molm_fast from source (pip install .) so that molm_fast._C is built",
            "cuda": "rebuild with a CUDA toolkit on PATH (pip install . -Ccmake.define.MOLM_FAST_CUDA=ON)",
            "triton": "pip install triton",
        }[backend]
        return f"{backend} backend failed to import ({exc}); {how}"
    return None


_IMPLEMENTED: dict[str, tuple[str, ...]] = {}


def register(op: str, implemented: Iterable[str]) -> None:
    """Called once by molm_fast/ops/<op>.py with the backends it has glue for."""
    _IMPLEMENTED[op] = tuple(implemented)


def implemented(op: str) -> tuple[str, ...]:
    return _IMPLEMENTED[op]


def registered() -> tuple[str, ...]:
    return tuple(_IMPLEMENTED)


def pick(op: str, device: torch.device) -> str:
    """The backend to run ``op`` on ``device``."""
    implemented = _IMPLEMENTED[op]
    forced = forced_backend(op)
    if forced is not None:
        if forced not in implemented:
            raise RuntimeError(f"{op}: backend {forced!r} was forced but {op} implements only {implemented}")
        reason = unavailable_reason(forced, device)
        if reason is not None:
            raise RuntimeError(f"{op}: backend {forced!r} was forced but is unavailable: {reason}")
        return forced
    order = ORDER.get(op, DEFAULT_ORDER).get(device.type, ("reference",))
    for backend in order:
        if backend in implemented and unavailable_reason(backend, device) is None:
            _log_pick(op, device.type, backend)
            return backend
    return "reference"


@functools.cache
def _log_pick(op: str, device_type: str, backend: str) -> None:
    log.debug("molm_fast.ops: %s on %s -> %s", op, device_type, backend)


def cuda_stream(device: torch.device) -> int:
    """The current CUDA stream of ``device`` as an integer for the _C_cuda entries."""
    return torch.cuda.current_stream(device).cuda_stream


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def pair_offsets(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[B + 1] int64 offsets of a packed batch's per-molecule pair blocks (exclusive cumsum of n_b^2), on
    cu_seqlens' device, without a host sync: the packed pair tensor puts molecule b's [H, n_b, n_b] at H * it[b]."""
    n = cu_seqlens.diff().long()  # [B]
    return F.pad(torch.cumsum(n * n, 0), (1, 0))
