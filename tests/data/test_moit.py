"""3D-MoIT computed-property builder: upstream templates, answer strings and units; JSON format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from molm_fast.data import MoleculeRecord, merge_properties, read_chebi20_mm, read_qm9_csv, read_sdf
from molm_fast.data.moit import (
    COMPUTED_2D,
    COMPUTED_3D,
    FURTHER_INSTRUCTION,
    QUESTION_TEMPLATES,
    computed_property_items,
    read_moit_json,
    write_moit_json,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _questions(task):
    return {t.replace("[property]", task) + FURTHER_INSTRUCTION for t in QUESTION_TEMPLATES}


def test_templates_are_upstreams():
    assert len(QUESTION_TEMPLATES) == 8 and all(t.endswith(" ") for t in QUESTION_TEMPLATES)
    assert QUESTION_TEMPLATES[-1] == ("Please provide me with the [property] value of this molecule. "
                                      "Determine the [property] value of this molecule. ")


def test_rdkit_properties_of_ethanol():
    rec = MoleculeRecord(0, "702", smiles="CCO")
    items, skipped = computed_property_items([rec], seed=1)
    out = {it.task: it.output for it in items}
    assert out == {"Molecular Weight": "The Molecular Weight for the input molecule is 46.07 g/mol.",
                   "LogP": "The LogP for the input molecule is -0.00.",
                   "Topological Polar Surface Area": "The Topological Polar Surface Area for the input molecule is "
                                                     "20.23 Å²."}
    assert all(it.input == "702" and it.instruction in _questions(it.task) for it in items)
    assert "Crippen" in next(it for it in items if it.task == "LogP").warnings[0]
    assert skipped == [("702", "Complexity", "Complexity: no value given and PubChem's Complexity (Cactvs) is not "
                                             "reproducible with RDKit")]


def test_given_pubchem_values_win_and_nan_is_skipped():
    recs = read_chebi20_mm(DATA / "chebi20" / "chebi20_mm" / "test.csv")[:50]
    recs[0].properties["PUBCHEM_CACTVS_COMPLEXITY"] = "512"
    items, skipped = computed_property_items(recs, seed=0)
    first = [it for it in items if it.input == recs[0].id]
    assert [it.task for it in first] == list(COMPUTED_2D)
    assert first[1].output == "The LogP for the input molecule is 2.50." and not first[1].warnings
    assert first[2].output == "The Topological Polar Surface Area for the input molecule is 60.40 Å²."
    assert first[3].output == "The Complexity for the input molecule is 512.00."
    nan_logp = [r.id for r in recs if math.isnan(r.properties["xlogp"])]
    assert len(items) + len(skipped) == 4 * len(recs)
    assert all(it.warnings for it in items if it.task == "LogP" and it.input in nan_logp)  # RDKit stood in
    again, _ = computed_property_items(recs, seed=0)
    other, _ = computed_property_items(recs, seed=1)
    assert [i.instruction for i in again] == [i.instruction for i in items]
    assert [i.instruction for i in other] != [i.instruction for i in items]


def test_qm_properties_from_qm9_in_ev():
    recs = read_qm9_csv(DATA / "qm9" / "qm9_small.csv")[:3]
    recs[0].properties["scf_energy_ev"] = -5376.1234
    items, skipped = computed_property_items(recs, COMPUTED_3D, seed=0)
    got = {(it.input, it.task): it.output for it in items}
    assert got[("gdb_133", "HOMO")] == "The HOMO for the input molecule is -8.449 eV."
    assert got[("gdb_133", "HOMO-LUMO Gap")] == "The HOMO-LUMO Gap for the input molecule is 10.966 eV."
    assert got[("gdb_133", "SCF Energy")] == "The SCF Energy for the input molecule is -0.538 ×10^4 eV."
    assert [(i, t) for i, t, _ in skipped] == [("gdb_1702", "SCF Energy"), (recs[2].id, "SCF Energy")]


def test_failed_records_are_listed_and_bad_tasks_rejected():
    recs = [MoleculeRecord(0, "a", smiles="CC"), MoleculeRecord(1, "b").fail("empty SMILES"),
            MoleculeRecord(2, "c", smiles="C1CC")]
    items, skipped = computed_property_items(recs, ["Molecular Weight"])
    assert [it.input for it in items] == ["a"]
    assert skipped[0] == ("b", "Molecular Weight", "record failed: empty SMILES")
    assert "cannot parse SMILES" in skipped[1][2]
    with pytest.raises(ValueError, match="tasks must be among"):
        computed_property_items(recs, ["Boiling Point"])


def test_json_roundtrip_and_bad_elements(tmp_path):
    items, _ = computed_property_items([MoleculeRecord(0, "702", smiles="CCO")], seed=0)
    assert write_moit_json(tmp_path / "a.json", items) == 3
    raw = json.loads((tmp_path / "a.json").read_text())
    assert set(raw[0]) == {"instruction", "input", "output", "task"}
    back = read_moit_json(tmp_path / "a.json")
    assert [b.to_json() for b in back] == [i.to_json() for i in items]
    wrong = {"instruction": "x", "input": 5, "output": "y", "task": "LogP"}
    (tmp_path / "b.json").write_text(json.dumps([raw[0], wrong, "junk", {**raw[0], "task": "Boiling Point"}]))
    bad = read_moit_json(tmp_path / "b.json")
    assert [b.status for b in bad] == ["ok", "failed", "failed", "ok"]
    assert "['input']" in bad[1].reason and "not an object" in bad[2].reason and "unknown task" in bad[3].warnings[0]
    (tmp_path / "c.json").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_moit_json(tmp_path / "c.json")
    (tmp_path / "d.json").write_text("{\"a\": 1}")
    with pytest.raises(ValueError, match="JSON list"):
        read_moit_json(tmp_path / "d.json")


def test_qm9_mini_sdf_joined_with_its_property_csv():
    recs = read_sdf(DATA / "qm9" / "qm9_mini.sdf")
    table = read_qm9_csv(DATA / "qm9" / "qm9_mini.sdf.csv")
    assert len(table) == 21 and all(t.ok and t.smiles is None for t in table)
    assert merge_properties(recs, table) == 21
    assert all(r.source == "sdf" for r in recs)  # DFT geometries used as is
    items, skipped = computed_property_items(recs[:1], ("HOMO", "LUMO", "HOMO-LUMO Gap"))
    assert [it.output for it in items] == ["The HOMO for the input molecule is -10.550 eV.",
                                           "The LUMO for the input molecule is 3.186 eV.",
                                           "The HOMO-LUMO Gap for the input molecule is 13.736 eV."]
    assert not skipped and items[0].input == "gdb_1"
