"""Real size mixes and cached conformers for benchmarks (re-exported by harness.py; use ``h.size_mix`` etc.).

The counts come from the real molecules in shared/data (``benchmarks/data/make_sizes.py``, RDKit, run once): the
GPU image has no RDKit, so benchmarks read the cached JSON/npz files.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"
CROP_ATOMS = 256  # 3D-MoLM crops molecules above 256 atoms (spec 3d-molm.md §3)


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


def units(ns: Sequence[int], *, headline: str = "molecules") -> dict[str, int]:
    """Useful work of a batch of molecules with ``ns`` tokens each (N = atoms + 2: BOS/EOS, padding excluded):
    molecules, real tokens, real atoms and real token pairs, ``headline`` first (the table's unit)."""
    u = {"molecules": len(ns), "tokens": sum(ns), "atoms": sum(max(n - 2, 0) for n in ns),
         "pairs": sum(n * n for n in ns)}
    return {headline: u.pop(headline)} | u


# ---- the three batching policies of performance.md §9.3 over one pass of a size mix (token counts N) -----------
def _epoch(name: str, seed: int) -> list[int]:
    atoms = size_mix(name)
    order = torch.randperm(len(atoms), generator=torch.Generator().manual_seed(seed)).tolist()
    return [min(atoms[i], CROP_ATOMS) + 2 for i in order]


def batches_reference(name: str = "pubchem324k", B: int = 64, seed: int = 0) -> list[list[int]]:
    """(a) reference: random order, B molecules per batch, each padded to its batch maximum."""
    ns = _epoch(name, seed)
    return [ns[i:i + B] for i in range(0, len(ns), B)]


def batches_bucketed(name: str = "pubchem324k", width: int = 8, tokens: int = 16384, seed: int = 0) -> list[list[int]]:
    """(b) length-bucketed: buckets of ``width`` atoms, B chosen per bucket so that N_max * B <= ``tokens``."""
    buckets: dict[int, list[int]] = {}
    for n in _epoch(name, seed):
        buckets.setdefault((n - 2) // width, []).append(n)
    out = []
    for key in sorted(buckets):
        ns = buckets[key]
        B = max(1, tokens // (key * width + width - 1 + 2))
        out += [ns[i:i + B] for i in range(0, len(ns), B)]
    return out


def batches_packed(name: str = "pubchem324k", tokens: int = 16384, seed: int = 0) -> list[list[int]]:
    """(c) varlen packed: molecules in random order, a new batch whenever ``tokens`` real tokens would overflow."""
    out: list[list[int]] = [[]]
    for n in _epoch(name, seed):
        if out[-1] and sum(out[-1]) + n > tokens:
            out.append([])
        out[-1].append(n)
    return out


def cu_seqlens(ns: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[B + 1] int32 offsets of a packed batch (flash-attention's varlen convention)."""
    return torch.tensor([0] + list(ns), dtype=torch.int64).cumsum(0).to(device=device, dtype=torch.int32)
