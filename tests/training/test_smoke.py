"""Real smoke run on ChEBI-20 (tiny config, CPU): stage 1 then stage 2, losses drop, retrieval beats chance.

Training: 384 validation-split pairs; evaluation: test-split pairs (conformers precomputed by
make_chebi_conformers.py, committed as data/chebi20_conformers.npz). Retrieval is asserted on the training pairs
(in-batch, B = 32, chance 1/32) at > 4x chance: with a random 2-layer Uni-Mol and a random text encoder, a CPU
minute of training aligns the pairs it saw far above chance (7x in our runs) but generalises weakly (held-out
~2.5x chance in our runs), so held out only > 1.25x chance is asserted (binomial noise over 192 pairs).
Also: a stage-1 checkpoint loads with MoLM.from_pretrained, and resuming stage 2 after a kill reproduces its losses
exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from molm_fast.training.config import training_config
from molm_fast.training.data import load_pairs

HERE = Path(__file__).resolve().parent
CHEBI = HERE.parents[1] / ".." / "shared" / "data" / "chebi20" / "molt5"
MOLECULES = HERE / "data" / "chebi20_conformers.npz"

pytestmark = pytest.mark.skipif(not (CHEBI / "validation.txt").exists() or not MOLECULES.exists(),
                                reason="needs ../shared/data/chebi20 and tests/training/data/chebi20_conformers.npz")


def _rows(path):
    return [json.loads(ln) for ln in open(path)]


@pytest.fixture(scope="module")
def chebi():
    train = load_pairs(CHEBI / "validation.txt", molecules=MOLECULES, max_molecules=384)
    test = load_pairs(CHEBI / "test.txt", molecules=MOLECULES)
    assert len(train) == 384 and len(test) >= 150
    return train, test


@pytest.fixture(scope="module")
def stage1_run(chebi, tmp_path_factory):
    from molm_fast.training.stage1 import Stage1Step, evaluate_retrieval, train_stage1

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on 2 shared, loaded cores thrash (measured 30x slower matmuls)
    out = tmp_path_factory.mktemp("stage1")
    cfg = training_config("tiny", 1, out_dir=str(out), progress=False, ckpt_every=1000)
    result = train_stage1(cfg, train_data=chebi[0], eval_data=chebi[1])
    step = Stage1Step(result["model"], pad_token_id=result["tokenizer"].pad_token_id)
    result["train_retrieval"] = evaluate_retrieval(step, chebi[0], result["tokenizer"], cfg)
    yield result
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_stage1_losses_drop_and_retrieval_beats_chance(stage1_run):
    rows = _rows(stage1_run["metrics_path"])
    def mean(term, part):
        return sum(r[term] for r in part) / len(part)

    assert len(rows) == 144  # 6 epochs x 24 batches of 16
    first, last = rows[:5], rows[-5:]
    assert mean("loss", last) < 0.8 * mean("loss", first), (mean("loss", first), mean("loss", last))
    assert mean("mtg", last) < 0.8 * mean("mtg", first), (mean("mtg", first), mean("mtg", last))
    assert mean("mtc", last) < mean("mtc", first) - 0.2, (mean("mtc", first), mean("mtc", last))
    seen, held_out = stage1_run["train_retrieval"], stage1_run["retrieval"]
    assert seen["pairs"] == 384 and held_out["pairs"] >= 160
    both = (seen["g2t_acc"] + seen["t2g_acc"]) / 2
    assert both > 4 * seen["chance"], f"training pairs {seen}; held-out {held_out}"
    both = (held_out["g2t_acc"] + held_out["t2g_acc"]) / 2
    assert both > 1.25 * held_out["chance"], f"held-out {held_out}; training pairs {seen}"


@pytest.mark.slow
def test_stage1_checkpoint_loads_with_from_pretrained(stage1_run):
    from molm_fast.models import MoLM

    loaded = MoLM.from_pretrained(stage1_run["checkpoint"])
    trained = stage1_run["model"].state_dict()
    own = loaded.state_dict()
    assert set(own) == set(trained)
    assert all(torch.equal(own[k], trained[k]) for k in own)


@pytest.mark.slow
def test_stage2_after_stage1_losses_drop_and_resume_exactly(stage1_run, chebi, tmp_path):
    from molm_fast.training.stage2 import train_stage2

    train, test = chebi
    kw = dict(init_from=str(stage1_run["out_dir"] / "model"), max_steps=24, progress=False)
    straight = train_stage2(training_config("tiny", 2, out_dir=str(tmp_path / "a"), **kw), train_data=train,
                            eval_data=test)
    rows = _rows(straight["metrics_path"])
    # the tiny LLM is random and frozen (only LoRA, the Q-Former and llm_proj learn): from ln(vocab) = 5.28 the
    # character-level loss falls ~0.3 nats in 24 steps in our runs
    first, last = sum(r["loss"] for r in rows[:4]) / 4, sum(r["loss"] for r in rows[-4:]) / 4
    assert last < first - 0.15, (first, last)
    assert straight["eval_loss_after"] < straight["eval_loss_before"] - 0.1, straight
    assert all(0 < r["real_token_fraction"] <= 1 for r in rows) and rows[-1]["real_token_fraction"] == 1.0  # packed
    cfg = training_config("tiny", 2, out_dir=str(tmp_path / "b"), ckpt_every=10, **kw)
    train_stage2(cfg, train_data=train, stop_after_steps=13)
    resumed = train_stage2(cfg, train_data=train, resume=True)
    key = ("step", "lr", "loss")
    assert [tuple(r[k] for k in key) for r in _rows(resumed["metrics_path"])] == [tuple(r[k] for k in key)
                                                                                 for r in rows]
