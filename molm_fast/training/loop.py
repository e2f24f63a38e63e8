"""The training loop shared by all stages: one process, DDP or FSDP2 through torchrun, resumable.

A stage supplies a ``TrainTask``: a module whose ``forward(batch)`` returns a dict of 0-d loss tensors ("loss" is
what is optimised, the other entries are logged terms) plus "stats" (ints: molecules, real tokens, computed token
slots), a dataset of samples, a collate function and a sampler whose k-th batch is a pure function of k.

Per optimizer step: lr from the schedule (epoch, step) as LAVIS sets it before the step; grad_accum micro-batches
(DDP gradient sync only on the last); AdamW (weight decay 0.05, one param group: upstream decays LayerNorm and
biases too); bf16 autocast on CUDA. Rank 0 writes one JSONL line per step to ``<out_dir>/metrics.jsonl``: each
loss term (mean over micro-batches and ranks), lr, real tokens/s, molecules/s, real-token fraction, peak memory.
Resume: the latest checkpoint restores weights, optimizer, RNG and the batch counter, so on the CPU the resumed run
reproduces the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from molm_fast.training import checkpoint as ckpt
from molm_fast.training.config import TrainConfig
from molm_fast.training.losses import world_and_rank
from molm_fast.training.sampler import EpochBatchSampler, MixtureBatchSampler
from molm_fast.training.schedules import make_schedule, schedule_state, set_lr


@dataclass
class TrainTask:
    module: torch.nn.Module  # forward(batch) -> {"loss": ..., "<term>": ..., "stats": {...}}
    dataset: Sequence[Any]
    collate: Callable[[list[Any]], Any]
    sampler: EpochBatchSampler | MixtureBatchSampler
    model_config: dict = field(default_factory=dict)  # saved as config.json beside the weights
    wrap_classes: tuple[type, ...] = ()  # FSDP2: shard each instance of these (e.g. the LLM's decoder layers)


def setup_distributed() -> tuple[int, int, torch.device]:
    """Initialise the process group under torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    w, r = world_and_rank()
    return w, r, device


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch.to(device) if hasattr(batch, "to") else batch


def _wrap(module: torch.nn.Module, cfg: TrainConfig, task: TrainTask, device: torch.device) -> torch.nn.Module:
    world, _ = world_and_rank()
    if world > 1 and cfg.distributed == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for sub in module.modules():
            if task.wrap_classes and isinstance(sub, task.wrap_classes):
                fully_shard(sub)
        fully_shard(module)
    elif world > 1:
        module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        module = torch.compile(module)
    return module


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _autocast(cfg: TrainConfig, device: torch.device):
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _all_reduce(values: dict[str, float], device: torch.device, *, mean: bool) -> dict[str, float]:
    """Sum (or mean) of each value over the ranks; the tensor lives on ``device`` (NCCL needs CUDA tensors)."""
    world, _ = world_and_rank()
    if world == 1 or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: (v / world if mean else int(v)) for k, v in zip(values, t.tolist())}


def train(cfg: TrainConfig, task: TrainTask, *, resume: bool = False, device: torch.device | None = None,
          stop_after_steps: int | None = None) -> dict[str, Any]:
    """Run (or continue) training; returns {"steps", "checkpoint", "metrics_path", "last", "module"}.

    ``stop_after_steps`` ends the run early without a final checkpoint and without changing the schedule: a
    "kill" for tests. On resume, metrics lines past the checkpoint's step are dropped and written again.
    """
    world, rank = world_and_rank()
    device = device or (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                        else torch.device("cpu"))
    out_dir = Path(cfg.out_dir)
    module = task.module.to(device)
    model = _wrap(module, cfg, task, device)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP2 swaps in sharded parameters
    optimizer = torch.optim.AdamW(params, lr=cfg.init_lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    batches_per_epoch = task.sampler.batches_per_epoch
    steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
    sched_kwargs = dict(init_lr=cfg.init_lr, min_lr=cfg.min_lr, warmup_start_lr=cfg.warmup_lr)
    if cfg.schedule == "epoch_cosine":  # LAVIS: warmup = min(len(train_dataloader), warmup_steps)
        schedule = make_schedule("epoch_cosine", warmup_steps=min(batches_per_epoch, cfg.warmup_steps),
                                 max_epochs=cfg.max_epochs, **sched_kwargs)
    else:
        schedule = make_schedule("step_cosine", warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps or 1,
                                 **sched_kwargs)
    total_steps = cfg.max_epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    start_step = 0
    path = ckpt.latest_checkpoint(out_dir) if resume else None
    if path is not None:
        state = ckpt.load_checkpoint(path, model, optimizer)
        if state["schedule"] != schedule_state(schedule):
            raise ValueError(f"train: the checkpoint's schedule {state['schedule']} differs from the config's "
                             f"{schedule_state(schedule)}")
        start_step = state["step"]
    else:
        torch.manual_seed(cfg.seed * 1009 + rank)  # model randomness (dropout, MTM negatives) per rank

    def batch_index(step: int, micro: int) -> int:
        epoch, s = divmod(step, steps_per_epoch)
        return epoch * batches_per_epoch + s * cfg.grad_accum + micro

    class _Indices:
        def __iter__(self):
            for step in range(start_step, total_steps):
                for micro in range(cfg.grad_accum):
                    yield task.sampler.batch(batch_index(step, micro))

    loader = DataLoader(task.dataset, batch_sampler=_Indices(), collate_fn=task.collate,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))  # never touches the global RNG
    batches = iter(loader)
    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        if path is None and metrics_path.exists():
            metrics_path.unlink()
        elif path is not None and metrics_path.exists():  # drop what a killed run logged after its checkpoint
            kept = [ln for ln in metrics_path.read_text().splitlines() if json.loads(ln)["step"] <= start_step]
            metrics_path.write_text("".join(ln + "\n" for ln in kept))
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc=f"stage {cfg.stage}", dynamic_ncols=True)
    model.train()
    t_start, last, saved, step = time.perf_counter(), {}, path, start_step
    end = total_steps if stop_after_steps is None else min(total_steps, start_step + stop_after_steps)
    for step in range(start_step, end):
        t0 = time.perf_counter()
        epoch = step // steps_per_epoch
        lr = schedule.lr(epoch, step)
        set_lr(optimizer, lr)
        terms: dict[str, float] = {}
        stats: dict[str, int] = {}
        for micro in range(cfg.grad_accum):
            batch = to_device(next(batches), device)
            sync = micro == cfg.grad_accum - 1 or not hasattr(model, "no_sync")
            with (contextlib.nullcontext() if sync else model.no_sync()), _autocast(cfg, device):
                out = model(batch)
            (out["loss"] / cfg.grad_accum).backward()
            for k, v in out.items():
                if k == "stats":
                    for sk, sv in v.items():
                        stats[sk] = stats.get(sk, 0) + int(sv)
                else:
                    terms[k] = terms.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        terms, stats = _all_reduce(terms, device, mean=True), _all_reduce(stats, device, mean=False)
        if rank == 0:
            real, slots, mols = stats.get("real_tokens", 0), stats.get("token_slots", 0), stats.get("molecules", 0)
            last = {"step": step + 1, "epoch": epoch, "lr": lr, **terms, "molecules_per_s": mols / dt,
                    "real_tokens_per_s": real / dt, "real_token_fraction": real / slots if slots else 1.0,
                    "peak_memory_mb": _peak_memory_mb(device), "step_time_s": dt,
                    "elapsed_s": time.perf_counter() - t_start}
            if (step + 1) % cfg.log_every == 0 or step + 1 == end:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}")
                bar.update(1)
        out_of_time = cfg.time_limit_s is not None and time.perf_counter() - t_start > cfg.time_limit_s
        if world > 1:  # every rank must agree to stop
            flag = torch.tensor([int(out_of_time)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == total_steps or out_of_time:
            saved = ckpt.save_checkpoint(out_dir, model, optimizer, step=step + 1, epoch=epoch,
                                         batches_done=batch_index(step + 1, 0), schedule_state=schedule_state(schedule),
                                         model_config=task.model_config, extra={"train_config": cfg.to_dict()},
                                         keep_last=cfg.keep_last) or saved
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    return {"steps": step + 1 if end > start_step else start_step, "checkpoint": saved,
            "metrics_path": metrics_path, "last": last, "module": ckpt.unwrap(model)}
