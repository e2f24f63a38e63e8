"""Training configurations: one dataclass, presets ``paper`` (spec 3d-molm.md §2.1-§2.2) and ``tiny`` per stage.

Nothing is exec'd: a config is built from a preset and keyword overrides (``training_config("tiny", stage=1,
max_steps=50)``) or from JSON (``TrainConfig.from_dict``). Batch sizes are PER RANK; the global batch is
batch_size * grad_accum * world_size (paper: 64 x 1 x 4 = 256 for stage 1, 16 x 2 x 4 = 128 for stage 2,
8 x 8 x 4 = 256 for stage 3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainConfig:
    stage: int = 1  # 1: MTC+MTM+MTG; 2: captioning with LoRA; 3: 3D-MoIT instruction tuning
    model: str = "paper"  # molm_fast.models.config preset
    llm_path: str | None = None  # local Llama-2-7B folder (paper stages 2/3)
    bert_dir: str | None = None  # local SciBERT folder (paper stage 1: Q-Former init and tokenizer)
    init_from: str | None = None  # previous stage's checkpoint folder (stage 2 <- stage 1, stage 3 <- stage 2)
    train_data: str = ""  # TSV(s) of (CID, SMILES, description); stage 3: comma-separated, one source each
    eval_data: str | None = None
    molecules: str | None = None  # MoleculeStore .npz with the conformers (ids = CIDs, or "split:CID")
    conformer_cache: str | None = None  # SQLite conformer cache when conformers are generated
    max_molecules: int | None = None  # use the first n training molecules (demo, tests)
    text_max_length: int = 256  # stage 1 SciBERT tokens; stage 2: 320, stage 3: 384 Llama tokens
    text_padding: str = "longest"  # "longest" (fast, same math) or "max_length" (reference)
    packing: bool = True  # stages 2/3: pack the micro-batch into one row, attention kept inside each sample
    liger: bool = True  # stages 2/3 on CUDA: Liger-Kernel fused RMSNorm/RoPE/SwiGLU/linear-CE when installed
    cache_encoder: bool = False  # stage 1: keep frozen Uni-Mol outputs across epochs
    qformer_dropout: float | None = None  # None: the model preset's (0.1); tiny uses 0 (see _TINY)
    corrected_mask: bool | None = None  # None: the model preset's (False = upstream's inverted encoder mask)
    batch_size: int = 64  # per rank
    grad_accum: int = 1
    max_epochs: int = 50
    max_steps: int | None = None  # cap (stage 3 is step-bounded: 40,000)
    schedule: str = "epoch_cosine"  # "epoch_cosine" (stages 1-2) or "step_cosine" (stage 3)
    init_lr: float = 1e-4
    min_lr: float = 5e-6
    warmup_lr: float = 1e-6
    warmup_steps: int = 1000
    weight_decay: float = 0.05
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16" or "fp32" to force
    distributed: str = "ddp"  # "ddp" or "fsdp2" (stages 2/3)
    compile: bool = False
    seed: int = 0
    out_dir: str = "runs/stage1"
    log_every: int = 1
    ckpt_every: int = 1000  # optimizer steps; a final checkpoint is always written
    keep_last: int = 2
    num_workers: int = 0
    progress: bool = True
    time_limit_s: float | None = None  # stop (and checkpoint) after this much wall time

    def __post_init__(self) -> None:
        checks = {"stage": self.stage in (1, 2, 3), "text_padding": self.text_padding in ("longest", "max_length"),
                  "schedule": self.schedule in ("epoch_cosine", "step_cosine"),
                  "precision": self.precision in ("auto", "bf16", "fp32"),
                  "distributed": self.distributed in ("ddp", "fsdp2"), "batch_size": self.batch_size >= 1,
                  "grad_accum": self.grad_accum >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainConfig: invalid {name} = {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown fields {unknown}")
        return cls(**d)


_PAPER = {
    # stage-1 pretrain: 50 epochs, 64/GPU x 4, warmup 1000 (capped to one epoch), text padded to 256
    1: dict(stage=1, model="paper", batch_size=64, grad_accum=1, max_epochs=50, schedule="epoch_cosine",
            init_lr=1e-4, min_lr=5e-6, warmup_lr=1e-6, warmup_steps=1000, text_max_length=256,
            out_dir="runs/stage1"),
    # stage-2 pretrain: 10 epochs, 16/GPU x accumulate 2 x 4, prompt+target max_length 320
    2: dict(stage=2, model="paper", batch_size=16, grad_accum=2, max_epochs=10, schedule="epoch_cosine",
            init_lr=1e-4, min_lr=5e-6, warmup_lr=1e-6, warmup_steps=1000, text_max_length=320,
            out_dir="runs/stage2"),
    # stage 3: 40,000 steps, 8/GPU x accumulate 8 x 4, pad longest up to 384, per-step cosine
    3: dict(stage=3, model="paper", batch_size=8, grad_accum=8, max_epochs=1_000_000, max_steps=40_000,
            schedule="step_cosine", init_lr=1e-5, min_lr=1e-8, warmup_lr=1e-6, warmup_steps=1000,
            text_max_length=384, ckpt_every=5000, out_dir="runs/stage3"),
}

# tiny: a random 2-layer Uni-Mol gives molecule signals far below the Q-Former's dropout noise at init (measured:
# MTC stays at ln B for 4 epochs with dropout 0.1, learns within 40 steps without), so tiny trains without
# Q-Former dropout; the frozen encoder's outputs are cached (exact); text is cut at 64 tokens (48: 5.4x vs 7.4x
# chance held out on one seed, 32: 3.7x); B = 16 (B = 8 and 32 were no better per CPU second). Stage 1 on the 2,010
# ChEBI-20 validation pairs of tests/training/test_smoke.py, 5 epochs (625 steps, 2-3 CPU minutes, one thread):
# in-batch (B = 32) retrieval on 640 test-split pairs 3.2x-7.4x chance over seeds (384 pairs x 6 epochs: 1.2x-2.2x).
# MTC sits at ln B for ~100 steps, then falls; more steps is what helps most. lr 5e-4, 2e-3, 3e-3, one-epoch warmup
# and the corrected encoder mask did not do better on the same seeds.
_TINY = {
    1: dict(stage=1, model="tiny", batch_size=16, grad_accum=1, max_epochs=5, init_lr=1e-3, min_lr=5e-5,
            warmup_lr=1e-5, warmup_steps=10, text_max_length=64, out_dir="runs/tiny_stage1", ckpt_every=50,
            qformer_dropout=0.0, cache_encoder=True),
    # the tiny LLM tokenizer is character-level: prompts are ~280 tokens; 640 keeps all 8 <mol> (longest-first)
    2: dict(stage=2, model="tiny", batch_size=8, grad_accum=1, max_epochs=3, init_lr=3e-3, min_lr=5e-5,
            warmup_lr=1e-5, warmup_steps=5, text_max_length=640, out_dir="runs/tiny_stage2", ckpt_every=50),
    3: dict(stage=3, model="tiny", batch_size=8, grad_accum=2, max_steps=100, max_epochs=1_000_000,
            schedule="step_cosine", init_lr=1e-3, min_lr=1e-6, warmup_lr=1e-5, warmup_steps=10,
            text_max_length=640, out_dir="runs/tiny_stage3", ckpt_every=50),
}

PRESETS = {"paper": _PAPER, "tiny": _TINY}


def training_config(preset: str, stage: int, **overrides: Any) -> TrainConfig:
    """The ``paper`` or ``tiny`` preset of ``stage`` with keyword overrides."""
    if preset not in PRESETS:
        raise ValueError(f"training_config: preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if stage not in PRESETS[preset]:
        raise ValueError(f"training_config: stage must be 1, 2 or 3, got {stage!r}")
    return TrainConfig.from_dict({**PRESETS[preset][stage], **overrides})
