"""Stage 3 on 3D-MoIT JSON: instruction items joined to the caption TSV's molecules, mixed by |D|^0.25."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from molm_fast.data import MoleculeRecord
from molm_fast.data.moit import RDKIT_COMPUTABLE, computed_property_items, write_moit_json
from molm_fast.training.data import load_pairs, load_sources

HERE = Path(__file__).resolve().parent
TSV = HERE.parents[1] / ".." / "shared" / "data" / "chebi20" / "molt5" / "validation.txt"
MOLECULES = HERE / "data" / "chebi20_conformers.npz"
N = 24

pytestmark = pytest.mark.skipif(not TSV.exists() or not MOLECULES.exists(),
                                reason="needs ../shared/data/chebi20 and tests/training/data/chebi20_conformers.npz")


@pytest.fixture(scope="module")
def moit_json(tmp_path_factory):
    """Computed-property items (3D-MoIT templates) for the first 2N ChEBI molecules: half of them outside the
    N-molecule TSV source below."""
    pairs = load_pairs(TSV, molecules=MOLECULES, max_molecules=2 * N)
    records = [MoleculeRecord(index=i, id=c, smiles=s) for i, (c, s) in enumerate(zip(pairs.cids, pairs.smiles))]
    items, _ = computed_property_items(records, RDKIT_COMPUTABLE, seed=0)
    path = tmp_path_factory.mktemp("moit") / "props.json"
    write_moit_json(path, items)
    return path, items


def test_json_items_take_their_molecule_from_the_tsv(moit_json):
    path, items = moit_json
    captions, props = load_sources([str(TSV), str(path)], molecules=MOLECULES, max_molecules=N)
    assert len(captions) == N and captions.instructions is None
    inside = [it for it in items if it.input in set(captions.cids)]
    assert 0 < len(props) == len(inside) < len(items)
    assert sorted(props.dropped) == sorted(it.input for it in items if it.input not in set(captions.cids))
    where = {c: i for i, c in enumerate(captions.cids)}
    for k, it in enumerate(inside):
        i = where[it.input]
        assert (props.cids[k], props.smiles[k], props.texts[k]) == (captions.cids[i], captions.smiles[i], it.output)
        assert (props.instructions[k], props.tasks[k]) == (it.instruction, it.task)
        a, b = props.store.batch([k], layout="padded"), captions.store.batch([i], layout="padded")
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.coords, b.coords)


def test_bad_sources_raise(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "q", "input": "1", "output": "a"}]))  # no task
    with pytest.raises(ValueError, match="lacks string fields"):
        load_sources([str(TSV), str(bad)], molecules=MOLECULES, max_molecules=N)
    with pytest.raises(ValueError, match="list a TSV"):
        load_sources([str(bad)], molecules=MOLECULES)


def test_stage3_trains_on_tsv_plus_json(moit_json, tmp_path):
    from molm_fast.training.config import training_config
    from molm_fast.training.stage2 import train_stage2

    cfg = training_config("tiny", 3, train_data=f"{TSV},{moit_json[0]}", molecules=str(MOLECULES), max_molecules=N,
                          out_dir=str(tmp_path), max_steps=3, batch_size=4, grad_accum=1, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_stage2(cfg)
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(ln) for ln in open(result["metrics_path"])]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
