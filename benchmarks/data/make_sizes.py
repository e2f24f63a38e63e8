"""Regenerate benchmarks/data/sizes_<set>.json: heavy-atom (and all-atom) counts of the real molecules in shared/data.

Run once where RDKit is installed (the GPU image has none, so the benchmarks read these cached counts):
    python benchmarks/data/make_sizes.py
Files are read in order; MolT5-style files carry a literal '\\\\' for '\\' in SMILES (shared/data/SOURCES.md).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import rdkit
from rdkit import Chem, RDLogger

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / ".." / "shared" / "data"
SETS = {"pubchem324k": ["pubchem324k/test.txt", "pubchem324k/valid.txt"],
        "chebi20": ["chebi20/molt5/test.txt", "chebi20/molt5/validation.txt"],
        "pcdes": ["pcdes/test.txt", "pcdes/validation.txt"]}


def counts(files: list[str]) -> tuple[list[int], list[int], int]:
    heavy, all_atoms, unparsed = [], [], 0
    for f in files:
        with open(SHARED / f, newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        col = [c.strip().lower() for c in rows[0]].index("smiles")
        for row in rows[1:]:
            mol = Chem.MolFromSmiles(row[col].replace("\\\\", "\\")) if len(row) > col else None
            if mol is None:
                unparsed += 1
                continue
            heavy.append(mol.GetNumHeavyAtoms())
            all_atoms.append(Chem.AddHs(mol).GetNumAtoms())
    return heavy, all_atoms, unparsed


def main() -> None:
    RDLogger.DisableLog("rdApp.*")
    for name, files in SETS.items():
        heavy, all_atoms, unparsed = counts(files)
        doc = {"source": [f"shared/data/{f}" for f in files], "rdkit": rdkit.__version__, "unparsed": unparsed,
               "method": "RDKit MolFromSmiles (MolT5 '\\\\' -> '\\'); heavy = GetNumHeavyAtoms, all = AddHs count; "
                         "file order",
               "heavy_atoms": heavy, "all_atoms": all_atoms}
        (HERE / f"sizes_{name}.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        print(f"{name}: {len(heavy)} molecules, {unparsed} unparsed, mean heavy {sum(heavy) / len(heavy):.1f}")


if __name__ == "__main__":
    main()
