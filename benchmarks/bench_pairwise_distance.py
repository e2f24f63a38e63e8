"""pairwise_distance: coords [B, N, 3] -> [B, N, N] (the pattern every bench_<op>.py copies).

Providers: ``reference`` (eager ``pairwise_distance_reference``, the ratio's denominator),
``reference_compiled`` (``torch.compile`` of it), ``cdist`` (``torch.cdist``, the generic composite) and
``molm_fast:<backend>`` for each molm_fast backend that runs natively on the device. Shapes: the N grid of
performance.md §9.3 (uniform N), plus the real PubChem324k size mix at B = 64 / 256 / 1024 padded to the batch
maximum: useful units count real tokens (N = atoms + 2), atoms and pairs only (``h.units``).
"""

from __future__ import annotations

import torch

from benchmarks import harness as h
from molm_fast.ops import pairwise_distance, pairwise_distance_reference

OP = "pairwise_distance"
GRID = [(1, 16), (64, 16), (256, 16), (1024, 16), (1, 32), (64, 32), (256, 32), (1024, 32), (1, 64), (64, 64),
        (256, 64), (1024, 64), (1, 128), (64, 128), (256, 128), (1, 258), (16, 258), (64, 258)]
GRID_QUICK = [(1, 16), (64, 32), (16, 128)]
MIX_BATCHES, MIX_BATCHES_QUICK = (64, 256, 1024), (64,)


def flops(B: int, N: int) -> float:
    """3 subtractions, 3 multiply-adds (2 FLOPs each, the first an add) and a sqrt per pair: ~9 FLOPs."""
    return 9.0 * B * N * N


def bytes_moved(B: int, N: int, itemsize: int) -> float:
    """Read coords once, write the [B, N, N] output."""
    return float(itemsize * (B * N * 3 + B * N * N))


def _providers(device: torch.device) -> dict:
    providers = {"reference": pairwise_distance_reference,
                 "reference_compiled": torch.compile(pairwise_distance_reference, dynamic=False),
                 "cdist": lambda x: torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")}
    for backend in h.molm_backends(OP, device):
        providers[f"molm_fast:{backend}"] = h.with_backend(pairwise_distance, backend)
    return providers


def _measure(r: h.Run, case: h.Case, ns: list[int], dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(len(r.records))
    inputs = r.rotated(lambda: (h.padded_coords(ns, r.device, dtype, gen),))
    r.compare(case, _providers(r.device), inputs)


def run(r: h.Run) -> None:
    """Real size mix first (the headline: it survives a tight suite budget), then the uniform grid."""
    for B in MIX_BATCHES_QUICK if r.quick else MIX_BATCHES:
        ns = h.sample_sizes("pubchem324k", B, seed=0)
        N = max(ns)
        case = h.Case(OP, {"B": B, "N": N}, "float32", "pubchem324k", units=h.units(ns, headline="tokens"),
                      flops=flops(B, N), bytes=bytes_moved(B, N, 4), headline=True)
        _measure(r, case, ns, torch.float32)
    for B, N in GRID_QUICK if r.quick else GRID:
        case = h.Case(OP, {"B": B, "N": N}, "float32", "uniform", units=h.units([N] * B, headline="tokens"),
                      flops=flops(B, N), bytes=bytes_moved(B, N, 4))
        _measure(r, case, [N] * B, torch.float32)


if __name__ == "__main__":
    h.main(run)
