"""The training loop on a toy task: exact resume after a kill, checkpoints, JSONL metrics, DDP on 2 gloo ranks."""

from __future__ import annotations

import json

import pytest
import torch

from molm_fast.training import checkpoint as ckpt
from molm_fast.training.config import TrainConfig
from molm_fast.training.loop import TrainTask, train
from molm_fast.training.sampler import EpochBatchSampler
from molm_fast.training.schedules import LinearWarmupCosineEpoch
from tests.training.distributed import run_distributed


class ToyModule(torch.nn.Module):
    """Dropout + a sampled index (like MTM's negatives): resume must restore the RNG to reproduce the losses."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Dropout(0.3),
                                       torch.nn.Linear(16, 1))
        self.frozen = torch.nn.Linear(6, 6).requires_grad_(False)

    def forward(self, batch):
        x, y = batch
        pred = self.net(self.frozen(x)).squeeze(-1)  # [B]
        j = torch.multinomial(torch.ones(x.shape[0]), 1)
        mse = (pred - y).square().mean()
        aux = (pred[j] - y[j]).abs().mean()
        return {"loss": mse + aux, "mse": mse, "aux": aux,
                "stats": {"molecules": x.shape[0], "real_tokens": 3 * x.shape[0], "token_slots": 4 * x.shape[0]}}


def _toy_task(world: int = 1, rank: int = 0, n: int = 40, batch_size: int = 4) -> TrainTask:
    g = torch.Generator().manual_seed(123)
    xs = torch.randn(n, 6, generator=g)
    ys = xs.sum(-1).sin()
    data = [(xs[i], ys[i]) for i in range(n)]
    torch.manual_seed(7)  # the same initial weights in every run of the test
    return TrainTask(module=ToyModule(), dataset=data, collate=lambda items: tuple(torch.stack(t) for t in zip(*items)),
                     sampler=EpochBatchSampler(n, batch_size, seed=5, rank=rank, world_size=world),
                     model_config={"toy": True})


def _cfg(tmp_path, name: str, **kw) -> TrainConfig:
    base = dict(stage=1, model="tiny", batch_size=4, grad_accum=2, max_epochs=3, init_lr=3e-2, min_lr=1e-3,
                warmup_lr=1e-3, warmup_steps=3, out_dir=str(tmp_path / name), ckpt_every=100, progress=False)
    return TrainConfig(**{**base, **kw})


def _losses(metrics_path):
    rows = [json.loads(ln) for ln in open(metrics_path)]
    return [(r["step"], r["epoch"], r["lr"], r["loss"], r["mse"], r["aux"]) for r in rows]


def test_resume_after_kill_reproduces_losses_exactly(tmp_path):
    straight = train(_cfg(tmp_path, "straight"), _toy_task())
    assert straight["steps"] == 15  # 40 samples / 4 = 10 batches per epoch, 5 steps of 2 micro-batches, 3 epochs
    # killed run: checkpoints every 4 steps, dies at step 6 (after the step-4 checkpoint, before any other)
    cfg = _cfg(tmp_path, "killed", ckpt_every=4)
    killed = train(cfg, _toy_task(), stop_after_steps=6)
    assert killed["steps"] == 6 and ckpt.latest_checkpoint(cfg.out_dir).name == "step-00000004"
    resumed = train(cfg, _toy_task(), resume=True)
    assert resumed["steps"] == 15
    a, b = _losses(straight["metrics_path"]), _losses(resumed["metrics_path"])
    assert [r[0] for r in b] == list(range(1, 16))
    assert a == b  # exact equality of every loss term and lr, step by step
    w_straight = ckpt.load_file_weights(straight["checkpoint"])
    w_resumed = ckpt.load_file_weights(resumed["checkpoint"])
    assert w_straight.keys() == w_resumed.keys() and all(torch.equal(w_straight[k], w_resumed[k])
                                                         for k in w_straight)


def test_metrics_and_checkpoint_contents(tmp_path):
    out = train(_cfg(tmp_path, "run", max_steps=7, ckpt_every=3, keep_last=2), _toy_task())
    rows = [json.loads(ln) for ln in open(out["metrics_path"])]
    assert len(rows) == 7
    for key in ("loss", "mse", "aux", "lr", "real_tokens_per_s", "molecules_per_s", "real_token_fraction",
                "peak_memory_mb"):
        assert key in rows[-1]
    assert rows[-1]["real_token_fraction"] == 0.75
    sched = LinearWarmupCosineEpoch(init_lr=3e-2, min_lr=1e-3, warmup_start_lr=1e-3, warmup_steps=3, max_epochs=3)
    assert [r["lr"] for r in rows] == [sched.lr(s // 5, s) for s in range(7)]
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert kept == ["step-00000006", "step-00000007"]  # keep_last = 2, final checkpoint always written
    weights = ckpt.load_file_weights(out["checkpoint"])
    assert set(weights) == {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}  # trainable only
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


def test_resume_rejects_other_schedule(tmp_path):
    train(_cfg(tmp_path, "a", max_steps=2), _toy_task())
    with pytest.raises(ValueError, match="schedule"):
        train(_cfg(tmp_path, "a", max_steps=4, init_lr=1e-2), _toy_task(), resume=True)


def _ddp_rank(rank: int, world: int, out_dir: str):
    cfg = TrainConfig(stage=1, model="tiny", batch_size=4, grad_accum=2, max_epochs=2, init_lr=1e-2,
                      warmup_steps=2, out_dir=out_dir, ckpt_every=2, progress=False)
    out = train(cfg, _toy_task(world, rank))
    params = torch.cat([p.detach().flatten() for p in out["module"].parameters()])
    return {"steps": out["steps"], "ckpt": str(out["checkpoint"]) if out["checkpoint"] else None, "params": params}


def test_ddp_two_gloo_ranks_train_and_checkpoint(tmp_path):
    res = run_distributed(_ddp_rank, 2, str(tmp_path / "ddp"))
    assert res[0]["steps"] == res[1]["steps"] == 4  # 40 / (4 * 2 ranks) = 5 batches per epoch -> 2 steps x 2
    assert res[0]["ckpt"] is not None and res[1]["ckpt"] is None  # rank 0 writes
    assert torch.equal(res[0]["params"], res[1]["params"])  # DDP kept the replicas identical
    rows = [json.loads(ln) for ln in open(tmp_path / "ddp" / "metrics.jsonl")]
    assert len(rows) == 4 and rows[-1]["molecules_per_s"] > 0
    assert rows[0]["real_token_fraction"] == 0.75


def _fsdp2_rank(rank: int, world: int, root: str):
    def run(out_dir: str, stop: int | None, resume: bool) -> int:
        cfg = TrainConfig(stage=2, model="tiny", batch_size=4, grad_accum=1, max_epochs=1, init_lr=1e-2,
                          warmup_steps=2, out_dir=out_dir, ckpt_every=2, progress=False, distributed="fsdp2")
        task = _toy_task(world, rank)
        task.wrap_classes = (torch.nn.Linear,)
        return train(cfg, task, resume=resume, stop_after_steps=stop)["steps"]

    # one process group: the straight run, then a run killed after step 3 (checkpoint at 2), then its resume
    return [run(f"{root}/a", None, False), run(f"{root}/b", 3, False), run(f"{root}/b", None, True)]


def test_fsdp2_two_gloo_ranks_resume_exactly(tmp_path):
    steps = run_distributed(_fsdp2_rank, 2, str(tmp_path))
    assert steps[0] == steps[1] == [5, 3, 5]  # 40 / (4 * 2) batches
    assert _losses(tmp_path / "a" / "metrics.jsonl") == _losses(tmp_path / "b" / "metrics.jsonl")
    weights = ckpt.load_file_weights(ckpt.latest_checkpoint(tmp_path / "b"))
    assert weights["net.0.weight"].shape == (16, 6)  # gathered full tensors, not shards
