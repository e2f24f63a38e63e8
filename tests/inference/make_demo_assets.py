"""Build molm_fast/assets/chebi20_demo_{train,heldout}.tsv, the ChEBI-20 pairs ``molm-fast demo`` trains and
evaluates on (its README gives source, licences and selection), and chebi20_demo_train_conformers.npz, the training
molecules' conformers: the smoke test's (tests/training/data/chebi20_conformers.npz, same recipe as the demo's own
ETKDGv3 + MMFF), copied exactly (float32), compressed. Building them in the demo takes 3-4 minutes on 2 shared cores.

Selection: the smoke test's (tests/training/make_chebi_conformers.py): rows whose SMILES has at most 70 characters.
Training: every such row of the validation split (2,010: the smoke test's training pairs); held out: the first 320
such rows of the test split (the first half of the smoke test's held-out pairs; validation and test CIDs are
disjoint, and no held-out canonical SMILES occurs in training: checked here). Rows are copied unchanged.
Run: .venv/bin/python -m tests.inference.make_demo_assets
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from molm_fast.data.store import MoleculeStore
from tests.training.make_chebi_conformers import DATA, MAX_SMILES_CHARS, OUT

ASSETS = Path(__file__).resolve().parents[2] / "molm_fast" / "assets"
PICK = {"train": ("validation", None), "heldout": ("test", 320)}


def raw_rows(split: str) -> tuple[list[str], list[list[str]]]:
    with open(DATA / f"{split}.txt", newline="") as f:
        header, *rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return header, rows


def canonical(smiles: str) -> str:
    from rdkit import Chem

    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles.replace("\\\\", "\\")))


def main() -> None:
    picked = {}
    for name, (split, n) in PICK.items():
        header, rows = raw_rows(split)
        rows = [r for r in rows if len(r[1].replace("\\\\", "\\")) <= MAX_SMILES_CHARS][:n]
        picked[name] = rows
        path = ASSETS / f"chebi20_demo_{name}.tsv"
        path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
        print(f"{len(rows)} {split} rows -> {path} ({path.stat().st_size:,} bytes)")
    seen = {canonical(r[1]) for r in picked["train"]}
    clash = [r[0] for r in picked["heldout"] if canonical(r[1]) in seen]
    if clash or {r[0] for r in picked["train"]} & {r[0] for r in picked["heldout"]}:
        raise SystemExit(f"held-out molecules also in training: {clash}")
    smoke = MoleculeStore.load(OUT)
    where = {sid: i for i, sid in enumerate(smoke.ids)}
    store = smoke.subset([where[f"validation:{r[0]}"] for r in picked["train"]])
    path = ASSETS / "chebi20_demo_train_conformers.npz"
    np.savez_compressed(path, tokens=store.tokens, coords=store.coords, offsets=store.offsets,
                        record_index=store.record_index, ids=np.array(store.ids, dtype=str))
    print(f"{len(store)} conformers -> {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
