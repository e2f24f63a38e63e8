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
                          units=h.units([N] * B), flops=flops(B, N), bytes=bytes_moved(B, N))
            providers = {"reference": pairwise_distance_reference,             # the ratio's denominator
                         "reference_compiled": torch.compile(pairwise_distance_reference)}
            for backend in h.molm_backends(OP, r.device):
                providers[f"molm_fast:{backend}"] = h.with_backend(pairwise_distance, backend)
            r.compare(case, providers, inputs)    # same inputs, interleaved timing, one record per provider

    if __name__ == "__main__":
        h.main(run)                # standalone: python -m benchmarks.bench_pairwise_distance [--quick]

API (``h.<name>``; environment capture lives in environment.py and size mixes in sizes.py, re-exported here):

* ``Run(suite, device=None, quick=False)``: collects records for one run. ``r.device``, ``r.quick``,
  ``r.is_cuda``. ``r.compare(case, {provider: fn}, inputs)`` times every ``fn(*inputs[i % len])``
  interleaved and appends one record per provider (``fn`` returning normally is all that is checked: parity
  lives in tests/); ``r.measure(case, provider, fn, inputs)`` is the one-provider form (prefer ``compare``:
  interleaving keeps ratios honest on a loaded machine). ``r.once(case, provider, fn)``: ONE timed call of
  ``fn()`` for work that takes seconds (recorded with iters=1). ``r.skip(case, provider, reason)``
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
* (sizes.py) ``size_mix(name)`` / ``sample_sizes(name, B, seed)`` / ``padded_coords(ns, ...)``: real heavy-atom
  counts from ``benchmarks/data/sizes_<name>.json`` (N = atoms + 2, cropped at 256 atoms as 3D-MoLM does);
  names: pubchem324k, chebi20, pcdes. ``units(ns, headline="molecules")``: the useful units of a batch
  (molecules, real tokens, real atoms = tokens - 2, real pairs), never padded ones. The batching policies of
  performance.md §9.3 over one seeded pass of a mix, as lists of per-molecule N: ``batches_reference(name, B=64)``
  (random order, pad to batch max), ``batches_bucketed(name, width=8, tokens=16384)`` (N_max * B <= tokens),
  ``batches_packed(name, tokens=16384)`` (varlen); ``cu_seqlens(ns)`` [B+1] int32. ``cached_conformers()``:
  360 real RDKit conformers (atomic numbers + coordinates) of PubChem324k molecules, for benchmarks that want
  real geometry without RDKit.
* (environment.py) ``environment()``: device, driver, CUDA, torch, Triton, molm_fast version + build_info,
  git commit + dirty flag, CPU model + flags, threads, load, date; ``peaks(device)``: roofline peaks or None.

Timing (``time_many``): per provider ``warmup`` calls (>= 3; the first call's time is recorded separately as
``first_call_ms``, it holds ``torch.compile``'s compilation) and one call for peak memory
(``torch.cuda.max_memory_allocated`` above the memory held before it; None on CPU, where PyTorch's allocator
keeps no statistics); then >= 20 timed rounds (more until the slowest provider covers MIN_TIME_S), each
round calling every provider once, interleaved, each call with its own CUDA event pair on GPU
(``time.perf_counter_ns`` on CPU); median, p20 and p80 are reported.
Roofline: ``max(flops / peak_flops[dtype], bytes / peak_bandwidth) / time`` against the peaks in ``PEAKS``
(environment.py: the H100 numbers measured on the lent H100, spec performance.md §5); no roofline is claimed for
a device without an honestly known peak (CPUs here: shared vCPUs, unknown clocks).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.environment import PEAKS, environment, loadavg, peaks
from benchmarks.sizes import (
    CROP_ATOMS,
    batches_bucketed,
    batches_packed,
    batches_reference,
    cached_conformers,
    cu_seqlens,
    padded_coords,
    sample_sizes,
    size_mix,
    units,
)

__all__ = ["Case", "Run", "main", "table", "time_many", "time_fn", "with_grad", "with_backend", "molm_backends",
           "cache_bytes", "environment", "loadavg", "peaks", "PEAKS", "size_mix", "sample_sizes", "cached_conformers",
           "padded_coords", "units", "CROP_ATOMS", "batches_reference", "batches_bucketed", "batches_packed",
           "cu_seqlens"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MIN_ITERS = 20
MIN_WARMUP = 3
MIN_TIME_S = 0.2  # timed calls go on past MIN_ITERS until this much time is covered (capped at MAX_ITERS)
MAX_ITERS = 500

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


def _first_and_warmup(fn: Callable, inputs: Sequence[tuple], warmup: int, sync: Callable) -> tuple[float, float]:
    """First call (holds torch.compile's compilation) and warm-up; returns (first call ms, s per warm call)."""
    sync()
    t0 = time.perf_counter_ns()
    fn(*inputs[0])
    sync()
    first_ms = (time.perf_counter_ns() - t0) / 1e6
    t0 = time.perf_counter_ns()
    for i in range(1, warmup):
        fn(*inputs[i % len(inputs)])
    sync()
    return first_ms, (time.perf_counter_ns() - t0) / 1e9 / (warmup - 1)


def _peak_memory(fn: Callable, args: tuple, device: torch.device) -> int | None:
    """Bytes allocated above the baseline during one dedicated call (CUDA only; None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(*args)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def time_many(fns: dict[str, Callable], inputs: Sequence[tuple], device: torch.device, *,
              warmup: int = MIN_WARMUP, iters: int = MIN_ITERS) -> dict[str, dict[str, Any] | Exception]:
    """Times every ``fn(*inputs[i % len(inputs)])`` of ``fns`` INTERLEAVED (round i calls each provider once,
    starting at a rotating provider), so that load on a shared machine hits all providers alike and their
    ratios stay honest. Each provider: first call, warm-up, one call for peak memory, then >= ``iters`` timed
    calls, more (up to MAX_ITERS) until the slowest provider covers MIN_TIME_S. A provider that raises gets
    its exception instead of timings; the others go on.
    """
    warmup, iters = max(warmup, MIN_WARMUP), max(iters, MIN_ITERS)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    result: dict[str, dict[str, Any] | Exception] = {}
    per_call = {}
    for name, fn in fns.items():
        try:
            first_ms, per_call[name] = _first_and_warmup(fn, inputs, warmup, sync)
            result[name] = {"first_call_ms": first_ms, "peak_mem_bytes": _peak_memory(fn, inputs[0], device)}
        except Exception as exc:  # reported per provider by Run.compare
            result[name] = exc
    live = [n for n in fns if n in per_call]
    if not live:
        return result
    iters = int(min(MAX_ITERS, max(iters, math.ceil(MIN_TIME_S / max(max(per_call.values()), 1e-7)))))
    times: dict[str, list] = {n: [] for n in live}
    for i in range(iters):
        args = inputs[i % len(inputs)]
        for j in range(len(live)):
            name = live[(i + j) % len(live)]
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[name](*args)
                end.record()
                times[name].append((start, end))
            else:
                t = time.perf_counter_ns()
                fns[name](*args)
                times[name].append((time.perf_counter_ns() - t) / 1e6)
    sync()
    for name in live:
        ts = [s.elapsed_time(e) for s, e in times[name]] if cuda else times[name]
        result[name] |= {"median_ms": _percentile(ts, 0.5), "mean_ms": sum(ts) / len(ts),
                         "p20_ms": _percentile(ts, 0.2), "p80_ms": _percentile(ts, 0.8), "min_ms": min(ts),
                         "iters": iters, "warmup": warmup, "rotations": len(inputs), "interleaved_with": len(live) - 1}
    return result


def time_fn(fn: Callable, inputs: Sequence[tuple], device: torch.device, **kw: Any) -> dict[str, Any]:
    """``time_many`` for one callable; raises what ``fn`` raises."""
    t = time_many({"fn": fn}, inputs, device, **kw)["fn"]
    if isinstance(t, Exception):
        raise t
    return t


# ---- one run ----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Collects the records of one run; ``write()`` adds ratios, prints the table, writes one JSON file."""

    suite: str
    device: torch.device | str | None = None
    quick: bool = False
    reference: str = "reference"
    records: list[dict[str, Any]] = field(default_factory=list)
    deadline: float | None = None  # time.time() after which compare() records "skipped: time budget"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. run.py's gpu_build / gpu_tests outcomes

    def __post_init__(self) -> None:
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(self.device)
        self.started = time.time()
        environment()  # captured (and cached) now: the load average is the one at the start of the run

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

    def compare(self, case: Case, providers: dict[str, Callable], inputs: Sequence[tuple], *,
                warmup: int = MIN_WARMUP, iters: int = MIN_ITERS, notes: str | None = None) -> list[dict[str, Any]]:
        """Time every provider on the same ``inputs``, interleaved (``time_many``); one record each. A provider
        that raises is recorded as skipped with its error. Include ``"reference"`` for the speedups."""
        if self.time_left() <= 0:
            return [self.skip(case, p, "time budget of the suite used up before this measurement") for p in providers]
        timings = time_many(providers, inputs, self.device, warmup=warmup, iters=iters)
        return [self._record(case, p, t, notes) for p, t in timings.items()]

    def measure(self, case: Case, provider: str, fn: Callable, inputs: Sequence[tuple], **kw: Any) -> dict[str, Any]:
        """``compare`` with one provider."""
        return self.compare(case, {provider: fn}, inputs, **kw)[0]

    def once(self, case: Case, provider: str, fn: Callable[[], Any], notes: str | None = None) -> dict[str, Any]:
        """ONE timed call (wall clock, synchronised) for work that takes seconds (conformer generation, a
        whole epoch): recorded with ``iters=1`` and no warm-up, so the JSON says it is not a median of 20."""
        if self.time_left() <= 0:
            return self.skip(case, provider, "time budget of the suite used up before this measurement")
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.is_cuda else (lambda: None)
        try:
            sync()
            t0 = time.perf_counter_ns()
            fn()
            sync()
        except Exception as exc:  # recorded as skipped with its error
            return self._record(case, provider, exc, notes)
        ms = (time.perf_counter_ns() - t0) / 1e6
        return self._record(case, provider, {"median_ms": ms, "p20_ms": ms, "p80_ms": ms, "min_ms": ms,
                                             "first_call_ms": ms, "peak_mem_bytes": None, "iters": 1, "warmup": 0,
                                             "rotations": 1, "interleaved_with": 0}, notes)

    def _record(self, case: Case, provider: str, t: dict[str, Any] | Exception, notes: str | None) -> dict[str, Any]:
        if isinstance(t, Exception):
            return self.skip(case, provider, f"{type(t).__name__}: {str(t).splitlines()[0][:300] if str(t) else ''}")
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
                "wall_s": round(time.time() - self.started, 2), "loadavg_at_end": loadavg(),
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
