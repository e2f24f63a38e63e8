"""Conformer generation: determinism, MMFF, the fallback ladder, time limit, cache, bad input (few small molecules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molm_fast.data import ConformerConfig, generate_conformers, read_sdf
from molm_fast.data import conformers as conf_mod

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SMALL = ["CCO", "c1ccccc1O", "CC(=O)OC(CC(=O)[O-])C[N+](C)(C)C"]


def _coords(records):
    return [r.coordinates for r in records]


def test_seeded_and_deterministic_across_processes():
    a = generate_conformers(SMALL, workers=0, progress=False)
    b = generate_conformers(SMALL, workers=0, progress=False)
    c = generate_conformers(SMALL, workers=2, progress=False)
    d = generate_conformers(SMALL, ConformerConfig(seed=7), workers=0, progress=False)
    for ra, rb, rc, rd in zip(a, b, c, d):
        assert ra.ok and ra.source == "etkdg" and ra.coordinates.dtype == np.float32
        assert np.array_equal(ra.coordinates, rb.coordinates) and np.array_equal(ra.coordinates, rc.coordinates)
        assert ra.atoms == rd.atoms and not np.array_equal(ra.coordinates, rd.coordinates)
    assert a[0].atoms == ["C", "C", "O"] + ["H"] * 6  # heavy atoms in SMILES order, then H (as RDKit AddHs)


def test_mmff_refines_the_etkdg_geometry():
    mol = Chem.AddHs(Chem.MolFromSmiles(SMALL[1]))
    raw = generate_conformers(SMALL[1:2], ConformerConfig(mmff=False), workers=0, progress=False)[0]
    opt = generate_conformers(SMALL[1:2], workers=0, progress=False)[0]
    props = AllChem.MMFFGetMoleculeProperties(mol)

    def energy(xyz):
        conf = Chem.Conformer(mol.GetNumAtoms())
        for i, p in enumerate(xyz.astype(float)):
            conf.SetAtomPosition(i, p.tolist())
        m = Chem.Mol(mol)
        m.RemoveAllConformers()
        m.AddConformer(conf)
        return AllChem.MMFFGetMoleculeForceField(m, props).CalcEnergy()

    assert energy(opt.coordinates) < energy(raw.coordinates)


@pytest.mark.parametrize("failures,source", [(1, "etkdg_no_h"), (2, "random_coords"), (3, "2d"), (3, None)])
def test_fallback_ladder(monkeypatch, failures, source):
    real = AllChem.EmbedMolecule
    calls = []

    def flaky(mol, params):
        calls.append(params.useRandomCoords)
        return -1 if len(calls) <= failures else real(mol, params)

    monkeypatch.setattr(AllChem, "EmbedMolecule", flaky)
    config = ConformerConfig(allow_2d=source is not None)
    rec = generate_conformers(["CC(C)O"], config, workers=0, progress=False)[0]
    if source is None:
        assert not rec.ok and "could not embed" in rec.reason and rec.coordinates is None
        return
    assert rec.ok and rec.source == source and len(rec.atoms) == 12
    assert calls[-1] == (source in ("random_coords", "2d"))
    if source == "2d":
        assert np.all(rec.coordinates[:, 2] == 0) and any("2D coordinates" in w for w in rec.warnings)
    else:
        assert np.ptp(rec.coordinates[:, 2]) > 0.1 and not rec.warnings


@pytest.mark.parametrize("workers", [1, 0])
def test_time_limit_gives_2d_or_fails_that_molecule_only(tmp_path, monkeypatch, workers):
    items, cache = ["C" * 150, "CCO"], tmp_path / "c.sqlite"
    strict = ConformerConfig(time_limit_s=0.3, allow_2d=False)
    recs = generate_conformers(items, strict, workers=workers, progress=False)
    assert not recs[0].ok and "time limit of 0.3 s" in recs[0].reason
    assert recs[1].ok and recs[1].index == 1 and recs[1].source == "etkdg"
    if workers == 0:
        return  # in-process: RDKit's own timeout (whole seconds) bounds the molecule; nothing is killed
    flat = generate_conformers(items, ConformerConfig(time_limit_s=0.3), workers=1, cache=cache, progress=False)
    assert flat[0].ok and flat[0].source == "2d" and np.all(flat[0].coordinates[:, 2] == 0)
    assert any("time limit of 0.3 s" in w for w in flat[0].warnings) and len(flat[0].atoms) == 452

    def forbidden(*args, **kwargs):
        raise AssertionError("RDKit work on a cached rerun")

    with monkeypatch.context() as m:  # the time-out is cached: the same limit would time out again
        m.setattr(conf_mod, "conformer_from_smiles", forbidden)
        again = generate_conformers(items, ConformerConfig(time_limit_s=0.3), workers=1, cache=cache, progress=False)
        assert again[0].warnings == flat[0].warnings and np.array_equal(again[0].coordinates, flat[0].coordinates)
    longer = generate_conformers(items, ConformerConfig(time_limit_s=0.6), workers=1, cache=cache, progress=False)
    assert any("time limit of 0.6 s" in w for w in longer[0].warnings)  # a larger limit tries again


def test_cache_rerun_does_no_rdkit_work(tmp_path, monkeypatch):
    cache = tmp_path / "conformers.sqlite"
    items = SMALL + ["not a smiles", ""]
    first = generate_conformers(items, workers=2, cache=cache, progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("RDKit work on a cached rerun")

    monkeypatch.setattr(conf_mod, "conformer_from_smiles", forbidden)
    monkeypatch.setattr(conf_mod, "parse_smiles", forbidden)
    again = generate_conformers(items, workers=2, cache=cache, progress=False)
    assert [r.status for r in again] == [r.status for r in first] == ["ok"] * 3 + ["failed"] * 2
    assert again[3].reason == first[3].reason
    assert all(np.array_equal(x, y) for x, y in zip(_coords(again[:3]), _coords(first[:3])))
    monkeypatch.undo()
    # another spelling of a cached molecule: parsed (canonical key) but never embedded
    monkeypatch.setattr(conf_mod, "embed_molecule", forbidden)
    other = generate_conformers(["OCC"], workers=0, cache=cache, progress=False)[0]
    assert other.ok and np.array_equal(other.coordinates, first[0].coordinates)
    # different settings -> a different key -> new work
    with pytest.raises(AssertionError, match="RDKit work"):
        generate_conformers(["CCO"], ConformerConfig(seed=1), workers=0, cache=cache, progress=False)


def test_bad_input_keeps_count_order_and_reasons():
    mol3d = read_sdf(DATA / "3d-molm" / "Conformer3D_COMPOUND_CID_1.sdf")[0]
    original = mol3d.coordinates.copy()
    items = ["CCO", "", "C1CC", "N(C)(C)(C)(C)C", "[H][H]", "[Pt](Cl)Cl", mol3d, "   ", Chem.MolFromSmiles("CN")]
    recs = generate_conformers(items, workers=0, progress=False)
    assert len(recs) == len(items)
    assert [r.index for i, r in enumerate(recs) if i != 6] == [i for i in range(len(items)) if i != 6]
    assert [r.status for r in recs] == ["ok", "failed", "failed", "failed", "ok", "ok", "ok", "failed", "ok"]
    assert recs[1].reason == "empty SMILES" and recs[7].reason == "empty SMILES"
    assert "cannot parse SMILES 'C1CC'" in recs[2].reason
    assert "Explicit valence" in recs[3].reason
    assert any("hydrogens only" in w for w in recs[4].warnings) and recs[4].atoms == ["H", "H"]
    assert any("[UNK]: Pt" in w for w in recs[5].warnings)
    assert recs[6] is mol3d and recs[6].source == "sdf" and np.array_equal(recs[6].coordinates, original)
    big = read_sdf(DATA / "qm9" / "qm9_mini.sdf")[:1]
    big[0].atoms = ["Xe"] * len(big[0].atoms)
    for _ in range(2):  # checks run again on records passed back in: each warning is listed once
        generate_conformers(read_sdf(DATA / "qm9" / "qm9_mini.sdf")[:1], workers=0, progress=False)
        generate_conformers(big, workers=0, progress=False)
    assert big[0].warnings == ["elements outside the Uni-Mol dictionary map to [UNK]: Xe"]
    assert recs[8].source == "etkdg"
    with pytest.raises(TypeError, match="item 0"):
        generate_conformers([42], workers=0, progress=False)


def test_nan_coordinates_from_a_molecule_fail_alone():
    mol = Chem.AddHs(Chem.MolFromSmiles("CO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    mol.GetConformer().SetAtomPosition(1, (float("nan"), 0.0, 0.0))
    recs = generate_conformers([mol, "CO"], workers=0, progress=False)
    assert not recs[0].ok and "NaN or infinity" in recs[0].reason and recs[1].ok
