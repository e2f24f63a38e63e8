"""Resumable, atomic training checkpoints.

Layout of ``<out_dir>/checkpoints/step-<step>/`` (written to a hidden temporary folder, then renamed, so a killed
run never leaves a half-written checkpoint; ``latest`` is a one-line file replaced atomically too):
  model.safetensors + config.json   only the TRAINABLE weights (upstream keeps no frozen ones, spec §2.4), in the
                                    layout ``MoLM.from_pretrained`` reads (keys = the model's own names)
  training_state.pt                 optimizer (fully gathered, keyed by parameter name, so it loads under DDP,
                                    FSDP2 or a single process alike), schedule, sampler position, step, epoch and
                                    every rank's RNG states (python, torch CPU, CUDA)
Rank 0 writes; the other ranks only contribute their RNG states.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from molm_fast.training.losses import world_and_rank

WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "training_state.pt"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def clean_name(name: str) -> str:
    for p in _WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (un-sharded) CPU copies of every parameter with requires_grad, keyed by the unwrapped model's names."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP2 DTensor -> full tensor
            out[clean_name(name)] = t.detach().to("cpu", copy=True).contiguous()
    return out


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(out_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                    step: int, epoch: int, batches_done: int, schedule_state: dict, model_config: dict | None = None,
                    extra: dict | None = None, keep_last: int = 2) -> Path | None:
    """Collective across ranks. Returns the checkpoint folder on rank 0 (None elsewhere)."""
    world, rank = world_and_rank()
    weights = trainable_state_dict(model)
    optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))
    rngs = [None] * world
    if world > 1:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if rank != 0:
        return None
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "trainable_only": "1"})
    (tmp / "config.json").write_text(json.dumps(model_config or {}, indent=1, default=str))
    torch.save({"optimizer": optim, "step": step, "epoch": epoch, "batches_done": batches_done,
                "schedule": schedule_state, "rng": rngs, "world_size": world, "extra": extra or {}},
               tmp / STATE_NAME)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / "latest", final.name)
    older = sorted(p for p in root.glob("step-*") if p != final)
    for old in older[:max(len(older) - (keep_last - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    marker = Path(out_dir) / "checkpoints" / "latest"
    if not marker.exists():
        return None
    path = marker.parent / marker.read_text().strip()
    return path if (path / STATE_NAME).exists() else None


def load_file_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The trainable weights stored in checkpoint folder ``path``."""
    return load_file(str(Path(path) / WEIGHTS_NAME))


def load_trainable_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Copy a checkpoint's trainable weights into ``model``; every trainable parameter must be present."""
    weights = load_file_weights(path)
    params = {clean_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    bad = sorted(n for n in set(params) & set(weights) if tuple(weights[n].shape) != tuple(params[n].shape)
                 and not hasattr(params[n], "full_tensor"))
    if missing or unexpected or bad:
        raise ValueError(f"load_trainable_weights: {path} does not fit the model: missing {missing[:10]}, "
                         f"unexpected {unexpected[:10]}, wrong shape {bad[:10]}")
    with torch.no_grad():
        for n, p in params.items():
            src = weights[n]
            if hasattr(p, "full_tensor"):  # FSDP2: copy this rank's shard
                from torch.distributed.tensor import distribute_tensor

                src = distribute_tensor(src.to(p.device), p.device_mesh, p.placements).to_local()
                p.to_local().copy_(src)
            else:
                p.copy_(src)


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                    ) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG states; returns the state dict (step, epoch, ...)."""
    path = Path(path)
    world, rank = world_and_rank()
    state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=False)
    if state["world_size"] != world:
        raise ValueError(f"load_checkpoint: {path} was written by {state['world_size']} ranks, resuming with "
                         f"{world}: the data order and RNG streams would differ")
    load_trainable_weights(model, path)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    set_rng_state(state["rng"][rank])
    return state
