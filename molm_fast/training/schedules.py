"""Learning-rate schedules of 3D-MoLM (spec 3d-molm.md §2.2).

Stages 1-2: LAVIS ``LinearWarmupCosineLRScheduler``, set before every training step from (epoch, global_step):
  epoch 0:  lr = min(init_lr, warmup_lr + (init_lr - warmup_lr) * step / max(warmup_steps, 1))
  epoch e>0: lr = (init_lr - min_lr) * 0.5 * (1 + cos(pi * e / max_epochs)) + min_lr   (constant within the epoch)
  with warmup_steps = min(batches per epoch, configured warmup) -- warmup never outlasts epoch 0.
Stage 3: per optimizer step; step <= warmup_steps: the same linear warmup; after that
  lr = (init_lr - min_lr) * 0.5 * (1 + cos(pi * step / max_steps)) + min_lr, with the RAW step (not
  step - warmup_steps): upstream's quirk, a small jump at warmup_steps + 1.
``global_step`` counts optimizer steps already taken (0 for the first one), as Lightning's does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


def warmup_lr(step: int, warmup_steps: int, warmup_start_lr: float, init_lr: float) -> float:
    return min(init_lr, warmup_start_lr + (init_lr - warmup_start_lr) * step / max(warmup_steps, 1))


def cosine_lr(t: float, t_max: float, init_lr: float, min_lr: float) -> float:
    return (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / t_max)) + min_lr


@dataclass
class LinearWarmupCosineEpoch:
    """Stages 1-2 (LAVIS). ``warmup_steps`` must already be min(batches per epoch, configured warmup)."""

    init_lr: float = 1e-4
    min_lr: float = 5e-6
    warmup_start_lr: float = 1e-6
    warmup_steps: int = 1000
    max_epochs: int = 50

    def lr(self, epoch: int, global_step: int) -> float:
        if epoch == 0:
            return warmup_lr(global_step, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return cosine_lr(epoch, self.max_epochs, self.init_lr, self.min_lr)


@dataclass
class LinearWarmupCosineStep:
    """Stage 3 (3D-MoLM ``blip2_stage3.py``): per-step cosine on the raw step."""

    init_lr: float = 1e-5
    min_lr: float = 1e-8
    warmup_start_lr: float = 1e-6
    warmup_steps: int = 1000
    max_steps: int = 40000

    def lr(self, epoch: int, global_step: int) -> float:
        if global_step <= self.warmup_steps:
            return warmup_lr(global_step, self.warmup_steps, self.warmup_start_lr, self.init_lr)
        return cosine_lr(global_step, self.max_steps, self.init_lr, self.min_lr)


Schedule = LinearWarmupCosineEpoch | LinearWarmupCosineStep


def make_schedule(kind: str, **kwargs) -> Schedule:
    if kind == "epoch_cosine":
        return LinearWarmupCosineEpoch(**kwargs)
    if kind == "step_cosine":
        return LinearWarmupCosineStep(**kwargs)
    raise ValueError(f"make_schedule: kind must be 'epoch_cosine' or 'step_cosine', got {kind!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def schedule_state(schedule: Schedule) -> dict:
    """The schedule is a pure function of (epoch, step); its state is its parameters (checked on resume)."""
    return {"kind": "epoch_cosine" if isinstance(schedule, LinearWarmupCosineEpoch) else "step_cosine",
            **asdict(schedule)}
