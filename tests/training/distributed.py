"""Run a function on W CPU processes over gloo (torch.multiprocessing spawn) and collect what each rank returns."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, out_dir: str, fn, args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def run_distributed(fn, world: int = 2, *args) -> list:
    """fn(rank, world, *args) must be a module-level function; returns [result of rank 0, rank 1, ...]."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = str(Path(tmp) / "init")
        mp.spawn(_worker, args=(world, init_file, tmp, fn, args), nprocs=world, join=True)
        return [pickle.loads(Path(tmp, f"rank{r}.pkl").read_bytes()) for r in range(world)]
