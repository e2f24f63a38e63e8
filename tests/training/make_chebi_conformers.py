"""Build tests/training/data/chebi20_conformers.npz: RDKit conformers (data helper's generate_conformers, seed 42,
MMFF) of small ChEBI-20 molecules for the training smoke test and the CPU demo.

Conformer generation runs at 1-7 molecules/s on the shared CI cores, too slow to do inside a test, so the
result is committed (a MoleculeStore .npz, 1.6 MB; ids = "split:CID"). Selection: every validation row (2,010) and
the first 640 test rows whose SMILES has at most 70 characters. ~5 minutes on one core (cached in the SQLite file
given as the first argument). Run: .venv/bin/python tests/training/make_chebi_conformers.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from molm_fast.data.conformers import ConformerConfig, generate_conformers
from molm_fast.data.store import MoleculeStore

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "chebi20" / "molt5"
OUT = Path(__file__).resolve().parent / "data" / "chebi20_conformers.npz"
PICK = {"test": 640, "validation": 5000}
MAX_SMILES_CHARS = 70


def chebi_rows(split: str) -> list[dict[str, str]]:
    with open(DATA / f"{split}.txt", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    for r in rows:
        r["SMILES"] = r["SMILES"].replace("\\\\", "\\")  # SOURCES.md: the files escape backslashes
    return rows


def main(cache: str = "/tmp/molm_fast_chebi_conformers.sqlite", workers: int = 1) -> None:
    items = []
    for split, n in PICK.items():
        rows = [r for r in chebi_rows(split) if len(r["SMILES"]) <= MAX_SMILES_CHARS][:n]
        items += [(f"{split}:{r['CID']}", r["SMILES"]) for r in rows]
    records = generate_conformers([s for _, s in items], ConformerConfig(), workers=workers, cache=cache)
    for rec, (ident, _) in zip(records, items):
        rec.id = ident
    store = MoleculeStore.from_records(records)
    OUT.parent.mkdir(exist_ok=True)
    store.save(OUT)
    print(f"{len(store)} of {len(items)} molecules -> {OUT}")


if __name__ == "__main__":
    main(*sys.argv[1:2], *(int(a) for a in sys.argv[2:3]))
