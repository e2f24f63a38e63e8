"""The one benchmark harness: timing, peak memory, useful-work units, roofline, environment, JSON, table.

Every ``benchmarks/bench_<op>.py`` follows one pattern (copy ``bench_pairwise_distance.py``)::

    from benchmarks import harness as h

    OP = "pairwise_distance"

    def flops(B, N): ...           # FLOPs of the operation (2 per multiply-add) as a function of the shape
    def bytes_moved(B, N): ...     # minimum bytes the op must move (inputs read + outputs written)

    def run(r: h.Run) -> None:     # called by `python -m benchmarks.run` with one shared Run
        for B, N in (GRID_QUICK if r.quick else GRID):
            inputs = r.rotated(lambda: (torch.randn(B, N, 3, device=r.device),))  # list of argument tuples
            case = h.Case(OP, shapes={"B": B, "N": N}, dtype="float32", size_mix="uniform",
                          units={"atoms": B * N, "molecules": B}, flops=flops(B, N), bytes=bytes_moved(B, N))
            r.measure(case, "reference", pairwise_distance_reference, inputs)      # the ratio's denominator
            r.measure(case, "reference_compiled", torch.compile(pairwise_distance_reference), inputs)
            for backend in h.molm_backends(OP, r.device):
                r.measure(case, f"molm_fast:{backend}", h.with_backend(pairwise_distance, backend), inputs)

    if __name__ == "__main__":
        h.main(run)                # standalone: python -m benchmarks.bench_pairwise_distance [--quick]

API (all in this module):

* ``Run(suite, device=None, quick=False)``: collects records for one run. ``r.device``, ``r.quick``,
  ``r.is_cuda``. ``r.measure(case, provider, fn, inputs, pass_="forward")`` times ``fn(*inputs[i % len])``
  and appends a record (``fn`` returning normally is all that is checked). ``r.skip(case, provider, reason)``
  records a provider that could not run (never silently dropped). ``r.rotated(make)`` calls ``make()`` often
  enough that the rotated input sets exceed the last-level cache. ``r.write()`` computes ratios, prints
  the table and writes ``benchmarks/results/<date>_<suite>_<device>_<commit>.json``. ``r.time_left()``: seconds
  before the suite's deadline (``run.py`` sets one; measurements past it are recorded as skipped).
* ``Case(op, shapes, dtype, size_mix, units, flops, bytes, pass_="forward", headline=False)``: what is
  measured. ``units`` counts USEFUL work only (real atoms / molecules / tokens, never padded ones); its first
  key is the headline unit. ``flops``/``bytes`` are the work the op does at that (padded) shape, None when not
  meaningful. ``headline=True`` puts the case in the README table (report.py). The reference provider must be
  named ``"reference"`` (eager ``<op>_reference`` / the model under ``use_backend("reference")``): speedups are
  ``reference median / provider median`` of the same case in the same run. Anchor names: ``reference_compiled``,
  ``sdpa_composite[efficient]``, ``unimol_tools``, ``hf_blip2_qformer``, ``hf_generate``, ``hf_peft`` ...;
  molm_fast providers are ``molm_fast:<backend>`` (or ``molm_fast`` for a whole model).
* ``with_grad(fn, wrt)``: a callable that runs ``fn`` forward and ``torch.autograd.grad`` back to the
  argument positions ``wrt`` (time it with ``pass_="forward+backward"``).
* ``with_backend(fn, backend)``: ``fn`` under ``molm_fast.ops.use_backend(backend)``.
* ``molm_backends(op, device)``: the molm_fast backends implemented for ``op`` that can run on ``device``
  (Triton on the CPU only under ``TRITON_INTERPRET=1``, never timed: the interpreter is not a speed).
* ``size_mix(name)`` / ``sample_sizes(name, B, seed)`` / ``padded_coords(ns, ...)``: real heavy-atom
  counts from ``benchmarks/data/sizes_<name>.json`` (N = atoms + 2, cropped at 256 atoms as 3D-MoLM does);
  names: pubchem324k, chebi20, pcdes. ``cached_conformers()``: 360 real RDKit conformers (atomic numbers +
  coordinates) of PubChem324k molecules, for benchmarks that want real geometry without RDKit.
* ``environment()``: device, driver, CUDA, torch, Triton, molm_fast version + build_info, git commit +
  dirty flag, CPU model + flags, threads, date.

Timing: ``warmup`` calls (>= 3; the first call's time is recorded separately as ``first_call_ms``, it holds
``torch.compile``'s compilation), then ``iters`` (>= 20) timed calls, each with its own CUDA event pair on GPU
(``time.perf_counter_ns`` on CPU); median, p20 and p80 are reported. Peak memory is
``torch.cuda.max_memory_allocated`` above the memory held before the call (None on CPU: PyTorch's CPU
allocator keeps no statistics). Roofline: ``max(flops / peak_flops[dtype], bytes / peak_bandwidth) / time``
against the peaks in ``PEAKS`` (the H100 numbers measured on the lent H100, spec performance.md §5); no
roofline is claimed for a device without an honestly known peak (CPUs here: shared vCPUs, unknown clocks).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "benchmarks" / "data"
MIN_ITERS = 20
MIN_WARMUP = 3
MIN_TIME_S = 0.2  # timed calls go on past MIN_ITERS until this much time is covered (capped at MAX_ITERS)
MAX_ITERS = 500
CROP_ATOMS = 256  # 3D-MoLM crops molecules above 256 atoms (spec 3d-molm.md §3)

# Peaks per device-name pattern: compute per dtype [FLOP/s] and memory bandwidth [B/s], with the source.
PEAKS = {
    "H100": {"flops": {"bfloat16": 798e12, "float16": 798e12, "float32": 67e12}, "bandwidth": 3.0e12,
             "source": "bf16 GEMM and D2D copy measured on the lent H100 (performance.md §5); fp32 = SXM "
                       "datasheet CUDA-core peak (no TF32)"},
    "H200": {"flops": {"bfloat16": 798e12, "float16": 798e12, "float32": 67e12}, "bandwidth": 4.8e12,
             "source": "compute as H100 (measured); bandwidth = H200 datasheet 4.8 TB/s"},
}


# ---- what is measured ----------------------------------------------------------------------------------------
@dataclass
class Case:
    op: str
    shapes: dict[str, Any]
    dtype: str
    size_mix: str
    units: dict[str, float]
    flops: float | None = None
    bytes: float | None = None
    pass_: str = "forward"
    headline: bool = False  # report.py puts headline cases in the README table

    def key(self) -> str:
        shape = ",".join(f"{k}={v}" for k, v in self.shapes.items())
        return f"{self.op}|{self.pass_}|{shape}|{self.dtype}|{self.size_mix}"


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


def _loadavg() -> list[float] | None:
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
        "cpu": _cpu(), "loadavg_1m_5m_15m": _loadavg(), "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
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


# ---- inputs ------------------------------------------------------------------------------------------------
def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0


def cache_bytes(device: torch.device) -> int:
    """The last-level cache to defeat: the GPU's L2, or the CPU's L3 (from sysfs; 64 MiB if unknown)."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        m = re.match(r"(\d+)([KMG]?)", f.read_text().strip())
        if m:
            sizes.append(int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)])
    return max(sizes, default=64 << 20)


# ---- size mixes from the real data ---------------------------------------------------------------------------
@functools.cache
def size_mix(name: str = "pubchem324k") -> tuple[int, ...]:
    """Heavy-atom counts of the real molecules of ``name`` (benchmarks/data/sizes_<name>.json)."""
    path = DATA / f"sizes_{name}.json"
    if not path.exists():
        raise ValueError(f"size_mix: unknown mix {name!r}; expected one of "
                         f"{sorted(p.stem[6:] for p in DATA.glob('sizes_*.json'))}")
    return tuple(json.loads(path.read_text())["heavy_atoms"])


def sample_sizes(name: str, B: int, seed: int = 0) -> list[int]:
    """``B`` token counts N = min(atoms, 256) + 2 drawn (with replacement, seeded) from the mix."""
    atoms = size_mix(name)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(atoms), (B,), generator=g).tolist()
    return [min(atoms[i], CROP_ATOMS) + 2 for i in idx]


@functools.cache
def cached_conformers(name: str = "pubchem324k") -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Real RDKit conformers (heavy atoms) of a seeded sample: ((atomic_numbers [n] int64, coords [n, 3] fp32), ...).

    From benchmarks/data/conformers_<name>.npz (make_conformers.py). Molecules that failed to embed are missing,
    so the sample leans small: take SIZES from ``size_mix`` and real geometry from here.
    """
    import numpy as np

    with np.load(DATA / f"conformers_{name}.npz") as d:
        z, xyz, off = torch.from_numpy(d["atomic_numbers"]).long(), torch.from_numpy(d["coords"]), d["offsets"]
    return tuple((z[a:b], xyz[a:b]) for a, b in zip(off[:-1].tolist(), off[1:].tolist()))


def padded_coords(ns: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random coordinates [B, max(ns), 3] (about 1.5 A apart), zero beyond each molecule's ``n``."""
    B, N = len(ns), max(ns, default=0)
    coords = torch.randn(B, N, 3, generator=generator) * (1.5 * N ** (1 / 3))  # [B, N, 3]
    mask = torch.arange(N)[None, :] < torch.tensor(list(ns))[:, None]  # [B, N]
    return (coords * mask[..., None]).to(device=device, dtype=dtype)


# ---- providers ----------------------------------------------------------------------------------------------
def molm_backends(op: str, device: torch.device) -> list[str]:
    """molm_fast backends that implement ``op`` and run natively on ``device`` (reference excluded)."""
    from molm_fast.ops import _backend

    out = []
    for b in _backend.implemented(op):
        if b == "reference" or _backend.unavailable_reason(b, device) is not None:
            continue
        if b == "triton" and device.type == "cpu":
            continue  # the Triton interpreter is a correctness tool, not a speed
        out.append(b)
    return out


def with_backend(fn: Callable, backend: str) -> Callable:
    from molm_fast.ops import use_backend

    @functools.wraps(fn)
    def call(*args):
        with use_backend(backend):
            return fn(*args)

    return call


def with_grad(fn: Callable, wrt: Sequence[int]) -> Callable:
    """``fn`` forward + ``torch.autograd.grad`` of its (first) output w.r.t. the arguments at ``wrt``."""
    grads: dict[tuple, torch.Tensor] = {}

    def call(*args):
        out = fn(*args)
        outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if o.requires_grad][:1]
        g = [grads.setdefault((tuple(o.shape), o.dtype, o.device), torch.randn_like(o)) for o in outs]
        return torch.autograd.grad(outs, [args[i] for i in wrt], g)

    return call


# ---- timing --------------------------------------------------------------------------------------------------
def _percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def time_fn(fn: Callable, inputs: Sequence[tuple], device: torch.device, *, warmup: int = MIN_WARMUP,
            iters: int = MIN_ITERS) -> dict[str, Any]:
    """Times ``fn(*inputs[i % len(inputs)])``: first call, warm-up, then >= ``iters`` timed calls (ms).

    Fast calls get more timed iterations (up to MAX_ITERS) so that they cover MIN_TIME_S, which steadies
    medians of microsecond calls on a shared machine.
    """
    warmup, iters = max(warmup, MIN_WARMUP), max(iters, MIN_ITERS)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter_ns()
    fn(*inputs[0])
    sync()
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    t0 = time.perf_counter_ns()
    for i in range(1, warmup):
        fn(*inputs[i % len(inputs)])
    sync()
    per_call_s = (time.perf_counter_ns() - t0) / 1e9 / (warmup - 1)
    iters = int(min(MAX_ITERS, max(iters, math.ceil(MIN_TIME_S / max(per_call_s, 1e-7)))))
    base = 0
    if cuda:
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for i, (start, end) in enumerate(events):
            args = inputs[i % len(inputs)]
            start.record()
            fn(*args)
            end.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in events]
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        times = []
        for i in range(iters):
            args = inputs[i % len(inputs)]
            t = time.perf_counter_ns()
            fn(*args)
            times.append((time.perf_counter_ns() - t) / 1e6)
        peak = None
    return {"median_ms": _percentile(times, 0.5), "p20_ms": _percentile(times, 0.2),
            "p80_ms": _percentile(times, 0.8), "min_ms": min(times), "iters": iters, "warmup": warmup,
            "first_call_ms": first_ms, "rotations": len(inputs), "peak_mem_bytes": peak}


# ---- one run ----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Collects the records of one run; ``write()`` adds ratios, prints the table, writes one JSON file."""

    suite: str
    device: torch.device | str | None = None
    quick: bool = False
    reference: str = "reference"
    records: list[dict[str, Any]] = field(default_factory=list)
    deadline: float | None = None  # time.time() after which measure() records "skipped: time budget"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. run.py's gpu_build / gpu_tests outcomes

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(self.device)
        self.started = time.time()

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def rotated(self, make: Callable[[], tuple], max_sets: int = 8) -> list[tuple]:
        """Input sets from ``make()``: enough (2..max_sets) that together they exceed twice the LLC."""
        first = make()
        n = max(2, min(max_sets, math.ceil(2 * cache_bytes(self.device) / max(_nbytes(first), 1))))
        return [first] + [make() for _ in range(n - 1)]

    def _base(self, case: Case, provider: str) -> dict[str, Any]:
        return {"op": case.op, "provider": provider, "pass": case.pass_, "shapes": case.shapes,
                "dtype": case.dtype, "size_mix": case.size_mix, "case": case.key(), "headline": case.headline,
                "units": case.units, "flops": case.flops, "bytes": case.bytes}

    def time_left(self) -> float:
        """Seconds before the deadline (inf without one): bench files may shrink their grid on it."""
        return math.inf if self.deadline is None else self.deadline - time.time()

    def measure(self, case: Case, provider: str, fn: Callable, inputs: Sequence[tuple], *,
                warmup: int = MIN_WARMUP, iters: int = MIN_ITERS, notes: str | None = None) -> dict[str, Any]:
        """Time ``fn`` on ``inputs`` for ``case``; a provider that raises is recorded as skipped with the error."""
        if self.time_left() <= 0:
            return self.skip(case, provider, "time budget of the suite used up before this measurement")
        try:
            t = time_fn(fn, inputs, self.device, warmup=warmup, iters=iters)
        except Exception as exc:  # recorded, never dropped: the table shows why a provider is missing
            return self.skip(case, provider, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        rec = self._base(case, provider) | t | {"notes": notes}
        s = t["median_ms"] / 1e3
        rec["throughput"] = {f"{k}_per_s": v / s for k, v in case.units.items()}
        rec["achieved_tflops"] = case.flops / s / 1e12 if case.flops else None
        rec["achieved_gbps"] = case.bytes / s / 1e9 if case.bytes else None
        pk = peaks(self.device)
        if pk is not None and (case.flops or case.bytes):
            peak_flops = pk["flops"].get(case.dtype)
            floor = max((case.flops or 0) / peak_flops if peak_flops else 0, (case.bytes or 0) / pk["bandwidth"])
            rec["roofline_fraction"] = floor / s if floor else None
            rec["roofline_bound"] = ("memory" if (case.bytes or 0) / pk["bandwidth"] >= floor else "compute")
        else:
            rec["roofline_fraction"], rec["roofline_bound"] = None, None
        self.records.append(rec)
        print(f"  {case.op:<24} {provider:<22} {case.pass_:<16} {_shape(case.shapes):<28} "
              f"{t['median_ms']:10.4f} ms", flush=True)
        return rec

    def skip(self, case: Case, provider: str, reason: str) -> dict[str, Any]:
        rec = self._base(case, provider) | {"skipped": reason}
        self.records.append(rec)
        print(f"  {case.op:<24} {provider:<22} skipped: {reason}", flush=True)
        return rec

    def finalize(self) -> dict[str, Any]:
        """Ratios to the reference measured in this run: speedup = reference median / provider median."""
        ref = {r["case"]: r for r in self.records if r["provider"] == self.reference and "skipped" not in r}
        for r in self.records:
            base = ref.get(r["case"])
            ok = base is not None and "skipped" not in r
            r["reference_provider"] = self.reference if base is not None else None
            r["speedup_vs_reference"] = base["median_ms"] / r["median_ms"] if ok else None
        return {"schema": 1, "suite": self.suite, "quick": self.quick, "device": str(self.device),
                "started": _dt.datetime.fromtimestamp(self.started, _dt.timezone.utc).isoformat(timespec="seconds"),
                "wall_s": round(time.time() - self.started, 2), "loadavg_at_end": _loadavg(),
                "peaks": peaks(self.device),
                "environment": environment(), **self.extra, "records": self.records}

    def write(self, directory: Path = RESULTS) -> Path:
        doc = self.finalize()
        print(table(doc["records"]))
        env = doc["environment"]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", env["device"]).strip("-").lower()
        stamp = _dt.datetime.fromtimestamp(self.started, _dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stamp}_{self.suite}_{slug}_{(env['git_commit'] or 'nogit')[:8]}.json"
        path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        return path


# ---- table ----------------------------------------------------------------------------------------------------
def _shape(shapes: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in shapes.items())


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(records: Sequence[dict[str, Any]]) -> str:
    """A plain-text table: one row per record, grouped by case, headline unit = the case's first unit."""
    head = f"{'op':<24} {'pass':<16} {'shape':<26} {'provider':<22} {'median ms':>10} {'p20-p80 ms':>19} " \
           f"{'headline/s':>20} {'x ref':>7} {'roofline':>8}"
    lines = [head, "-" * len(head)]
    for r in sorted(records, key=lambda r: (r["case"], r["provider"] != "reference", r["provider"])):
        if "skipped" in r:
            lines.append(f"{r['op']:<24} {r['pass']:<16} {_shape(r['shapes']):<26} {r['provider']:<22} "
                         f"skipped: {r['skipped'][:80]}")
            continue
        unit, per_s = next(iter(r["throughput"].items()), ("-", None))
        lines.append(f"{r['op']:<24} {r['pass']:<16} {_shape(r['shapes']):<26} {r['provider']:<22} "
                     f"{r['median_ms']:>10.4f} {r['p20_ms']:>9.4f}-{r['p80_ms']:<9.4f} "
                     f"{_fmt(per_s, '.4g'):>9} {unit[:-6]:<10} {_fmt(r.get('speedup_vs_reference'), '.2f'):>7} "
                     f"{_fmt(r.get('roofline_fraction'), '.1%'):>8}")
    return "\n".join(lines)


# ---- standalone entry point -------------------------------------------------------------------------------------
def main(run: Callable[[Run], None], argv: Sequence[str] | None = None) -> Path:
    """``python -m benchmarks.bench_<op> [--quick] [--device cpu|cuda] [--no-write]``."""
    p = argparse.ArgumentParser(description=(run.__module__ or "benchmark"))
    p.add_argument("--quick", action="store_true", help="small grid (CI / smoke)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=str(RESULTS), help="directory for the JSON result")
    args = p.parse_args(argv)
    suite = Path(sys.argv[0]).stem if run.__module__ == "__main__" else run.__module__.rsplit(".", 1)[-1]
    r = Run(suite, device=args.device, quick=args.quick)
    run(r)
    return r.write(Path(args.out))
