"""Batch samplers whose k-th batch is a pure function of (seed, rank, k): resuming is "start at batch k".

EpochBatchSampler   stages 1-2: a fresh permutation per epoch (seeded by seed + epoch), split across ranks
                    (rank r takes every W-th index), cut into per-rank batches with drop_last (stage 1's gathered
                    negatives need the same B on every rank; upstream's train loader drops the last batch too).
MixtureBatchSampler stage 3, 3D-MoIT (spec 3d-molm.md §3.3, pitfall §2.6.5): each sample draws its source with
                    p_i proportional to |D_i|^0.25, then a uniform item of that source; indices are into the
                    concatenation of the sources. An "epoch" is sum|D_i| samples (training is step-bounded).

No sampler touches the global RNG, so data order never shifts model randomness (dropout, MTM negatives).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MIXTURE_ALPHA = 0.25


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:  # a simple, stable mix of the keys (not Python's salted hash)
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B9) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class EpochBatchSampler:
    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        if batch_size < 1 or num_samples < batch_size * world_size:
            raise ValueError(f"EpochBatchSampler: need num_samples >= batch_size * world_size, got {num_samples} "
                             f"< {batch_size} * {world_size}")
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = num_samples // (batch_size * world_size)
        self._cache: tuple[int, torch.Tensor] | None = None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != epoch:
            order = torch.randperm(self.num_samples, generator=_generator(self.seed, epoch)) if self.shuffle \
                else torch.arange(self.num_samples)
            self._cache = (epoch, order[self.rank::self.world_size])
        return self._cache[1]

    def epoch_of(self, k: int) -> int:
        return k // self.batches_per_epoch

    def batch(self, k: int) -> list[int]:
        """Indices of this rank's k-th batch (k counts batches since the start of training)."""
        epoch, j = divmod(k, self.batches_per_epoch)
        return self._epoch_order(epoch)[j * self.batch_size:(j + 1) * self.batch_size].tolist()


class MixtureBatchSampler:
    def __init__(self, sizes: Sequence[int], batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 alpha: float = MIXTURE_ALPHA):
        if not sizes or min(sizes) < 1:
            raise ValueError(f"MixtureBatchSampler: sizes must be non-empty and positive, got {list(sizes)}")
        self.sizes = torch.tensor(list(sizes), dtype=torch.float64)  # [S]
        self.offsets = torch.cumsum(torch.tensor([0, *sizes[:-1]]), 0)  # [S]
        self.probs = self.sizes**alpha / (self.sizes**alpha).sum()  # [S]
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.batches_per_epoch = max(1, int(sum(sizes)) // (batch_size * world_size))

    def epoch_of(self, k: int) -> int:
        return k // self.batches_per_epoch

    def batch(self, k: int) -> list[int]:
        g = _generator(self.seed, self.rank, k)
        source = torch.multinomial(self.probs, self.batch_size, replacement=True, generator=g)  # [B]
        item = (torch.rand(self.batch_size, generator=g, dtype=torch.float64) * self.sizes[source]).long()  # [B]
        return (self.offsets[source] + item).tolist()
