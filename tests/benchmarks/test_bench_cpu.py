"""pytest-benchmark over the CPU paths at tiny sizes (CI): every provider runs and matches the reference.

Speed is recorded by pytest-benchmark, never asserted. The suite runner is exercised end to end on a tiny grid.
"""

from __future__ import annotations

import importlib
import inspect
import json

import pytest
import torch

from benchmarks import bench_pairwise_distance, harness, run
from molm_fast.ops import pairwise_distance_reference
from tests.utils import assert_close_to_reference

PROVIDERS = sorted(bench_pairwise_distance._providers(torch.device("cpu")))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_pairwise_distance_providers(benchmark, provider):
    coords = torch.randn(3, 9, 3)
    fn = bench_pairwise_distance._providers(torch.device("cpu"))[provider]
    out = benchmark.pedantic(fn, args=(coords,), rounds=3, iterations=1, warmup_rounds=1)
    assert_close_to_reference(out, pairwise_distance_reference(coords), name=provider)


def test_cpu_suite_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_pairwise_distance, "GRID_QUICK", [(2, 5)])
    monkeypatch.setattr(bench_pairwise_distance, "MIX_BATCHES_QUICK", (3,))
    names = run.discover(None)
    assert "pairwise_distance" in names and run.discover(["pairwise_distance"]) == ["pairwise_distance"]
    known = [n for n in names if n in run.PRIORITY]
    assert known == sorted(known, key=run.PRIORITY.index)
    assert run.main(["--suite", "cpu", "--quick", "--only", "pairwise_distance", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("*_cpu_*.json")
    doc = json.loads(path.read_text())
    recs = doc["records"]
    assert {r["provider"] for r in recs} == set(PROVIDERS)
    assert not [r for r in recs if "skipped" in r], [r["skipped"] for r in recs if "skipped" in r]
    ns = harness.sample_sizes("pubchem324k", 3, seed=0)
    mix = [r for r in recs if r["size_mix"] == "pubchem324k"]
    assert len(mix) == len(PROVIDERS)
    assert all(r["units"]["tokens"] == sum(ns) and r["units"]["atoms"] == sum(ns) - 6 for r in mix)
    assert all(r["shapes"] == {"B": 3, "N": max(ns)} for r in mix)


@pytest.mark.parametrize("name", run.discover(None))
def test_every_bench_module_follows_the_pattern(name):
    """Each benchmarks/bench_<name>.py imports without a GPU and exposes run(r: harness.Run) (harness.py docstring)."""
    module = importlib.import_module(f"benchmarks.bench_{name}")
    assert callable(getattr(module, "run", None)), f"benchmarks/bench_{name}.py must define run(r: harness.Run)"
    assert inspect.signature(module.run).parameters, f"bench_{name}.run must take the harness.Run"


@pytest.mark.parametrize("provider", ["molm_fast:cpp", "molm_fast:cpp[packed]"])
def test_gaussian_pair_bias_cpu_paths(benchmark, provider):
    """The C++ path (padded and packed) at a tiny real-mix batch, against the reference on the same inputs."""
    from benchmarks import bench_gaussian_pair_bias as bench

    if "molm_fast:cpp" not in {f"molm_fast:{b}" for b in harness.molm_backends(bench.OP, torch.device("cpu"))}:
        pytest.skip("the cpp backend is not built here")
    ns = harness.sample_sizes("pubchem324k", 3, seed=1)
    args = bench._inputs(ns, torch.device("cpu"), torch.float32, torch.Generator().manual_seed(0), grad=False)
    providers = bench._providers(torch.device("cpu"), packed=True, compiled=False)
    out = benchmark.pedantic(providers[provider], args=args, rounds=3, iterations=1, warmup_rounds=1)

    def reference(inputs):  # [B, H, N, N] padded, or the packed pair tensor (HELPERS contract: [H, n_b, n_b] blocks)
        ref = providers["reference"](*inputs)
        return torch.cat([ref[b, :, :n, :n].reshape(-1) for b, n in enumerate(ns)]) if "[packed]" in provider else ref

    ref = reference(args)
    try:
        assert_close_to_reference(out, ref, name=provider)
    except AssertionError as exc:  # which side moved? One CI run failed once where the fp32 reference was off
        ref64, again = reference([a.double() if a.is_floating_point() else a for a in args]), reference(args)
        off = [f"{k} {(x.double() - ref64).nan_to_num(0, 0, 0).abs().max().item():.3e}"
               for k, x in (("out", out), ("fp32 reference", ref), ("fp32 reference rerun", again))]
        raise AssertionError(f"{exc}; max error against the fp64 reference: {', '.join(off)}") from None


@pytest.mark.parametrize("provider", ["molm_fast:cpp", "molm_fast:cpp[packed]"])
def test_pair_bias_attention_cpu_paths(benchmark, provider):
    """The C++ path (padded and packed) at a tiny real-mix batch, against the reference on the same inputs."""
    from benchmarks import bench_pair_bias_attention as bench

    cpu = torch.device("cpu")
    if "cpp" not in harness.molm_backends(bench.OP, cpu):
        pytest.skip("the cpp backend is not built here")
    ns = harness.sample_sizes("pubchem324k", 3, seed=2)
    args = bench._inputs(ns, max(ns), cpu, torch.float32, torch.Generator().manual_seed(0), False, pad_last=0.0)
    providers = bench._providers(harness.Run("test", device="cpu"), 0.0, packed=True, compiled=False)
    out, logits = benchmark.pedantic(providers[provider], args=args, rounds=3, iterations=1, warmup_rounds=1)
    ref_out, ref_logits = providers["reference"](*args)  # [B, H, N, D], [B, H, N, N]
    if provider.endswith("[packed]"):  # out [T, H, D]; logits: the packed pair tensor (HELPERS contract)
        ref_out = torch.cat([ref_out[b, :, :n].transpose(0, 1) for b, n in enumerate(ns)])
        ref_logits = torch.cat([ref_logits[b, :, :n, :n].reshape(-1) for b, n in enumerate(ns)])
    assert_close_to_reference(out, ref_out, name=f"{provider} out")
    assert_close_to_reference(logits, ref_logits, name=f"{provider} logits")


@pytest.mark.parametrize("provider", ["reference_compiled", "molm_fast:cpp", "molm_fast:cpp[onednn]"])
def test_linear_cpu_paths(provider):
    """Every bench_linear provider computes the same fused projection as the reference (fc1 + GELU, fc2 + residual)."""
    from benchmarks import bench_linear as bench
    from molm_fast.ops.linear import cpu_has_bf16_gemm

    if "cpp" not in harness.molm_backends(bench.OP, torch.device("cpu")) or not cpu_has_bf16_gemm():
        pytest.skip("bench_linear runs only with the cpp backend on a CPU with bf16 GEMMs")
    for layer in ("fc1", "fc2"):
        K, N, activation, residual = bench.LAYERS[layer]
        args = bench._inputs(37, K, N, activation, residual, torch.Generator().manual_seed(0))
        with torch.inference_mode():
            out = {"reference_compiled": torch.compile(bench._reference, dynamic=False),
                   "molm_fast:cpp": harness.with_backend(bench._fused, "cpp"),
                   "molm_fast:cpp[onednn]": harness.with_backend(bench._onednn, "cpp")}[provider](*args)
        x, w, b, _, r = args
        ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
        ref = torch.nn.functional.gelu(ref) if activation else ref
        assert_close_to_reference(out, (ref if r is None else ref + r.double()).float(), name=f"{provider} {layer}")
