"""``molm-fast demo`` (quick mode) end to end, and ``molm-fast bench`` on a random tiny model."""

from __future__ import annotations

import json

import pytest

from molm_fast import cli


@pytest.mark.slow
def test_demo_quick_trains_saves_and_uses_a_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--output", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    for stage in ("[conformers]", "[stage 1]", "[retrieval]", "[stage 2]", "[caption]", "[qa]", "[done]"):
        assert stage in printed, f"demo output lacks {stage}:\n{printed}"
    report = json.loads((out / "report.json").read_text())
    ret = report["retrieval"]
    assert ret["pairs"] == 32 and ret["fullset_chance_acc"] == pytest.approx(1 / 32)
    assert all(0.0 <= v <= 1.0 for v in (*ret["fullset"].values(), *ret["inbatch"].values()))
    assert set(report["caption"]) == {"bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor"}
    assert set(report["qa"]) <= {"Molecular Weight", "LogP", "Topological Polar Surface Area"} and report["qa"]
    # the saved model directory is what the other commands take
    inp = tmp_path / "in.smi"
    inp.write_text("CCO\nC1=CC=CC=C1\n")
    res = tmp_path / "cap.jsonl"
    assert cli.main(["caption", "--model", str(out / "model"), "--input", str(inp), "--output", str(res),
                     "--greedy", "--quiet"]) == 0
    assert [json.loads(line)["status"] for line in res.read_text().splitlines()] == ["ok", "ok"]


def test_bundled_pairs_hold_out_unseen_molecules():
    from importlib import resources

    from rdkit import Chem

    from molm_fast.data.store import MoleculeStore
    from molm_fast.inference.demo import ASSETS, asset_rows

    (_, *train), (_, *held) = asset_rows("train"), asset_rows("heldout")
    assert len(train) == 2010 and len(held) == 320
    def canonical(rows):
        return {Chem.MolToSmiles(Chem.MolFromSmiles(r[1].replace("\\\\", "\\"))) for r in rows}

    assert not {r[0] for r in train} & {r[0] for r in held}
    assert not canonical(train) & canonical(held)
    with resources.as_file(resources.files("molm_fast").joinpath("assets", ASSETS["train_conformers"])) as npz:
        store = MoleculeStore.load(npz)
    assert [i.split(":")[-1] for i in store.ids] == [r[0] for r in train]


def test_bench_reports_every_stage(tmp_path):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--n", "4", "--batch-size", "4", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in ("conformers_per_s", "encode_molecules_per_s", "greedy_hf_generate_tokens_per_s",
                "greedy_fast_tokens_per_s", "greedy_speedup"):
        assert report[key] > 0, key
