"""3D conformers with RDKit: ETKDGv3 + MMFF94, seeded, with 3D-MoLM's fallbacks, in parallel, cached.

Recipe per molecule (spec §3.1, 3D-MoLM ``inference.ipynb::smiles2graph`` and Uni-Mol ``inner_smi2coords``):
  1. ``AddHs``, ETKDGv3 embed with ``randomSeed = config.seed`` (one thread), then ``MMFFOptimizeMolecule``
     (a molecule MMFF94 has no parameters for keeps its ETKDG geometry, with a warning).  source "etkdg"
  2. on failure: embed the H-free molecule with ``max_attempts`` attempts, ``AddHs(addCoords=True)``, MMFF.
                                                                                             source "etkdg_no_h"
  3. on failure: embed from random coordinates (``useRandomCoords``) with ``max_attempts`` attempts, MMFF.
                                                                                             source "random_coords"
  4. last resort (``allow_2d``): ``Compute2DCoords``, flagged in the record's warnings.    source "2d"
     A molecule out of time (``time_limit_s``) also gets 2D coordinates when ``allow_2d``, flagged; else it fails.
Same SMILES + same config -> the same coordinates (ETKDG and MMFF are deterministic at a fixed seed and one thread).

``generate_conformers`` runs that over many items: one record out per item in, in order; records that already
hold 3D coordinates (SDF with 3D, LMDB) are used as is; work goes to ``workers`` processes with a tqdm bar; each
molecule has ``config.time_limit_s`` (RDKit's own embedding timeout, and a hard kill of its worker process); results
go to the on-disk ``ConformerCache`` so a rerun does no RDKit work.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from molm_fast.data.cache import ConformerCache, cache_key
from molm_fast.data.records import MoleculeRecord, check_structure


@dataclass(frozen=True)
class ConformerConfig:
    """seed: ETKDG random seed; mmff: run MMFF94 after embedding; mmff_max_iters: its iterations (RDKit default);
    max_attempts: embedding attempts of the fallbacks (3D-MoLM: 5000); random_coords: try step 3; allow_2d: fall
    back to 2D coordinates (flagged) instead of failing; time_limit_s: per molecule."""

    seed: int = 42
    mmff: bool = True
    mmff_max_iters: int = 200
    max_attempts: int = 5000
    random_coords: bool = True
    allow_2d: bool = True
    time_limit_s: float = 60.0

    def settings(self) -> str:
        """Everything that changes the coordinates, RDKit's version included (the cache key's settings part)."""
        from rdkit import __version__ as rdkit_version

        fields = {k: v for k, v in asdict(self).items() if k != "time_limit_s"}
        return json.dumps({**fields, "rdkit": rdkit_version}, sort_keys=True)


def _params(config: ConformerConfig, deadline: float, *, attempts: int = 0, random_coords: bool = False):
    from rdkit.Chem import rdDistGeom

    p = rdDistGeom.ETKDGv3()
    p.randomSeed = int(config.seed)
    p.numThreads = 1
    p.maxIterations = int(attempts)
    p.useRandomCoords = random_coords
    p.timeout = max(1, math.ceil(deadline - time.monotonic()))  # RDKit's own limit: whole seconds per fragment
    return p


def _mmff(mol, config: ConformerConfig, warnings: list[str]) -> None:
    from rdkit.Chem import AllChem

    if not config.mmff:
        return
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        warnings.append("MMFF94 has no parameters for this molecule: ETKDG geometry kept")
        return
    AllChem.MMFFOptimizeMolecule(mol, maxIters=config.mmff_max_iters)


def embed_molecule(mol, config: ConformerConfig = ConformerConfig()) -> dict[str, Any]:
    """Embed an RDKit molecule (H-free or not) -> {"status", "reason", "atoms", "coordinates" [n, 3] float32 with
    H, "source", "warnings"}. Never raises for chemistry failures: a failure comes back with status "failed"."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    warnings: list[str] = []
    deadline = time.monotonic() + config.time_limit_s
    heavy = Chem.RemoveHs(mol)
    mol_h = Chem.AddHs(heavy)
    source = ""
    if AllChem.EmbedMolecule(mol_h, _params(config, deadline)) == 0:
        source = "etkdg"
    elif time.monotonic() < deadline:
        tmp = Chem.Mol(heavy)
        if AllChem.EmbedMolecule(tmp, _params(config, deadline, attempts=config.max_attempts)) == 0:
            mol_h, source = Chem.AddHs(tmp, addCoords=True), "etkdg_no_h"
        elif config.random_coords and time.monotonic() < deadline and AllChem.EmbedMolecule(
                mol_h, _params(config, deadline, attempts=config.max_attempts, random_coords=True)) == 0:
            source = "random_coords"
    timed_out = not source and time.monotonic() >= deadline
    if source:
        _mmff(mol_h, config, warnings)
    elif config.allow_2d:
        return _flat(mol_h, config, timed_out)
    elif timed_out:
        return _timeout(config)
    else:
        return {"status": "failed", "reason": "RDKit could not embed the molecule in 3D (ETKDGv3, H-free retry, "
                f"random coordinates; {config.max_attempts} attempts)", "warnings": warnings}
    return _result(mol_h, source, warnings)


def _result(mol_h, source: str, warnings: list[str]) -> dict[str, Any]:
    atoms = [a.GetSymbol() for a in mol_h.GetAtoms()]
    xyz = mol_h.GetConformer().GetPositions().astype(np.float32)
    if not np.isfinite(xyz).all():
        return {"status": "failed", "reason": "RDKit produced non-finite coordinates", "warnings": warnings}
    return {"status": "ok", "reason": "", "atoms": atoms, "coordinates": xyz, "source": source, "warnings": warnings}


def _flat(mol, config: ConformerConfig, timed_out: bool) -> dict[str, Any]:
    """The last resort: 2D coordinates (z = 0) of the H-added molecule, flagged; a time-out says so."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol_h = Chem.AddHs(Chem.RemoveHs(mol))
    AllChem.Compute2DCoords(mol_h)
    if not timed_out:
        return _result(mol_h, "2d", [])
    result = _result(mol_h, "2d", [f"time limit of {config.time_limit_s:g} s per molecule exceeded before a 3D "
                                   "embedding"])
    return {**result, "timeout": config.time_limit_s}


def parse_smiles(smiles: str):
    """-> (mol, "") or (None, reason); the reason names what RDKit rejected."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    if not smiles.strip():
        return None, "empty SMILES"
    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        return None, f"RDKit cannot parse SMILES {smiles[:80]!r}"
    try:
        Chem.SanitizeMol(mol)
    except Exception as exc:  # RDKit raises several sanitisation exception types
        return None, f"RDKit rejects SMILES {smiles[:80]!r}: {str(exc).strip()}"
    if mol.GetNumAtoms() == 0:
        return None, "SMILES has no atoms"
    return mol, ""


def _timeout(config: ConformerConfig, smiles: str | None = None) -> dict[str, Any]:
    """Out of time: 2D coordinates when allowed (``smiles`` given: the worker was killed), else a failure."""
    if config.allow_2d and smiles is not None:
        from rdkit import Chem

        mol, _ = parse_smiles(smiles)
        if mol is not None:
            return {**_flat(mol, config, True), "canonical": Chem.MolToSmiles(mol)}
    return {"status": "failed", "reason": f"time limit of {config.time_limit_s:g} s per molecule exceeded",
            "warnings": [], "timeout": config.time_limit_s}


def _reusable(hit: dict[str, Any] | None, config: ConformerConfig) -> bool:
    """A cached time-out is reused only under a time limit no larger than the one it ran out of."""
    return hit is not None and hit.get("timeout", math.inf) >= config.time_limit_s


def conformer_from_smiles(smiles: str, config: ConformerConfig = ConformerConfig(),
                          cache: ConformerCache | None = None) -> dict[str, Any]:
    """Parse, canonicalise, look up ``cache`` by canonical SMILES, else embed. Adds "canonical" to the result."""
    from rdkit import Chem

    mol, reason = parse_smiles(smiles)
    if mol is None:
        return {"status": "failed", "reason": reason, "warnings": [], "canonical": None}
    canonical = Chem.MolToSmiles(mol)
    if cache is not None:
        hit = cache.get(cache_key("canonical", canonical, config.settings()))
        if _reusable(hit, config):
            return hit
    return {**embed_molecule(mol, config), "canonical": canonical}


# ------------------------------------------------------------------------------------------------- worker pool
def _worker_main(conn, config: ConformerConfig, cache_path: str | None) -> None:
    cache = ConformerCache(cache_path, readonly=True) if cache_path and os.path.exists(cache_path) else None
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if task is None:
            return
        conn.send((task[0], conformer_from_smiles(task[1], config, cache)))


class _Pool:
    """Worker processes fed one SMILES at a time; a worker over its time limit is killed and replaced."""

    def __init__(self, n: int, config: ConformerConfig, cache_path: str | None):
        import multiprocessing as mp

        # fork: no re-import of the caller's __main__ (scripts without a main guard work) and a fast start
        self.ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.config, self.cache_path = config, cache_path
        self.workers = [self._start() for _ in range(n)]

    def _start(self) -> dict[str, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child, self.config, self.cache_path), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "task": None, "deadline": 0.0}

    def _replace(self, i: int) -> None:
        w = self.workers[i]
        w["proc"].kill()
        w["proc"].join()
        w["conn"].close()
        self.workers[i] = self._start()

    def run(self, tasks: Sequence[tuple[int, str]], on_result) -> None:
        from multiprocessing.connection import wait

        pending = deque(tasks)
        limit = self.config.time_limit_s
        while pending or any(w["task"] is not None for w in self.workers):
            for w in self.workers:
                if w["task"] is None and pending:
                    w["task"] = pending.popleft()
                    w["deadline"] = time.monotonic() + limit
                    w["conn"].send(w["task"])
            busy = [w for w in self.workers if w["task"] is not None]
            timeout = max(0.0, min(w["deadline"] for w in busy) - time.monotonic())
            ready = wait([w["conn"] for w in busy], timeout=timeout)
            for i, w in enumerate(self.workers):
                if w["task"] is None:
                    continue
                task = w["task"]
                if w["conn"] in ready:
                    try:
                        key, result = w["conn"].recv()
                    except (EOFError, OSError):
                        result = {"status": "failed", "reason": "conformer worker process died (RDKit crash?)",
                                  "warnings": [], "transient": True}
                        self._replace(i)
                    self.workers[i]["task"] = None
                    on_result(task[0], result)
                elif time.monotonic() >= w["deadline"]:
                    self._replace(i)
                    on_result(task[0], _timeout(self.config, task[1]))

    def close(self) -> None:
        for w in self.workers:
            try:
                w["conn"].send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self.workers:
            w["proc"].join(timeout=5)
            if w["proc"].is_alive():
                w["proc"].kill()
            w["conn"].close()


# ------------------------------------------------------------------------------------------------- public entry
def _as_record(i: int, item: Any) -> MoleculeRecord:
    if isinstance(item, MoleculeRecord):
        return item
    if isinstance(item, str):
        return MoleculeRecord(index=i, id=str(i), smiles=item)
    from rdkit import Chem

    if isinstance(item, Chem.Mol):
        rec = MoleculeRecord(index=i, id=item.GetProp("_Name") if item.HasProp("_Name") and item.GetProp("_Name")
                             else str(i), smiles=Chem.MolToSmiles(item))
        if item.GetNumConformers() and item.GetConformer().Is3D():  # a 3D molecule is used as is
            rec.atoms = [a.GetSymbol() for a in item.GetAtoms()]
            rec.coordinates, rec.source = item.GetConformer().GetPositions(), "sdf"
        return rec
    raise TypeError(f"generate_conformers: items must be SMILES str, rdkit Mol or MoleculeRecord, "
                    f"got {type(item).__name__} at item {i}")


def generate_conformers(items: Sequence[str | Any | MoleculeRecord], config: ConformerConfig = ConformerConfig(), *,
                        workers: int | None = None, cache: str | os.PathLike | None = None,
                        progress: bool = True) -> list[MoleculeRecord]:
    """One ``MoleculeRecord`` per item, in order. items: SMILES strings, RDKit Mols or records from a reader.

    Records passed in are updated in place and returned as they are (keeping the index their reader gave them);
    records that are failed or already hold coordinates pass through (3D coordinates are used as is); the rest are
    embedded from their SMILES. workers: processes (None = all cores, 0 = in this process, where only RDKit's own
    timeout bounds a molecule); cache: path of a SQLite conformer cache (created if missing); progress: tqdm bar.
    """
    from tqdm import tqdm

    records = [_as_record(i, item) for i, item in enumerate(items)]
    settings = config.settings()
    todo: dict[str, list[MoleculeRecord]] = {}  # raw key -> records sharing that exact input
    smiles_of: dict[str, str] = {}
    for r in records:
        if not r.ok or r.coordinates is not None:
            check_structure(r)
            continue
        if r.smiles is None or not r.smiles.strip():
            r.fail("empty SMILES")
            continue
        raw = cache_key("raw", r.smiles, settings)
        todo.setdefault(raw, []).append(r)
        smiles_of[raw] = r.smiles
    store = ConformerCache(cache) if cache is not None else None
    hits = store.get_raw_many(list(todo)) if store is not None else {}
    hits = {raw: hit for raw, hit in hits.items() if _reusable(hit, config)}
    new: list[tuple[str, str, dict[str, Any]]] = []

    def apply(raw: str, result: dict[str, Any]) -> None:
        for r in todo[raw]:
            if result["status"] != "ok":
                r.fail(result["reason"])
                continue
            r.atoms, r.coordinates, r.source = list(result["atoms"]), result["coordinates"], result["source"]
            for w in result["warnings"]:
                r.warn(w)
            check_structure(r)

    for raw, result in hits.items():
        apply(raw, result)
    misses = [raw for raw in todo if raw not in hits]
    n_workers = (os.cpu_count() or 1) if workers is None else int(workers)
    pool = _Pool(min(n_workers, len(misses)), config, os.fspath(cache) if cache is not None else None) \
        if misses and n_workers > 0 else None  # started before tqdm's monitor thread exists
    bar = tqdm(total=len(misses), desc="conformers", unit="mol", disable=not progress or not misses)

    def on_result(raw: str, result: dict[str, Any]) -> None:
        apply(raw, result)
        if not result.get("transient"):  # never a worker crash; a failure without a canonical form by its input
            canonical = result.get("canonical")
            key = cache_key("canonical", canonical, settings) if canonical else cache_key("input", raw, settings)
            new.append((raw, key, result))
        bar.update(1)

    if pool is None:
        for raw in misses:
            on_result(raw, conformer_from_smiles(smiles_of[raw], config, store))
    else:
        try:
            pool.run([(raw, smiles_of[raw]) for raw in misses], on_result)
        finally:
            pool.close()
    bar.close()
    if store is not None:
        store.put_many(new)
        store.close()
    return records
