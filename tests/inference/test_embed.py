"""Embedding engine: per-item status, the reference's features, batching independence, text dynamic padding,
resume after an interruption (simulated and by killing a subprocess) with byte-identical output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from molm_fast import MoLM
from molm_fast.inference.embed import EmbedSettings, embed_molecules, embed_texts, load_embeddings
from molm_fast.models.config import tiny
from tests.utils import assert_close_to_reference

REPO = Path(__file__).resolve().parents[2]
SMILES = ["CCO", "c1ccccc1O", "not a smiles", "CC(=O)Oc1ccccc1C(=O)O", "", "CCN(CC)CC", "O=C=O", "C",
          "CCCCCCCCCCCCCC(=O)O", "C1CCCCC1N"]
BAD = {2: "RDKit cannot parse", 4: "empty SMILES"}
TEXTS = ["an alcohol", "benzene is an aromatic ring with one hydroxy group", "", "a fatty acid " * 20, "amine"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny stage-1 model (saved, for the subprocess), a WordPiece tokenizer and a warm conformer cache."""
    from molm_fast.training.text import build_wordpiece_tokenizer

    root = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    model = MoLM(tiny().stage1()).eval()
    model.save_pretrained(root / "model")
    tok = build_wordpiece_tokenizer(TEXTS * 3, vocab_size=120)
    cache = root / "conformers.sqlite"
    embed_molecules(model, SMILES, root / "warm", cache=cache, progress=False)
    return {"model": model, "tok": tok, "cache": cache, "root": root}


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_every_item_has_a_status_and_bad_ones_a_reason(env, tmp_path):
    index = embed_molecules(env["model"], SMILES, tmp_path, settings=EmbedSettings(shard_size=3, batch_size=2),
                            cache=env["cache"], progress=False)
    assert index["complete"] and index["items"] == len(SMILES) and len(index["shards"]) == 4
    feats, status = load_embeddings(tmp_path)
    assert feats.shape == (len(SMILES), 8, 32) and [s["index"] for s in status] == list(range(len(SMILES)))
    for i, s in enumerate(status):
        if i in BAD:
            assert s["status"] == "error" and BAD[i] in s["error"] and np.isnan(feats[i]).all()
        else:
            assert s["status"] == "ok" and s["error"] == ""
            assert_close_to_reference(torch.from_numpy(np.linalg.norm(feats[i], axis=-1)), torch.ones(8),
                                      name=f"feature norms of item {i}")


def test_features_match_the_reference_batch_and_ignore_batching(env, tmp_path):
    """The engine (fast backends, size buckets) == the reference model on an upstream D3Collater batch in which
    the molecule has pads (regime a); batch size 1 and 8 give the same features."""
    from molm_fast.data import collate_reference, featurize_reference, generate_conformers
    from molm_fast.ops import use_backend

    model, ok = env["model"], [i for i in range(len(SMILES)) if i not in BAD]
    one = embed_molecules(model, SMILES, tmp_path / "b1", settings=EmbedSettings(batch_size=1), cache=env["cache"],
                          progress=False)
    eight = embed_molecules(model, SMILES, tmp_path / "b8", settings=EmbedSettings(batch_size=8), cache=env["cache"],
                            progress=False)
    assert one["complete"] and eight["complete"]
    f1, f8 = load_embeddings(tmp_path / "b1")[0], load_embeddings(tmp_path / "b8")[0]
    assert_close_to_reference(torch.from_numpy(f1[ok]), torch.from_numpy(f8[ok]), name="batch 1 vs 8")
    records = generate_conformers([SMILES[i] for i in ok], cache=env["cache"], workers=0, progress=False)
    samples = [featurize_reference(r.atoms, r.coordinates) for r in records]
    compared = 0
    for j, i in enumerate(ok[:4]):  # each next to a molecule long enough that it has pads
        batch = collate_reference([samples[j], samples[int(np.argmax([len(t) for t, _ in samples]))]],
                                  pad_to_multiple=8)
        if batch.tokens.shape[1] == len(samples[j][0]):
            continue  # the longest molecule itself without a pad: regime (b), not what the engine computes
        with use_backend("reference"), torch.no_grad():
            ref = model.graph_features(model.query_states(batch.tokens, batch.coords))[0]
        assert_close_to_reference(torch.from_numpy(f8[i]), ref, name=f"engine vs reference, item {i}")
        compared += 1
    assert compared >= 3


def test_corrected_mask_runs_packed_and_matches_the_padded_reference(env, tmp_path):
    """corrected_mask: the engine's packed path (varlen encoder + varlen cross-attention) == the reference model on
    a padded batch with the corrected mask."""
    import dataclasses

    from molm_fast.data import collate_reference, featurize_reference, generate_conformers
    from molm_fast.ops import use_backend

    cfg = tiny().stage1()
    cfg.qformer = dataclasses.replace(cfg.qformer, corrected_mask=True)
    model = MoLM(cfg).eval()
    model.load_state_dict(env["model"].state_dict())
    embed_molecules(model, SMILES, tmp_path, settings=EmbedSettings(batch_size=3), cache=env["cache"], progress=False)
    feats, status = load_embeddings(tmp_path)
    ok = [i for i in range(len(SMILES)) if i not in BAD]
    assert [s["status"] == "ok" for s in status] == [i in ok for i in range(len(SMILES))]
    records = generate_conformers([SMILES[i] for i in ok], cache=env["cache"], workers=0, progress=False)
    batch = collate_reference([featurize_reference(r.atoms, r.coordinates) for r in records], pad_to_multiple=8)
    with use_backend("reference"), torch.no_grad():
        ref = model.graph_features(model.query_states(batch.tokens, batch.coords))  # [len(ok), Q, E]
    assert_close_to_reference(torch.from_numpy(feats[ok]), ref, name="packed engine vs padded reference")
    with pytest.raises(ValueError, match="packed atom states need corrected_mask"):
        env["model"].qformer(torch.zeros(5, 64), None, cu_seqlens=torch.tensor([0, 5], dtype=torch.int32),
                             max_seqlen=5)


def test_texts_dynamic_padding_equals_fixed_256(env, tmp_path):
    model, tok = env["model"], env["tok"]
    embed_texts(model, tok, TEXTS + [7], tmp_path, settings=EmbedSettings(kind="text", batch_size=2),
                progress=False)
    feats, status = load_embeddings(tmp_path)
    assert [s["status"] for s in status] == ["ok"] * 5 + ["error"] and "must be a str" in status[5]["error"]
    enc = tok(TEXTS, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.qformer.text_features(model.qformer.text_forward(enc["input_ids"], enc["attention_mask"]))
    assert_close_to_reference(torch.from_numpy(feats[:5]), ref, name="text features")


def test_interrupted_run_resumes_to_identical_files(env, tmp_path):
    settings = EmbedSettings(shard_size=2, batch_size=3)
    full = embed_molecules(env["model"], SMILES, tmp_path / "full", settings=settings, cache=env["cache"],
                           progress=False)
    part = embed_molecules(env["model"], SMILES, tmp_path / "cut", settings=settings, cache=env["cache"],
                           progress=False, max_shards=2)
    assert not part["complete"] and part["items"] == 4
    resumed = embed_molecules(env["model"], SMILES, tmp_path / "cut", settings=settings, cache=env["cache"],
                              progress=False)
    assert resumed == full
    assert _files(tmp_path / "cut") == _files(tmp_path / "full")
    with pytest.raises(ValueError, match="other settings or weights"):
        embed_molecules(env["model"], SMILES, tmp_path / "cut", settings=EmbedSettings(shard_size=3), progress=False)


KILL_SCRIPT = """
import sys, time
from molm_fast import MoLM
from molm_fast.inference.embed import EmbedSettings, embed_molecules
model = MoLM.from_pretrained(sys.argv[1]).eval()
smiles = [line.strip() for line in open(sys.argv[2])]
def slow():  # a slow input stream, so the parent can kill the run between shards
    for s in smiles:
        time.sleep(0.15)
        yield s
embed_molecules(model, slow(), sys.argv[3], settings=EmbedSettings(shard_size=2, batch_size=3), cache=sys.argv[4],
                progress=False)
"""


@pytest.mark.slow  # ~25 s on 2 busy cores: a fresh interpreter imports torch and loads the model
def test_killed_subprocess_resumes_to_identical_files(env, tmp_path):
    smiles = SMILES * 2
    (tmp_path / "in.smi").write_text("\n".join(s or "''" for s in smiles) + "\n")
    smiles = [s or "''" for s in smiles]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(env["root"] / "model"), str(tmp_path / "in.smi"),
                             str(out), str(env["cache"])], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        index = out / "index.json"
        if index.is_file() and len(json.loads(index.read_text())["shards"]) >= 2:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        raise AssertionError(f"the embedding subprocess ended (rc {proc.returncode}) before it could be killed: "
                             f"{proc.stderr.read()[-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cut = json.loads((out / "index.json").read_text())
    assert not cut["complete"] and 2 <= len(cut["shards"]) < len(smiles) // 2, cut["shards"]
    settings = EmbedSettings(shard_size=2, batch_size=3)
    embed_molecules(env["model"], smiles, out, settings=settings, cache=env["cache"], progress=False)
    embed_molecules(env["model"], smiles, tmp_path / "whole", settings=settings, cache=env["cache"], progress=False)
    assert _files(out) == _files(tmp_path / "whole")


def test_sdf_input_is_streamed(env, tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    writer = Chem.SDWriter(str(tmp_path / "in.sdf"))
    for i, smi in enumerate(["CCO", "c1ccccc1"]):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=i)
        mol.SetProp("_Name", f"mol{i}")
        writer.write(mol)
    writer.close()
    with open(tmp_path / "in.sdf", "a") as f:
        f.write("broken\n  no counts line\n$$$$\n")
    embed_molecules(env["model"], tmp_path / "in.sdf", tmp_path / "out", progress=False)
    feats, status = load_embeddings(tmp_path / "out")
    assert [s["id"] for s in status[:2]] == ["mol0", "mol1"] and [s["status"] for s in status] == ["ok", "ok", "error"]
    assert "truncated" in status[2]["error"] and np.isfinite(feats[:2]).all()
