"""3D-MoLM models: Uni-Mol encoder, Q-Former, LLM with LoRA and <mol> splice, the whole model, checkpoints.

Imports are lazy so ``import molm_fast.models.config`` never pulls in transformers or the ops.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "UniMolEncoder": "molm_fast.models.unimol",
    "QFormer": "molm_fast.models.qformer",
    "MoLMLLM": "molm_fast.models.llm",
    "build_prompt": "molm_fast.models.llm",
    "encode_prompts": "molm_fast.models.llm",
    "encode_training_batch": "molm_fast.models.llm",
    "setup_tokenizer": "molm_fast.models.llm",
    "convert_lightning_checkpoint": "molm_fast.models.checkpoint",
    "load_unimol": "molm_fast.models.checkpoint",
    "MoLM": "molm_fast.models.molm",
    "MoLMConfig": "molm_fast.models.config",
    "UniMolConfig": "molm_fast.models.config",
    "QFormerConfig": "molm_fast.models.config",
    "LLMConfig": "molm_fast.models.config",
    "get_config": "molm_fast.models.config",
    "paper": "molm_fast.models.config",
    "tiny": "molm_fast.models.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'molm_fast.models' has no attribute {name!r}")


__all__ = list(_LAZY)
