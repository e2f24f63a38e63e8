"""Molecule-text training data: a TSV of (CID, SMILES, description) joined with conformers in a MoleculeStore.

ChEBI-20 / PubChem324k-style TSV files (header ``CID<TAB>SMILES<TAB>description``; ChEBI-20 escapes backslashes as
``\\\\``, undone here). Conformers come from a MoleculeStore .npz whose ids are CIDs (optionally "split:CID"), or
are generated with the data helper's ``generate_conformers`` (cached on disk). Molecules without a conformer are
left out and counted in ``PairData.dropped`` (never silently).
Stage 3 also reads 3D-MoIT JSON instruction files (``load_instructions``): each item's ``input`` is the CID of a
molecule of the caption TSVs it is trained with (``load_sources``: one source per path, for the mixture sampler).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from molm_fast.data.store import MoleculeStore


@dataclass
class PairData:
    store: MoleculeStore  # molecule i of the store <-> texts[i], smiles[i], cids[i]
    texts: list[str]
    smiles: list[str]
    cids: list[str]
    dropped: list[str] = field(default_factory=list)  # CIDs without a conformer
    instructions: list[str] | None = None  # stage 3: per-item instruction (None: the caption instruction)
    tasks: list[str | None] | None = None  # stage 3: per-item task name ("Description" truncates to 64 chars)

    def __len__(self) -> int:
        return len(self.texts)


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or not {"CID", "SMILES", "description"} <= set(rows[0]):
        raise ValueError(f"read_tsv: {path} must have the header CID, SMILES, description")
    for r in rows:
        r["SMILES"] = r["SMILES"].replace("\\\\", "\\")
    return rows


def load_pairs(tsv: str | os.PathLike, *, molecules: str | os.PathLike | None = None,
               conformer_cache: str | os.PathLike | None = None, max_molecules: int | None = None,
               workers: int | None = None) -> PairData:
    """Rows of ``tsv`` that have a conformer, in file order (at most ``max_molecules`` of them)."""
    rows = read_tsv(tsv)
    if molecules is not None:
        store = MoleculeStore.load(molecules)
        where = {sid.split(":")[-1]: i for i, sid in enumerate(store.ids)}
    else:
        from molm_fast.data.conformers import generate_conformers

        take = rows if max_molecules is None else rows[:max_molecules]
        records = generate_conformers([r["SMILES"] for r in take], workers=workers, cache=conformer_cache)
        for rec, r in zip(records, take):
            rec.id = r["CID"]
        store = MoleculeStore.from_records(records)
        where = {sid: i for i, sid in enumerate(store.ids)}
    keep, picked, dropped = [], [], []
    for r in rows:
        if max_molecules is not None and len(keep) == max_molecules:
            break
        if r["CID"] in where:
            keep.append(where[r["CID"]])
            picked.append(r)
        else:
            dropped.append(r["CID"])
    return PairData(store.subset(keep), [r["description"] for r in picked], [r["SMILES"] for r in picked],
                    [r["CID"] for r in picked], dropped)


def concat_pairs(sources: Sequence[PairData]) -> PairData:
    """One PairData over several sources, in source order (stage 3 indexes into the concatenation); sources without
    instructions get the captioning instruction."""
    from molm_fast.models.llm import CAPTION_INSTRUCTION

    return PairData(MoleculeStore.concatenate([s.store for s in sources]), [t for s in sources for t in s.texts],
                    [t for s in sources for t in s.smiles], [c for s in sources for c in s.cids],
                    [c for s in sources for c in s.dropped],
                    instructions=[i for s in sources for i in (s.instructions or [CAPTION_INSTRUCTION] * len(s))],
                    tasks=[t for s in sources for t in (s.tasks or [None] * len(s))])


def load_instructions(path: str | os.PathLike, pairs: PairData) -> PairData:
    """A 3D-MoIT JSON file (``molm_fast.data.moit.read_moit_json``) as training items on the molecules of ``pairs``:
    item i's ``input`` is a CID of ``pairs`` (its conformer and SMILES come from there); its instruction, task and
    output (the target) are the item's. Items whose molecule ``pairs`` lacks are counted in ``dropped``; a
    malformed file or item raises ValueError naming it."""
    from molm_fast.data.moit import read_moit_json

    items = read_moit_json(path)
    bad = [it.reason for it in items if it.status != "ok"]
    if bad:
        raise ValueError(f"load_instructions: {path}: {bad[0]} ({len(bad)} malformed item(s))")
    return instruction_pairs(items, pairs)


def instruction_pairs(items: Sequence, pairs: PairData) -> PairData:
    """3D-MoIT items (``molm_fast.data.moit.InstructionItem``) joined by CID (``item.input``) to the molecules of
    ``pairs``; items whose molecule ``pairs`` lacks are counted in ``dropped``."""
    where = {cid: i for i, cid in enumerate(pairs.cids)}
    picked = [it for it in items if it.input in where]
    keep = [where[it.input] for it in picked]
    return PairData(pairs.store.subset(keep), [it.output for it in picked], [pairs.smiles[i] for i in keep],
                    [pairs.cids[i] for i in keep], [it.input for it in items if it.input not in where],
                    instructions=[it.instruction for it in picked], tasks=[it.task for it in picked])


def load_sources(paths: Sequence[str | os.PathLike], *, molecules: str | os.PathLike | None = None,
                 conformer_cache: str | os.PathLike | None = None, max_molecules: int | None = None
                 ) -> list[PairData]:
    """Stage 2/3 training sources, one per path in order: a TSV (CID, SMILES, description) gives captioning pairs
    (``load_pairs``); a ``.json`` gives 3D-MoIT instruction items (``load_instructions``) on the molecules of the
    TSVs in ``paths``."""
    paths = [os.fspath(p) for p in paths]
    tables = {p: load_pairs(p, molecules=molecules, conformer_cache=conformer_cache, max_molecules=max_molecules)
              for p in paths if not p.endswith(".json")}
    if not tables:
        raise ValueError(f"load_sources: a 3D-MoIT JSON names its molecules by CID; list a TSV holding them "
                         f"(CID, SMILES, description) too, got {paths}")
    every = next(iter(tables.values())) if len(tables) == 1 else concat_pairs(list(tables.values()))
    return [tables[p] if p in tables else load_instructions(p, every) for p in paths]
