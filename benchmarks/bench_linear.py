"""linear: out = residual + act(x W^T + b) at the Uni-Mol encoder's four projections (bf16 inference on the CPU).

Providers: ``reference`` (``linear_reference``: F.linear -> F.gelu -> residual add, each a bf16 tensor; the ratio's
denominator), ``reference_compiled`` (``torch.compile`` of it: Inductor's fusion of the epilogue), and
``molm_fast:cpp`` (molm_fast's AMX GEMM with the epilogue fused where the CPU has AMX, else oneDNN's) plus
``molm_fast:cpp[onednn]`` (the same with ``MOLM_FAST_CPU_GENERIC=1``: oneDNN's packed-weight linear, epilogue in
ATen). Shapes: M = packed atom tokens of a batch of 16 PubChem324k molecules (the encoder's batch), and 4x that;
in_proj 512 -> 1536, out_proj 512 -> 512 + residual, fc1 512 -> 2048 + GELU, fc2 2048 -> 512 + residual.
Only on a CPU with bf16 GEMM units (``cpu_has_bf16_gemm``); on CUDA ``ops.linear`` is F.linear (cuBLAS).
"""

from __future__ import annotations

import functools
import os

import torch

from benchmarks import harness as h
from molm_fast.ops import linear, linear_reference
from molm_fast.ops.linear import cpu_has_bf16_gemm

OP = "linear"
# name: (K, N, activation, residual)
LAYERS = {"in_proj": (512, 1536, None, False), "out_proj": (512, 512, None, True),
          "fc1": (512, 2048, "gelu", False), "fc2": (2048, 512, None, True)}


def flops(M: int, K: int, N: int) -> float:
    return 2.0 * M * N * K


def bytes_moved(M: int, K: int, N: int, residual: bool) -> float:
    """bf16: read x and W once, write out (and read the residual)."""
    return 2.0 * (M * K + N * K + M * N * (2 if residual else 1))


def _onednn(*args):
    before = os.environ.get("MOLM_FAST_CPU_GENERIC")
    os.environ["MOLM_FAST_CPU_GENERIC"] = "1"  # turns the AMX path off: oneDNN's linear + ATen's epilogue
    try:
        return _fused(*args)
    finally:
        if before is None:
            del os.environ["MOLM_FAST_CPU_GENERIC"]
        else:
            os.environ["MOLM_FAST_CPU_GENERIC"] = before


def _fused(x, w, b, activation, r):
    return linear(x, w, b, activation=activation, residual=r)


def _reference(x, w, b, activation, r):
    return linear_reference(x, w, b, activation=activation, residual=r)


def run(r: h.Run) -> None:
    if r.is_cuda or not cpu_has_bf16_gemm():
        r.skip(h.Case(OP, {}, "bfloat16", "-", {}), "all", "bf16 CPU GEMMs only (AMX or AVX512-BF16); on CUDA "
               "ops.linear is F.linear")
        return
    tokens = sum(n + 2 for n in h.sample_sizes("pubchem324k", 16, seed=0))  # one packed encoder batch
    compiled = torch.compile(_reference, dynamic=False)
    providers = {"reference": _reference, "reference_compiled": compiled,
                 "molm_fast:cpp": h.with_backend(_fused, "cpp"),
                 "molm_fast:cpp[onednn]": h.with_backend(_onednn, "cpp")}
    for M in (tokens,) if r.quick else (tokens, 4 * tokens):
        for name, (K, N, activation, residual) in LAYERS.items():
            case = h.Case(OP, {"layer": name, "M": M, "K": K, "N": N}, "bfloat16", "pubchem324k",
                          units={"tokens": M}, flops=flops(M, K, N), bytes=bytes_moved(M, K, N, residual),
                          headline=name == "fc2" and M == tokens)
            gen = torch.Generator().manual_seed(M + K + N)
            make = functools.partial(_inputs, M, K, N, activation, residual, gen)
            with torch.inference_mode():
                r.compare(case, providers, r.rotated(make, max_sets=4))


def _inputs(M, K, N, activation, residual, gen):
    x = torch.randn(M, K, generator=gen).bfloat16()
    w = (torch.randn(N, K, generator=gen) / K**0.5).bfloat16()
    res = torch.randn(M, N, generator=gen).bfloat16() if residual else None
    return x, w, torch.randn(N, generator=gen).bfloat16(), activation, res

if __name__ == "__main__":
    h.main(run)
