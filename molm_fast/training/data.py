"""Molecule-text training data: a TSV of (CID, SMILES, description) joined with conformers in a MoleculeStore.

ChEBI-20 / PubChem324k-style TSV files (header ``CID<TAB>SMILES<TAB>description``; ChEBI-20 escapes backslashes as
``\\\\``, undone here). Conformers come from a MoleculeStore .npz whose ids are CIDs (optionally "split:CID"), or
are generated with the data helper's ``generate_conformers`` (cached on disk). Molecules without a conformer are
left out and counted in ``PairData.dropped`` (never silently).
"""

from __future__ import annotations

import csv
import os
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
