"""Training presets live in the package (``molm_fast.training.config``) so ``molm-fast demo`` can import them;
this module re-exports them for the scripts in ``training/``. Presets: ``paper`` (spec 3d-molm.md §2.1-§2.2:
AdamW wd 0.05, warmup + per-epoch cosine for stages 1-2, per-step cosine for stage 3, global batches 256/128/256)
and ``tiny`` (tests, CPU demo), for stages 1, 2 and 3. Build one with ``training_config("paper", 2, **overrides)``.
"""

from molm_fast.training.config import PRESETS, TrainConfig, training_config

__all__ = ["PRESETS", "TrainConfig", "training_config"]
