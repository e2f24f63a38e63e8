"""Featurisation and collation against the upstream steps (spec §1.2), on real molecules and edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

from molm_fast.data import (
    ATOM_SYMBOLS,
    BOS,
    EOS,
    NUM_TYPES,
    PAD,
    UNK,
    BatchDataset,
    MoleculeRecord,
    MoleculeStore,
    bucket_batches,
    check_structure,
    collate_reference,
    crop_rng,
    distance_and_edge_type,
    featurize_reference,
)
from tests import utils
from tests.utils import assert_close_to_reference

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _sdf_molecules(path: Path) -> list[tuple[list[str], np.ndarray]]:
    out = []
    for m in Chem.SDMolSupplier(str(path), removeHs=False):
        out.append(([a.GetSymbol() for a in m.GetAtoms()], m.GetConformer().GetPositions()))
    return out


def _np_rng() -> np.random.Generator:
    return np.random.default_rng(utils.CURRENT_SEED)


def _synthetic(rng: np.random.Generator) -> list[tuple[list[str], np.ndarray]]:
    """Odd cases: one atom, H only, unknown elements, over 256 heavy atoms, exactly 256, mixed."""
    elems = ["C", "N", "O", "S", "Cl", "H", "H", "Pt", "Xe", "Li"]
    mols = [(["C"], rng.normal(size=(1, 3))), (["H", "H"], rng.normal(size=(2, 3))),
            (["U", "C", "H"], rng.normal(size=(3, 3))), (["H"] * 5 + ["C"] * 300, rng.normal(size=(305, 3)) * 9),
            (["N"] * 256 + ["H"] * 3, rng.normal(size=(259, 3)) * 7), (["O"] * 700, rng.normal(size=(700, 3)))]
    for _ in range(10):
        n = int(rng.integers(1, 60))
        mols.append(([str(rng.choice(elems)) for _ in range(n)], rng.normal(size=(n, 3)) * 4))
    return mols


def _records(mols) -> list[MoleculeRecord]:
    return [check_structure(MoleculeRecord(i, str(i), atoms=a, coordinates=c, source="sdf"))
            for i, (a, c) in enumerate(mols)]


def test_dictionary_is_the_3d_molm_file_plus_mask():
    symbols = (DATA / "3d-molm" / "unimol_dict.txt").read_text().split()
    assert list(ATOM_SYMBOLS) == symbols + ["[MASK]"]
    assert (NUM_TYPES, PAD, BOS, EOS, UNK, ATOM_SYMBOLS.index("C"), ATOM_SYMBOLS.index("Li")) == (31, 0, 1, 2, 3, 4, 29)


def test_cid1_features_match_the_upstream_steps():
    (atoms, xyz), = _sdf_molecules(DATA / "3d-molm" / "Conformer3D_COMPOUND_CID_1.sdf")
    tokens, coords = featurize_reference(atoms, xyz)
    heavy = [a for a in atoms if a != "H"]
    assert len(atoms) == 31 and len(heavy) == 14
    assert tokens.tolist() == [BOS] + [ATOM_SYMBOLS.index(a) for a in heavy] + [EOS]
    assert coords.dtype == np.float32 and np.all(coords[0] == 0) and np.all(coords[-1] == 0)
    assert np.abs(coords[1:-1].mean(axis=0)).max() < 1e-5  # centred on the heavy atoms
    raw = xyz[[a != "H" for a in atoms]]
    np.testing.assert_allclose(coords[1:-1], raw - raw.mean(axis=0), atol=1e-5)
    batch = collate_reference([(tokens, coords)])
    assert batch.tokens.shape == (1, 16)  # 16 tokens is already a multiple of 8
    dist, edge = distance_and_edge_type(batch.tokens, batch.coords)
    t = torch.as_tensor(tokens)
    assert torch.equal(edge[0], t[:, None] * 31 + t[None, :])
    c64 = coords.astype(np.float64)
    ref = torch.as_tensor(np.sqrt(((c64[:, None] - c64[None]) ** 2).sum(-1)).astype(np.float32))
    assert torch.equal(dist[0], ref)
    # the distance to BOS/EOS is the distance to the centroid
    np.testing.assert_allclose(dist[0, 0, 1:-1].numpy(), np.linalg.norm(raw - raw.mean(0), axis=1), rtol=1e-5)


@pytest.mark.parametrize("source", ["qm9_mini", "synthetic"])
def test_vectorised_featurisation_matches_reference(source):
    rng = _np_rng()
    mols = _sdf_molecules(DATA / "qm9" / "qm9_mini.sdf") if source == "qm9_mini" else _synthetic(rng)
    store = MoleculeStore.from_records(_records(mols))
    seed = int(rng.integers(2**31))
    order = rng.permutation(len(store))
    packed = store.batch(order, layout="packed", seed=seed)
    padded = store.batch(order, layout="padded", seed=seed)
    samples = [featurize_reference(*mols[i], rng=crop_rng(seed, i)) for i in order]
    ref = collate_reference(samples, order)
    assert torch.equal(padded.tokens, ref.tokens) and torch.equal(padded.lengths, ref.lengths)
    assert torch.equal(padded.indices, torch.as_tensor(order))
    assert padded.tokens.shape[1] % 8 == 0
    assert_close_to_reference(padded.coords, ref.coords, name="coords")
    assert packed.cu_seqlens.dtype == torch.int32 and packed.max_seqlen == int(ref.lengths.max())
    assert torch.equal(packed.tokens, torch.cat([torch.as_tensor(t) for t, _ in samples]))
    back = padded.to_packed()
    assert torch.equal(back.tokens, packed.tokens) and torch.equal(back.coords, packed.coords)
    assert torch.equal(back.cu_seqlens, packed.cu_seqlens)


def test_synthetic_edge_cases_and_warnings():
    rng = _np_rng()
    mols = _synthetic(rng)
    recs = _records(mols)
    assert "hydrogens only" in recs[1].warnings[0]
    assert "[UNK]: U" in recs[2].warnings[0]
    assert any("300 heavy atoms > 256" in w for w in recs[3].warnings)
    assert not recs[4].warnings  # exactly 256 heavy atoms: no crop
    store = MoleculeStore.from_records(recs)
    b = store.batch(range(6), seed=3)
    assert b.lengths.tolist() == [3, 4, 4, 258, 258, 258]
    assert b.tokens[1, 1:3].tolist() == [8, 8]  # H only keeps H
    assert b.tokens[2, 1:3].tolist() == [UNK, 4]  # U -> [UNK], then C; the H is removed
    assert b.tokens.shape[1] == 264


def test_crop_is_seeded_and_a_subset():
    rng = _np_rng()
    xyz = rng.normal(size=(400, 3)) * 10
    store = MoleculeStore.from_records(_records([(["C"] * 200 + ["N"] * 200, xyz)]))
    a, b = store.batch([0], seed=5), store.batch([0], seed=5)
    c = store.batch([0], seed=6)
    assert torch.equal(a.coords, b.coords) and not torch.equal(a.coords, c.coords)
    perm = crop_rng(5, 0).permutation(400)[:256]
    kept = xyz[perm].astype(np.float32)
    np.testing.assert_allclose(a.coords[0, 1:257].numpy(), kept - kept.mean(0), atol=1e-5)


def test_empty_and_single_batches():
    store = MoleculeStore.from_records(_records([(["C"], np.zeros((1, 3)))]))
    empty = store.batch([], layout="packed")
    assert len(empty) == 0 and empty.cu_seqlens.tolist() == [0]
    padded = empty.to_padded()
    assert padded.tokens.shape == (0, 0) and padded.coords.shape == (0, 0, 3)
    one = store.batch([0])
    assert one.tokens.tolist() == [[BOS, 4, EOS, 0, 0, 0, 0, 0]] and one.coords.abs().max() == 0
    with pytest.raises(ValueError, match="indices must be in"):
        store.batch([1])
    with pytest.raises(ValueError, match="layout"):
        store.batch([0], layout="ragged")


def test_distance_and_edge_type_zero_on_pads():
    rng = _np_rng()
    store = MoleculeStore.from_records(_records(_synthetic(rng)[6:]))
    batch = store.batch(range(len(store)))
    dist, edge = distance_and_edge_type(batch.tokens, batch.coords)
    for b, n in enumerate(batch.lengths.tolist()):
        t, c = batch.tokens[b, :n], batch.coords[b, :n].double()
        assert torch.equal(edge[b, :n, :n], t[:, None] * NUM_TYPES + t[None])
        assert_close_to_reference(dist[b, :n, :n], torch.cdist(c, c).float(), name="dist")
        assert dist[b, n:].abs().sum() == 0 and dist[b, :, n:].abs().sum() == 0
        assert edge[b, n:].abs().sum() == 0 and edge[b, :, n:].abs().sum() == 0
    with pytest.raises(ValueError, match="coords"):
        distance_and_edge_type(batch.tokens, batch.coords[:, :, :2])


def test_bucket_batches_partition_and_budget():
    rng = _np_rng()
    lengths = rng.integers(3, 120, size=997)
    by_size = bucket_batches(lengths, batch_size=64, seed=1)
    assert sorted(np.concatenate(by_size).tolist()) == list(range(997))
    assert all(len(b) == 64 for b in by_size if len(b) != 997 % 64)
    assert [b.tolist() for b in by_size] == [b.tolist() for b in bucket_batches(lengths, batch_size=64, seed=1)]
    by_tokens = bucket_batches(lengths, max_tokens=2048, seed=2)
    assert sorted(np.concatenate(by_tokens).tolist()) == list(range(997))
    for b in by_tokens:
        assert len(b) == 1 or len(b) * (-(-lengths[b].max() // 8) * 8) <= 2048
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in by_size])
    assert spread < 10  # buckets hold similar lengths
    with pytest.raises(ValueError, match="exactly one"):
        bucket_batches(lengths)


def test_store_roundtrip_and_dataloader(tmp_path):
    mols = _sdf_molecules(DATA / "qm9" / "qm9_mini.sdf")
    store = MoleculeStore.from_records(_records(mols))
    store.save(tmp_path / "s.npz")
    loaded = MoleculeStore.load(tmp_path / "s.npz")
    assert loaded.ids == store.ids and np.array_equal(loaded.coords, store.coords)
    batches = store.bucketed_batches(batch_size=4, seed=0)
    loader = torch.utils.data.DataLoader(BatchDataset(loaded, batches, layout="packed"), batch_size=None)
    seen = []
    for batch in loader:
        assert batch.tokens.shape[0] == int(batch.cu_seqlens[-1])
        seen += batch.indices.tolist()
    assert sorted(seen) == list(range(len(mols)))


def test_store_subset_and_concatenate():
    rng = _np_rng()
    store = MoleculeStore.from_records(_records(_synthetic(rng)))
    pick = rng.permutation(len(store))[:7]
    sub = store.subset(pick)
    assert sub.ids == [store.ids[i] for i in pick]
    for j, i in enumerate(pick):
        a, b = store.offsets[i], store.offsets[i + 1]
        assert np.array_equal(sub.coords[sub.offsets[j]:sub.offsets[j + 1]], store.coords[a:b])
        assert np.array_equal(sub.tokens[sub.offsets[j]:sub.offsets[j + 1]], store.tokens[a:b])
    both = MoleculeStore.concatenate([sub, store])
    assert len(both) == 7 + len(store) and both.ids == sub.ids + store.ids
    assert torch.equal(both.batch([7, 8]).tokens, store.batch([0, 1]).tokens)
    with pytest.raises(ValueError, match="at least one"):
        MoleculeStore.concatenate([])


@pytest.mark.gpu
def test_to_padded_on_device_matches_cpu():
    rng = _np_rng()
    store = MoleculeStore.from_records(_records(_synthetic(rng)[6:]))
    packed = store.batch(range(len(store)), layout="packed")
    cpu, dev = packed.to_padded(), packed.to("cuda").to_padded()
    assert torch.equal(dev.tokens.cpu(), cpu.tokens) and torch.equal(dev.coords.cpu(), cpu.coords)


def test_real_molecule_over_256_heavy_atoms_is_cropped():
    from molm_fast.data import read_text_pairs

    rec = next(r for r in read_text_pairs(DATA / "pubchem324k" / "test.txt") if r.id == "137528228")
    mol = Chem.AddHs(Chem.MolFromSmiles(rec.smiles))
    atoms = [a.GetSymbol() for a in mol.GetAtoms()]  # the real molecule's atoms, H included
    xyz = _np_rng().normal(size=(len(atoms), 3)) * 15  # embedding 483 heavy atoms is too slow for a unit test
    rec.atoms, rec.coordinates, rec.source = atoms, xyz, "sdf"
    check_structure(rec)
    assert "483 heavy atoms > 256" in rec.warnings[0]
    store = MoleculeStore.from_records([rec])
    seed = int(_np_rng().integers(2**31))
    batch = store.batch([0], seed=seed)
    assert batch.tokens.shape == (1, 264) and int(batch.lengths[0]) == 258
    heavy = np.array([a != "H" for a in atoms])
    keep = crop_rng(seed, 0).permutation(483)[:256]
    sym, kept = np.array(atoms)[heavy][keep], xyz[heavy][keep].astype(np.float32)
    assert batch.tokens[0, 1:257].tolist() == [ATOM_SYMBOLS.index(s) for s in sym]
    assert_close_to_reference(batch.coords[0, 1:257], torch.as_tensor(kept - kept.mean(0)), name="cropped coords")
    ref_tokens, ref_coords = featurize_reference(atoms, xyz, rng=crop_rng(seed, 0))
    assert torch.equal(batch.tokens[0, :258], torch.as_tensor(ref_tokens))
