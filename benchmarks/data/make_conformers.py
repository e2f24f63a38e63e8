"""Regenerate benchmarks/data/conformers_pubchem324k.npz: real 3D conformers of a seeded sample of PubChem324k.

Run once where RDKit is installed (the GPU image has none): ``python benchmarks/data/make_conformers.py``.
Molecules: a seeded random sample (seed 0) of PubChem324k test+valid; RDKit ETKDGv3 (seed 42) + MMFF
(200 iterations), hydrogens removed afterwards, as performance.md §9.3 asks. Molecules that fail to embed are
skipped and counted (24 of 384, mostly large ones, so the sample leans small). Arrays: ``atomic_numbers``
uint8 [T], ``coords`` float32 [T, 3] (Angstrom, centred), ``offsets`` int64 [M + 1] (molecule m is rows
offsets[m]:offsets[m+1]), ``cids`` int64 [M].
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / ".." / "shared" / "data"
FILES = ["pubchem324k/test.txt", "pubchem324k/valid.txt"]


def main(count: int = 384) -> None:
    RDLogger.DisableLog("rdApp.*")
    rows = []
    for f in FILES:
        with open(SHARED / f, newline="") as fh:
            rows += list(csv.reader(fh, delimiter="\t"))[1:]
    rows = random.Random(0).sample(rows, count)
    z, xyz, offsets, cids, failed = [], [], [0], [], 0
    params = AllChem.ETKDGv3()
    params.randomSeed = 42
    for cid, smiles, *_ in rows:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        if AllChem.EmbedMolecule(mol, params) != 0:
            failed += 1
            continue
        AllChem.MMFFOptimizeMolecule(mol, maxIters=200)
        mol = Chem.RemoveHs(mol)
        pos = mol.GetConformer().GetPositions()
        z += [a.GetAtomicNum() for a in mol.GetAtoms()]
        xyz.append(pos - pos.mean(0))
        offsets.append(offsets[-1] + mol.GetNumAtoms())
        cids.append(int(cid))
    np.savez_compressed(HERE / "conformers_pubchem324k.npz", atomic_numbers=np.array(z, np.uint8),
                        coords=np.concatenate(xyz).astype(np.float32), offsets=np.array(offsets, np.int64),
                        cids=np.array(cids, np.int64), failed=np.array(failed))
    print(f"{len(cids)} molecules, {failed} failed to embed, {offsets[-1]} atoms")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
