"""Environment capture and roofline peaks for benchmarks (re-exported by harness.py; use ``h.environment()``).

``environment()``: date, device, driver, CUDA, torch, Triton, Python, molm_fast version + build_info, git commit +
dirty flag (``MOLM_FAST_GIT_COMMIT`` where the checkout has no .git, e.g. the GPU machine), CPU model + SIMD flags,
threads, load average, MOLM_FAST_*/OMP_* variables. ``peaks(device)``: the roofline peaks, or None where no
honest peak is known.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

# Peaks per device-name pattern: compute per dtype [FLOP/s] and memory bandwidth [B/s], with the source.
PEAKS = {
    "H100": {"flops": {"bfloat16": 798e12, "float16": 798e12, "float32": 67e12}, "bandwidth": 3.0e12,
             "source": "bf16 GEMM and D2D copy measured on the lent H100 (performance.md §5); fp32 = SXM "
                       "datasheet CUDA-core peak (no TF32)"},
    "H200": {"flops": {"bfloat16": 798e12, "float16": 798e12, "float32": 67e12}, "bandwidth": 4.8e12,
             "source": "compute as H100 (measured); bandwidth = H200 datasheet 4.8 TB/s"},
}


# ---- environment -------------------------------------------------------------------------------------------
def _run(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu() -> dict[str, Any]:
    model, flags = platform.processor() or None, []
    try:
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            model = m.group(1).strip()
        if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
            flags = sorted(f for f in m.group(1).split() if re.match(r"(avx|amx|fma|sse4|f16c)", f))
    except OSError:
        pass
    return {"model": model, "flags": flags, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine()}


def loadavg() -> list[float] | None:
    """The machine's load: CPU timings on a shared machine are only as good as this is low."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@functools.cache
def environment() -> dict[str, Any]:
    import molm_fast

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit = _run(["git", "rev-parse", "HEAD"]) or os.environ.get("MOLM_FAST_GIT_COMMIT")
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton_version,
        "python": platform.python_version(), "molm_fast": molm_fast.__version__,
        "build_info": molm_fast.build_info(),
        "git_commit": commit, "git_dirty": None if status is None else bool(status),
        "git_dirty_files": None if status is None else len(status.splitlines()),
        "cpu": _cpu(), "loadavg_1m_5m_15m": loadavg(), "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "env": {k: v for k, v in os.environ.items() if k.startswith(("MOLM_FAST_", "OMP_", "CUDA_VISIBLE"))},
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_bytes": p.total_memory,
                      "sms": p.multi_processor_count}
    return env


def peaks(device: torch.device) -> dict[str, Any] | None:
    """The roofline peaks of ``device``, or None where no honest peak is known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS.items() if k in name), None)


def calibrate(device: torch.device, seconds: float = 0.5) -> dict[str, Any]:
    """What this machine does right now: a large matmul (bf16 on CUDA, fp32 on CPU) and a device-to-device copy,
    each the best of a few repeats within ``seconds``. Context for the run (load, clocks), NOT the roofline peaks."""
    import time

    cuda = device.type == "cuda"
    dtype, n = (torch.bfloat16, 8192) if cuda else (torch.float32, 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    src = torch.empty(256 << 20 if cuda else 64 << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)

    def best(fn) -> float:
        fn()
        sync()
        out, end = float("inf"), time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            t = time.perf_counter()
            fn()
            sync()
            out = min(out, time.perf_counter() - t)
        return out

    gemm = best(lambda: a @ a)
    copy = best(lambda: dst.copy_(src))
    return {"matmul_dtype": str(dtype).removeprefix("torch."), "matmul_n": n,
            "matmul_tflops": 2 * n**3 / gemm / 1e12, "copy_gbps_read_plus_write": 2 * src.numel() / copy / 1e9,
            "note": "measured at the start of this run; context only (roofline fractions use PEAKS)"}
