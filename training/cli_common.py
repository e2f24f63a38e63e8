"""Shared argument parsing of training/stage1.py and training/stage2.py (no code is exec'd from configs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

# Before torch loads MKL: MKL's AVX2 GEMMs (AMD CPUs, older Xeons) round by buffer alignment, so a resumed CPU run
# drifts from the uninterrupted one in the 7th digit; strict CNR keeps --resume bit-exact on every x86 CPU.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from any folder

from training.configs import TrainConfig, training_config  # noqa: E402


def _value(field: dataclasses.Field, text: str):
    if text.lower() in ("none", "null"):
        return None
    kind = str(field.type)
    if "bool" in kind:
        return text.lower() in ("1", "true", "yes")
    if "int" in kind and "float" not in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def parse(stage_choices: tuple[int, ...], description: str) -> tuple[TrainConfig, bool]:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--preset", choices=["paper", "tiny"], default="paper")
    p.add_argument("--stage", type=int, choices=stage_choices, default=stage_choices[0])
    p.add_argument("--config", help="JSON file of TrainConfig fields (applied after the preset)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/latest")
    p.add_argument("overrides", nargs="*", help="field=value, e.g. train_data=data.tsv max_steps=100")
    a = p.parse_args()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    over = json.loads(Path(a.config).read_text()) if a.config else {}
    for item in a.overrides:
        key, _, text = item.partition("=")
        if key not in fields or not _:
            p.error(f"override must be field=value with a TrainConfig field, got {item!r}")
        over[key] = _value(fields[key], text)
    return training_config(a.preset, a.stage, **over), a.resume
