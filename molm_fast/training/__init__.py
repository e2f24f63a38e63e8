"""Training of 3D-MoLM's stages (spec 3d-molm.md §2): ``train_stage1(cfg)``, ``train_stage2(cfg)`` (stage 2, or 3
with ``cfg.stage == 3``), configs ``training_config("paper" | "tiny", stage, **overrides)``.

Modules: losses (MTC/MTM/MTG), schedules (LAVIS per-epoch cosine, stage-3 per-step cosine), sampler (epoch and
3D-MoIT mixture samplers), checkpoint (atomic, trainable-only, resumable), loop (DDP / FSDP2, JSONL metrics),
packing (stage 2/3 packed sequences), data (molecule-text pairs, 3D-MoIT JSON sources), text (stage-1 tokenizer),
stage1, stage2.
Imports are lazy so ``import molm_fast.training`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"train_stage1": "molm_fast.training.stage1", "train_stage2": "molm_fast.training.stage2",
         "training_config": "molm_fast.training.config", "TrainConfig": "molm_fast.training.config",
         "load_pairs": "molm_fast.training.data", "load_sources": "molm_fast.training.data",
         "PairData": "molm_fast.training.data"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'molm_fast.training' has no attribute {name!r}")


__all__ = list(_LAZY)
