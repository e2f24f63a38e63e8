"""The molm-fast CLI on a tiny random model: every command, bad molecules, unusable input, interrupted reruns."""

from __future__ import annotations

import json

import pytest
import torch

from molm_fast import cli
from molm_fast.inference import api

SMILES = ["CCO ethanol", "c1ccccc1O phenol", "not_a_smiles broken", "CC(=O)O acetic", "C1CC1 cyclopropane"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from molm_fast import MoLM

    d = tmp_path_factory.mktemp("model")
    MoLM("tiny").save_pretrained(d)
    return d


@pytest.fixture()
def smiles_file(tmp_path):
    p = tmp_path / "in.smi"
    p.write_text("\n".join(SMILES) + "\n")
    return p


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _caption(model_dir, inp, out, *extra):
    return cli.main(["caption", "--input", str(inp), "--output", str(out), "--model", str(model_dir), "--greedy",
                     "--quiet", *extra])


def test_caption_one_record_per_item_in_order_with_bad_molecule(model_dir, smiles_file, tmp_path):
    out = tmp_path / "out.jsonl"
    assert _caption(model_dir, smiles_file, out) == 0
    recs = _read(out)
    assert [r["index"] for r in recs] == list(range(len(SMILES)))
    assert [r["id"] for r in recs] == [s.split()[1] for s in SMILES]
    bad = recs[2]
    assert bad["status"] == "error" and "not_a_smiles" in bad["error"] and bad["answer"] is None
    for r in recs[:2] + recs[3:]:
        assert r["status"] == "ok" and isinstance(r["answer"], str) and len(r["answer"]) > 0 and "error" not in r


@pytest.mark.parametrize("problem", ["missing_input", "no_smiles_column", "empty_input", "missing_model"])
def test_unusable_input_is_a_clear_error_and_exit_2(model_dir, tmp_path, capsys, problem):
    inp, model = tmp_path / "in.csv", model_dir
    if problem == "no_smiles_column":
        inp.write_text("name,formula\nwater,H2O\n")
    elif problem == "empty_input":
        inp = tmp_path / "in.smi"
        inp.write_text("")
    elif problem == "missing_model":
        inp = tmp_path / "in.smi"
        inp.write_text("CCO\n")
        model = tmp_path / "no_model"
    code = _caption(model, inp, tmp_path / "out.jsonl")
    err = capsys.readouterr().err
    assert code == 2
    expected = {"missing_input": "does not exist", "no_smiles_column": "needs a SMILES column",
                "empty_input": "empty", "missing_model": "not a model directory"}[problem]
    assert expected in err and "Traceback" not in err


def test_interrupted_job_resumes_without_redoing_items(model_dir, smiles_file, tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    real, calls = api.caption, []

    def interrupted(model, chunk, **kw):
        calls.append([r.index for r in chunk])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the second chunk
        return real(model, chunk, **kw)

    monkeypatch.setattr(api, "caption", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _caption(model_dir, smiles_file, out, "--chunk-size", "2")
    assert [r["index"] for r in _read(out)] == [0, 1]
    with open(out, "a") as f:  # and a half-written line, as a kill during a write leaves
        f.write('{"index": 2, "id": "bro')
    calls.clear()
    monkeypatch.setattr(api, "caption", lambda model, chunk, **kw: (calls.append([r.index for r in chunk]),
                                                                     real(model, chunk, **kw))[1])
    assert _caption(model_dir, smiles_file, out, "--chunk-size", "2") == 0
    assert calls == [[2, 3], [4]]  # items 0 and 1 were not redone
    recs = _read(out)
    assert [r["index"] for r in recs] == list(range(len(SMILES)))
    assert _caption(model_dir, smiles_file, out) == 0 and calls == [[2, 3], [4]]  # all done: nothing to do
    assert len(_read(out)) == len(SMILES)


def test_rerun_refuses_output_of_another_input(model_dir, smiles_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"index": 0, "id": "something_else", "status": "ok", "answer": "x"}) + "\n")
    assert _caption(model_dir, smiles_file, out) == 2
    assert "another input" in capsys.readouterr().err


def test_qa_with_question_column_and_property_task(model_dir, tmp_path):
    inp = tmp_path / "q.csv"
    inp.write_text("id,smiles,question\nm1,CCO,What is the LogP of this molecule?\nm2,C1=CC=CC=C1,What is the LogP?\n"
                   "m3,[Xx],What is the LogP?\n")
    out = tmp_path / "qa.jsonl"
    code = cli.main(["qa", "--input", str(inp), "--output", str(out), "--model", str(model_dir), "--task", "LogP",
                     "--greedy", "--quiet", "--chunk-size", "1"])  # later chunks keep their items' questions
    assert code == 0
    recs = _read(out)
    assert [r["id"] for r in recs] == ["m1", "m2", "m3"]
    assert [r["status"] for r in recs] == ["ok", "ok", "error"]
    assert all(isinstance(r["answer"], str) for r in recs[:2])


def test_qa_without_question_is_a_usage_error(model_dir, smiles_file, tmp_path, capsys):
    code = cli.main(["qa", "--input", str(smiles_file), "--output", str(tmp_path / "o.jsonl"), "--model",
                     str(model_dir), "--quiet"])
    assert code == 2 and "--question" in capsys.readouterr().err


def test_eval_caption_writes_the_six_metrics(model_dir, tmp_path):
    inp = tmp_path / "pairs.tsv"
    inp.write_text("CID\tSMILES\tdescription\n1\tCCO\tThe molecule is ethanol.\n2\tCC(=O)O\tThe molecule is an acid.\n")
    out = tmp_path / "metrics.json"
    code = cli.main(["eval", "--input", str(inp), "--output", str(out), "--model", str(model_dir), "--task",
                     "caption", "--metric-tokenizer", "llm", "--greedy", "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["evaluated"] == 2
    assert set(report["metrics"]) == {"bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor"}
    assert all(0.0 <= v <= 100.0 for v in report["metrics"].values())


def test_eval_caption_needs_an_explicit_metric_tokenizer(model_dir, tmp_path, capsys):
    inp = tmp_path / "pairs.tsv"
    inp.write_text("CID\tSMILES\tdescription\n1\tCCO\tThe molecule is ethanol.\n")
    code = cli.main(["eval", "--input", str(inp), "--output", str(tmp_path / "m.json"), "--model", str(model_dir),
                     "--quiet"])
    assert code == 2 and "--metric-tokenizer" in capsys.readouterr().err


def test_convert_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["convert", "--checkpoint", str(tmp_path / "none.ckpt"), "--output", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_api_accepts_rdkit_mols_and_sdf(model_dir, tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from molm_fast import MoLM

    model = MoLM.from_pretrained(model_dir)
    mol = Chem.AddHs(Chem.MolFromSmiles("CCN"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    sdf = tmp_path / "m.sdf"
    with Chem.SDWriter(str(sdf)) as w:
        w.write(mol)
    a = api.caption(model, [mol, "CCN"], greedy=True)
    b = api.caption(model, sdf, greedy=True)
    assert [r.status for r in a] == ["ok", "ok"] and [r.status for r in b] == ["ok"]
    assert all(isinstance(r.answer, str) and r.answer for r in a + b)
    assert api.caption(model, [], greedy=True) == []


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
    """A tiny stage-1 model directory with its Q-Former text tokenizer, as training writes it."""
    from molm_fast.models import MoLM, get_config
    from molm_fast.training.text import build_wordpiece_tokenizer

    d = tmp_path_factory.mktemp("stage1")
    tok = build_wordpiece_tokenizer(["The molecule is an alcohol.", "The molecule is an acid.", "A phenol."] * 4,
                                    vocab_size=120)
    cfg = get_config("tiny").stage1()
    cfg.qformer.vocab_size, cfg.qformer.dec_token_id = len(tok), tok.bos_token_id
    MoLM(cfg).save_pretrained(d)
    tok.save_pretrained(d / "qformer_tokenizer")
    return d


def test_embed_and_retrieve(stage1_dir, smiles_file, tmp_path):
    import numpy as np

    emb = tmp_path / "emb"
    assert cli.main(["embed", "--input", str(smiles_file), "--output", str(emb), "--model", str(stage1_dir),
                     "--quiet"]) == 0
    feats = np.load(emb / "molecule-00000.npy")
    status = _read(emb / "molecule-00000.jsonl")
    assert feats.shape[0] == len(SMILES) and [s["status"] for s in status].count("error") == 1
    assert np.isnan(feats[2]).all() and np.isfinite(np.delete(feats, 2, 0)).all()
    texts = tmp_path / "texts.txt"
    texts.write_text("The molecule is an alcohol.\nThe molecule is an acid.\nA phenol.\n")
    out = tmp_path / "ret.jsonl"
    assert cli.main(["retrieve", "--input", str(smiles_file), "--texts", str(texts), "--output", str(out),
                     "--model", str(stage1_dir), "--top-k", "2", "--quiet"]) == 0
    recs = _read(out)
    assert [r["status"] for r in recs] == ["ok", "ok", "error", "ok", "ok"]
    for r in recs[:2] + recs[3:]:
        assert len(r["top"]) == 2 and r["top"][0]["score"] >= r["top"][1]["score"]
        assert r["answer"] == texts.read_text().splitlines()[r["top"][0]["text_index"]]


def test_eval_retrieval_and_stage2_model_refused(stage1_dir, model_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("CID\tSMILES\tdescription\n1\tCCO\tThe molecule is an alcohol.\n2\tCC(=O)O\tThe molecule is an "
                     "acid.\n3\tc1ccccc1O\tA phenol.\n")
    out = tmp_path / "m.json"
    assert cli.main(["eval", "--task", "retrieval", "--input", str(pairs), "--output", str(out), "--model",
                     str(stage1_dir), "--quiet"]) == 0
    m = json.loads(out.read_text())["metrics"]
    assert m["pairs"] == 3 and m["fullset_chance_acc"] == pytest.approx(1 / 3)
    assert 0.0 <= m["fullset"]["m2t_acc"] <= 1.0 and m["inbatch"]["t2m_rec20"] == 1.0  # 3 candidates < 20
    assert cli.main(["embed", "--input", str(pairs), "--output", str(tmp_path / "e"), "--model", str(model_dir),
                     "--quiet"]) == 2
    assert "stage-1 model" in capsys.readouterr().err


def test_convert_released_layout_checkpoint_then_caption(tmp_path, smiles_file):
    """A Lightning checkpoint in the released layout (prefix blip2opt., trainable tensors only, bf16) of the tiny
    preset -> a model directory the other commands take."""
    from molm_fast import MoLM

    src = MoLM("tiny")
    sd = {f"blip2opt.{k.removeprefix('qformer.').removeprefix('llm.')}": v.to(torch.bfloat16)
          for k, v in src.state_dict().items() if k.startswith("qformer.") or "lora_" in k}
    ckpt = tmp_path / "stage2.ckpt"
    torch.save({"state_dict": sd, "epoch": 9}, ckpt)
    out = tmp_path / "converted"
    assert cli.main(["convert", "--checkpoint", str(ckpt), "--output", str(out), "--config", "tiny"]) == 0
    got = MoLM.from_pretrained(out).state_dict()
    for k, v in src.state_dict().items():
        if k.startswith("qformer.") or "lora_" in k:
            assert torch.equal(got[k], v.to(torch.bfloat16).float()), k
    res = tmp_path / "cap.jsonl"
    assert _caption(out, smiles_file, res) == 0 and len(_read(res)) == len(SMILES)
