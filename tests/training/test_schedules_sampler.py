"""LR schedules (spec 3d-molm.md §2.2) at exact values; samplers: determinism, coverage, 3D-MoIT mixture weights."""

from __future__ import annotations

import math

import pytest
import torch

from molm_fast.training.sampler import EpochBatchSampler, MixtureBatchSampler
from molm_fast.training.schedules import LinearWarmupCosineEpoch, LinearWarmupCosineStep, make_schedule


def test_stage12_schedule_exact_values():
    s = LinearWarmupCosineEpoch(init_lr=1e-4, min_lr=5e-6, warmup_start_lr=1e-6, warmup_steps=1000, max_epochs=50)
    assert s.lr(0, 0) == 1e-6
    assert s.lr(0, 500) == 1e-6 + (1e-4 - 1e-6) * 0.5
    assert s.lr(0, 1000) == 1e-4 and s.lr(0, 5000) == 1e-4  # capped at init_lr after warmup, still epoch 0
    assert s.lr(1, 123) == s.lr(1, 99999) == (1e-4 - 5e-6) * 0.5 * (1 + math.cos(math.pi / 50)) + 5e-6
    assert s.lr(25, 0) == (1e-4 - 5e-6) * 0.5 + 5e-6
    assert s.lr(50, 0) == 5e-6


def test_stage3_schedule_raw_step_quirk():
    s = LinearWarmupCosineStep()  # 1e-6 -> 1e-5 over 1000 steps, cosine to 1e-8 over 40000 raw steps
    assert s.lr(0, 0) == 1e-6
    assert s.lr(0, 1000) == 1e-5
    assert s.lr(0, 1001) == (1e-5 - 1e-8) * 0.5 * (1 + math.cos(math.pi * 1001 / 40000)) + 1e-8
    assert s.lr(0, 1001) < s.lr(0, 1000)  # the jump: cosine on the raw step, not step - warmup
    assert s.lr(0, 40000) == 1e-8


def test_make_schedule_rejects_unknown():
    assert isinstance(make_schedule("step_cosine"), LinearWarmupCosineStep)
    with pytest.raises(ValueError, match="make_schedule: kind"):
        make_schedule("linear")


def test_epoch_sampler_partitions_each_epoch_across_ranks():
    n, B, W = 23, 3, 2
    samplers = [EpochBatchSampler(n, B, seed=7, rank=r, world_size=W) for r in range(W)]
    assert samplers[0].batches_per_epoch == 3
    for epoch in range(2):
        seen = [i for s in samplers for k in range(3) for i in s.batch(epoch * 3 + k)]
        assert len(seen) == len(set(seen)) == 18 and all(0 <= i < n for i in seen)
    assert samplers[0].batch(0) != samplers[0].batch(3)  # a new permutation each epoch
    again = EpochBatchSampler(n, B, seed=7, rank=0, world_size=W)
    assert [again.batch(k) for k in (4, 0, 5)] == [samplers[0].batch(k) for k in (4, 0, 5)]  # pure in k


def test_epoch_sampler_rejects_too_few_samples():
    with pytest.raises(ValueError, match="num_samples >= batch_size"):
        EpochBatchSampler(3, 2, world_size=2)


def test_mixture_sampler_weights_follow_quarter_power():
    sizes = [10_000, 160, 10]
    s = MixtureBatchSampler(sizes, 64, seed=0)
    expect = torch.tensor(sizes, dtype=torch.float64) ** 0.25
    assert torch.equal(s.probs, expect / expect.sum())
    idx = torch.tensor([i for k in range(400) for i in s.batch(k)])  # 25,600 draws
    src = torch.bucketize(idx, torch.tensor([sizes[0], sizes[0] + sizes[1]]), right=True)
    freq = torch.bincount(src, minlength=3).double() / idx.numel()
    assert (freq - s.probs).abs().max() < 0.02  # binomial sd at n = 25,600 is < 0.0032
    assert idx.min() >= 0 and idx.max() < sum(sizes)
    assert s.batch(5) == MixtureBatchSampler(sizes, 64, seed=0).batch(5)
    assert s.batch(5) != MixtureBatchSampler(sizes, 64, seed=0, rank=1).batch(5)
