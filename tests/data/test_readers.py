"""Readers on every real file in shared/data, and on small bad files the tests write."""

from __future__ import annotations

import gzip
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from molm_fast.data import (
    HARTREE_TO_EV,
    MoleculeRecord,
    MoleculeStore,
    featurize_reference,
    read_chebi20_mm,
    read_lmdb,
    read_pubchemqc_gap,
    read_qm9_csv,
    read_sdf,
    read_smiles,
    read_table,
    read_text_pairs,
    write_lmdb,
)
from molm_fast.data.conformers import parse_smiles

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.mark.parametrize("path,rows", [("chebi20/molt5/test.txt", 3300), ("chebi20/molt5/validation.txt", 3301),
                                       ("pubchem324k/test.txt", 2000), ("pubchem324k/valid.txt", 1000),
                                       ("pcdes/test.txt", 3000), ("pcdes/validation.txt", 1500)])
def test_text_pairs_real_files(path, rows):
    recs = read_text_pairs(DATA / path)
    assert len(recs) == rows and all(r.ok and r.smiles and r.properties["description"] for r in recs)
    assert not any(r.warnings for r in recs)  # CIDs are unique within each split
    assert not any("\\\\" in r.smiles for r in recs)


def test_chebi20_backslashes_are_unescaped():
    recs = read_text_pairs(DATA / "chebi20" / "molt5" / "test.txt")
    first = recs[0]
    assert first.id == "5354212" and "[C@]\\4([C@H]3CC/C4=C/C(=O)OC)C" in first.smiles
    assert sum("\\" in r.smiles for r in recs) == 484  # SOURCES.md: 484 test rows carry a backslash
    mol, reason = parse_smiles(first.smiles)
    assert mol is not None, reason


def test_pcdes_unparsable_smiles_is_reported_not_dropped():
    recs = read_text_pairs(DATA / "pcdes" / "test.txt")
    bad = [r.id for r in recs if parse_smiles(r.smiles)[0] is None]
    assert bad == ["12072"]


def test_chebi20_mm_csv():
    recs = read_chebi20_mm(DATA / "chebi20" / "chebi20_mm" / "test.csv")
    assert len(recs) == 3297 and all(r.ok for r in recs)
    assert recs[0].properties["polararea"] == 60.4 and recs[0].properties["xlogp"] == 2.5
    assert sum(math.isnan(r.properties["xlogp"]) for r in recs) == 3297 - 3098


def test_qm9_hartree_to_ev_and_duplicates():
    recs = read_qm9_csv(DATA / "qm9" / "qm9_small.csv")
    assert len(recs) == 14862 and all(r.ok for r in recs)
    assert sum(bool(r.warnings) for r in recs) == 147  # 147 repeated mol_ids, each noted, none dropped
    r = recs[0]
    assert r.id == "gdb_133" and r.smiles == "CCCCC" and r.properties["homo"] == -0.3105
    assert r.properties["homo_ev"] == pytest.approx(-0.3105 * 27.211386, rel=1e-7)
    assert r.properties["gap_ev"] == pytest.approx(0.403 * HARTREE_TO_EV)
    gaps = np.array([x.properties["gap_ev"] - (x.properties["lumo_ev"] - x.properties["homo_ev"]) for x in recs])
    assert np.abs(gaps).max() < 1.01e-4 * HARTREE_TO_EV  # the csv rounds to 1e-4 Hartree
    failed = read_qm9_csv(DATA / "qm9" / "qm9_small.csv", on_duplicate="fail")
    assert sum(not x.ok for x in failed) == 147 and "duplicate id" in next(x for x in failed if not x.ok).reason


def test_pubchemqc_gap_csv():
    recs = read_pubchemqc_gap(DATA / "pubchemqc_iqspr" / "qspr_data.csv")
    assert len(recs) == 16674 and all(r.ok for r in recs)
    methane = next(r for r in recs if r.id == "297")
    assert methane.smiles == "C" and methane.properties["gap_ev"] == pytest.approx(13.79, abs=0.01)


def test_sdf_3d_used_as_is():
    recs = read_sdf(DATA / "qm9" / "qm9_mini.sdf")
    assert [r.id for r in recs] == [f"gdb_{i}" for i in range(1, 22)]
    assert all(r.ok and r.source == "sdf" and r.coordinates.shape == (len(r.atoms), 3) for r in recs)
    cid1 = read_sdf(DATA / "3d-molm" / "Conformer3D_COMPOUND_CID_1.sdf")[0]
    assert cid1.id == "1" and len(cid1.atoms) == 31 and cid1.properties["PUBCHEM_COMPOUND_CID"] == "1"
    assert cid1.smiles == "CC(=O)O[C@@H](CC(=O)[O-])C[N+](C)(C)C"
    text = (DATA / "3d-molm" / "Conformer3D_COMPOUND_CID_1.sdf").read_text().splitlines()
    x0 = [float(v) for v in text[4].split()[:3]]
    np.testing.assert_allclose(cid1.coordinates[0], x0, atol=1e-4)  # the file's own coordinates


def test_zipped_2d_sdf(tmp_path):
    recs = read_sdf(DATA / "chebi20" / "text2mol_sdf" / "val.sdf.zip")
    assert len(recs) == 3301 and all(r.ok and r.coordinates is None for r in recs)
    assert all("2D" in r.warnings[0] for r in recs)
    assert recs[0].properties["PUBCHEM_COMPOUND_CID"] == recs[0].id


def _write_sdf_cases(tmp_path: Path) -> Path:
    good = (DATA / "conformers" / "3d-molt5_example_CID101399.sdf").read_text()
    nan = good.replace(good.splitlines()[4][:10], "       nan", 1)
    garbage = "bad\n  junk\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nthis is not a molblock\nM  END\n$$$$\n"
    truncated = "\n".join(good.splitlines()[:12]) + "\n"
    path = tmp_path / "cases.sdf"
    path.write_text(good + nan + garbage + good + truncated)
    return path


def test_bad_sdf_records_fail_alone(tmp_path):
    recs = read_sdf(_write_sdf_cases(tmp_path))
    assert [r.status for r in recs] == ["ok", "failed", "failed", "ok", "failed"]
    assert "cannot read SDF record 2" in recs[1].reason  # RDKit refuses a "nan" coordinate field
    assert "cannot read SDF record 3" in recs[2].reason
    assert "truncated" in recs[4].reason
    assert "duplicate id" in recs[3].warnings[-1]
    gz = tmp_path / "cases.sdf.gz"
    gz.write_bytes(gzip.compress(_write_sdf_cases(tmp_path).read_bytes()))
    assert [r.status for r in read_sdf(gz)] == [r.status for r in recs]
    z = tmp_path / "none.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "x")
    with pytest.raises(ValueError, match="no .sdf member"):
        read_sdf(z)


def test_empty_files_and_bad_rows(tmp_path):
    for reader, name in [(read_smiles, "a.smi"), (read_sdf, "a.sdf"), (read_text_pairs, "a.tsv")]:
        (tmp_path / name).write_text("")
        with pytest.raises(ValueError, match="empty"):
            reader(tmp_path / name)
    (tmp_path / "h.tsv").write_text("CID\tSMILES\tdescription\n")
    with pytest.raises(ValueError, match="empty"):
        read_text_pairs(tmp_path / "h.tsv")
    (tmp_path / "b.tsv").write_text("CID\tSMILES\tdescription\n1\tCCO\tok\n\n2\tCC\n3\t\tno smiles\n1\tCO\tdup\n")
    recs = read_text_pairs(tmp_path / "b.tsv")
    assert [r.status for r in recs] == ["ok", "failed", "failed", "failed", "ok"]
    assert "empty" in recs[1].reason and "2 fields, expected 3" in recs[2].reason and "empty SMILES" in recs[3].reason
    assert "duplicate id '1'" in recs[4].warnings[0]
    (tmp_path / "c.tsv").write_text("ID\tSMILES\n1\tC\n")
    with pytest.raises(ValueError, match="lacks columns"):
        read_text_pairs(tmp_path / "c.tsv")
    (tmp_path / "s.smi").write_text("CCO ethanol\n\nC1CC ring\nO\n")
    recs = read_smiles(tmp_path / "s.smi")
    assert [(r.id, r.status) for r in recs] == [("ethanol", "ok"), ("1", "failed"), ("ring", "ok"), ("3", "ok")]


def test_lmdb_roundtrip_and_pubchemqc_layout(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    src = read_sdf(DATA / "qm9" / "qm9_mini.sdf")[:5]
    src[0].properties["description"] = "The molecule is methane.\n"
    assert write_lmdb(tmp_path / "p.lmdb", src + [MoleculeRecord(9, "x").fail("no structure")]) == 5
    back = read_lmdb(tmp_path / "p.lmdb")
    assert sorted(r.id for r in back) == sorted(r.id for r in src)
    by_id = {r.id: r for r in back}
    for r in src:
        b = by_id[r.id]
        assert b.ok and b.source == "lmdb" and b.atoms == r.atoms and np.array_equal(b.coordinates, r.coordinates)
        assert np.array_equal(featurize_reference(b.atoms, b.coordinates)[0], featurize_reference(r.atoms,
                                                                                                  r.coordinates)[0])
    assert by_id["gdb_1"].properties["description"] == "The molecule is methane.\n"
    # PubChemQC layout, a bad pickle, a record without atoms, several conformers
    env = lmdb.open(str(tmp_path / "q.lmdb"), subdir=False, map_size=1 << 24)
    xyz = [np.random.default_rng(0).normal(size=(3, 3)) for _ in range(4)]
    with env.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps({"cid": "702", "coordinates_list": xyz, "smi": "CCO", "atoms": ["C", "C", "O"]}))
        txn.put(b"1", b"not a pickle")
        txn.put(b"2", pickle.dumps({"cid": "1", "coordinates_list": xyz}))
        txn.put(b"3", pickle.dumps({"atoms": ["C"], "coordinates": [np.array([[0.0, 0.0, np.inf]])]}))
    env.close()
    recs = read_lmdb(tmp_path / "q.lmdb", conformer="random", seed=3)
    assert [r.status for r in recs] == ["ok", "failed", "failed", "failed"]
    assert recs[0].smiles == "CCO" and recs[0].properties["n_conformers"] == 4
    assert any(np.array_equal(recs[0].coordinates, x.astype(np.float32)) for x in xyz)
    assert "not a pickled record" in recs[1].reason and "lacks 'atoms'" in recs[2].reason
    assert "NaN or infinity" in recs[3].reason
    assert len(MoleculeStore.from_records(recs)) == 1
    with pytest.raises(ValueError, match="not a file"):
        read_lmdb(tmp_path)


def test_read_table_detects_columns(tmp_path):
    recs = read_table(DATA / "pubchemqc_iqspr" / "qspr_data.csv")
    assert len(recs) == 16674 and recs[0].id == "1" and recs[0].properties["HOMO_LUMO_gap_eV"] == "4.3525116"
    (tmp_path / "a.tsv").write_text("Name\tSmi\tx\nethanol\tCCO\t1\nwater\tO\t2\n")
    assert [(r.id, r.smiles, r.properties["x"]) for r in read_table(tmp_path / "a.tsv")] == [("ethanol", "CCO", "1"),
                                                                                               ("water", "O", "2")]
    (tmp_path / "b.csv").write_text("smiles,y\nCC,3\n")
    assert [(r.id, r.smiles) for r in read_table(tmp_path / "b.csv")] == [("0", "CC")]
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="needs a SMILES column"):
        read_table(tmp_path / "c.csv")
