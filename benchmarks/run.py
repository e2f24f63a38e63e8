"""One command per suite: ``python -m benchmarks.run --suite cpu|gpu [--quick] [--out DIR] [--only a,b]``.

* ``cpu``: every ``benchmarks/bench_*.py`` on the CPU, one JSON in ``--out`` (default benchmarks/results/).
* ``gpu``: (1) build molm_fast with its CUDA kernels for sm_90 (``pip install --no-build-isolation --no-deps -e .``),
  (2) ``pytest -m gpu``, (3) every bench module on the GPU; all within ``--budget-s`` (default 360 s, one H100
  lease is ~15 min with start-up). Needs no RDKit and no network: size mixes come from benchmarks/data/.
  Build and test outcomes go into the JSON (``gpu_build`` / ``gpu_tests``) next to the measurements.

Bench modules run in ``PRIORITY`` order (kernels first), each with a fair share of the time left; a module that
fails to import or raises is recorded as skipped with its error, and the suite goes on. Measurements started past
the module's deadline are recorded as skipped ("time budget"), never dropped. Set ``MOLM_FAST_GIT_COMMIT`` where
the checkout has no ``.git`` (the GPU machine) so the JSON names the commit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The goals' kernels and models first (performance.md §9.2); the foundation's pairwise_distance last.
PRIORITY = ["gaussian_pair_bias", "pair_bias_attention", "qformer_cross_attention", "linear", "encoder", "embed",
            "qformer", "generate", "training", "data", "pairwise_distance"]


def discover(only: list[str] | None) -> list[str]:
    names = sorted(p.stem[len("bench_"):] for p in (ROOT / "benchmarks").glob("bench_*.py"))
    names.sort(key=lambda n: PRIORITY.index(n) if n in PRIORITY else len(PRIORITY))
    return [n for n in names if not only or n in only]


def _sh(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` in the repo root, tee its output to ``log``; returns rc, seconds and the output's tail."""
    t = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1),
                           env={**os.environ, **(env or {})})
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
    log.write_text(out)
    print(out[-3000:], flush=True)
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.time() - t, 1), "tail": out[-1500:]}


def build_gpu(timeout: float, out: Path) -> dict:
    env = {"CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 8)}
    return _sh([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", ".",
                "-Ccmake.define.MOLM_FAST_CUDA=ON", "-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90"],
               timeout, out / "gpu_build.log", env)


def gpu_tests(timeout: float, out: Path) -> dict:
    # --continue-on-collection-errors: test modules that need RDKit (absent on the GPU image) must not stop the rest.
    res = _sh([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", "tests"], timeout, out / "gpu_tests.log")
    counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)",
                                                      res["tail"]))
    return res | {"counts": counts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=("cpu", "gpu"), required=True)
    p.add_argument("--quick", action="store_true", help="small grids (the CPU suite in CI / on 2 cores)")
    p.add_argument("--only", default="", help="comma-separated bench names, e.g. pairwise_distance,encoder")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for JSON and logs")
    p.add_argument("--budget-s", type=float, default=None, help="whole-suite time budget (gpu default 360)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (OMP_NUM_THREADS + torch.set_num_threads); 1 gives stable numbers on a shared "
                        "machine, where a descheduled OpenMP worker stalls every parallel region")
    p.add_argument("--no-build", action="store_true", help="gpu: skip the build step")
    p.add_argument("--no-tests", action="store_true", help="gpu: skip pytest -m gpu")
    p.add_argument("--extra", default=None, help=argparse.SUPPRESS)  # build/test outcomes from the first stage
    p.add_argument("--start", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    start, out = args.start or time.time(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (360.0 if args.suite == "gpu" else 3600.0)
    extra: dict = json.loads(Path(args.extra).read_text()) if args.extra else {}
    if args.suite == "gpu" and not (args.no_build and args.no_tests):
        if not args.no_build:
            extra["gpu_build"] = build_gpu(0.45 * budget, out)
        if not args.no_tests:
            extra["gpu_tests"] = gpu_tests(start + 0.7 * budget - time.time(), out)
        # A fresh interpreter measures: the editable install's finder (and the new _C_cuda) load at start-up.
        (out / "gpu_build_tests.json").write_text(json.dumps(extra, indent=1))
        cmd = [sys.executable, "-m", "benchmarks.run", "--suite", "gpu", "--out", str(out), "--no-build", "--no-tests",
               "--extra", str(out / "gpu_build_tests.json"), "--start", str(start), "--budget-s", str(budget)]
        cmd += (["--quick"] if args.quick else []) + (["--only", args.only] if args.only else [])
        return subprocess.run(cmd, cwd=ROOT).returncode

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch / molm_fast._C start their OpenMP
    import torch  # only now: the build above must come before molm_fast is imported

    if args.threads:
        torch.set_num_threads(args.threads)

    from benchmarks import harness as h
    from benchmarks.environment import calibrate

    if args.suite == "gpu" and not torch.cuda.is_available():
        print("benchmarks.run: --suite gpu needs a CUDA device", file=sys.stderr)
        return 2
    r = h.Run(args.suite, device="cuda" if args.suite == "gpu" else "cpu", quick=args.quick)
    r.extra = extra | {"calibration": calibrate(r.device)}
    names = discover([n for n in args.only.split(",") if n] or None)
    for i, name in enumerate(names):
        left = start + budget - time.time()
        r.deadline = time.time() + min(left, 2 * left / (len(names) - i))
        print(f"== bench_{name} ({max(left, 0):.0f} s left)", flush=True)
        t = time.time()
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            module.run(r)
        except Exception as exc:  # recorded and reported; the other modules still run
            traceback.print_exc()
            r.skip(h.Case(name, {}, "-", "-", {}), f"bench_{name}", f"{type(exc).__name__}: {exc}"[:300])
        r.extra.setdefault("module_seconds", {})[name] = round(time.time() - t, 1)
    r.deadline = None
    r.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
