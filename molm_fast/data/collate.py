"""Batch layouts for the Uni-Mol encoder (spec §1.2 "Batch collation").

* ``PaddedBatch``: the reference layout. Right padding to a multiple of 8 with pad values 0 (tokens [B, N],
  coords [B, N, 3]); upstream's ``D3Collater`` (unicore ``collate_tokens``) exactly.
* ``PackedBatch``: varlen layout, flash-attention style. Tokens [T] and coords [T, 3] of all molecules concatenated,
  ``cu_seqlens`` [B+1] int32 offsets and ``max_seqlen``; no padding at all.
* ``bucket_batches``: length-bucketed batch index lists, so padded batches waste few slots.

Distances and edge types are not built on the CPU: the encoder computes them on the device.
``distance_and_edge_type`` is the plain reference of what upstream materialises (for tests of other modules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from molm_fast.data.featurize import NUM_TYPES, PAD

PAD_TO_MULTIPLE = 8


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class PaddedBatch:
    """tokens [B, N] int64 (BOS=1, atoms, EOS=2, PAD=0); coords [B, N, 3] float32 (0 at BOS/EOS/pads);
    lengths [B] int64 real tokens per molecule incl. BOS/EOS; indices [B] int64 store index of each molecule."""

    tokens: torch.Tensor
    coords: torch.Tensor
    lengths: torch.Tensor
    indices: torch.Tensor

    @property
    def padding_mask(self) -> torch.Tensor:
        """[B, N] bool, True at pads (Uni-Mol's ``tokens.eq(pad)``)."""
        return self.tokens.eq(PAD)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device, non_blocking: bool = False) -> PaddedBatch:
        return PaddedBatch(*(t.to(device, non_blocking=non_blocking) for t in
                             (self.tokens, self.coords, self.lengths, self.indices)))

    def pin_memory(self) -> PaddedBatch:
        return PaddedBatch(*(t.pin_memory() for t in (self.tokens, self.coords, self.lengths, self.indices)))

    def to_packed(self) -> PackedBatch:
        lengths = self.lengths.to(torch.int64)
        N = self.tokens.shape[1]
        keep = torch.arange(N).unsqueeze(0) < lengths.unsqueeze(1)  # [B, N]
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        return PackedBatch(self.tokens[keep], self.coords[keep], cu, int(lengths.max()) if len(lengths) else 0,
                           self.indices)


@dataclass
class PackedBatch:
    """tokens [T] int64; coords [T, 3] float32; cu_seqlens [B+1] int32 (molecule b = rows cu[b]:cu[b+1], BOS and
    EOS included); max_seqlen = max_b (cu[b+1]-cu[b]); indices [B] int64 store index of each molecule."""

    tokens: torch.Tensor
    coords: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    indices: torch.Tensor

    @classmethod
    def from_numpy(cls, tokens: np.ndarray, coords: np.ndarray, cu: np.ndarray, indices: np.ndarray) -> PackedBatch:
        lengths = np.diff(cu)
        return cls(torch.from_numpy(tokens), torch.from_numpy(coords), torch.from_numpy(cu.astype(np.int32)),
                   int(lengths.max()) if len(lengths) else 0, torch.from_numpy(np.asarray(indices, np.int64)))

    @classmethod
    def empty(cls) -> PackedBatch:
        return cls(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3), torch.zeros(1, dtype=torch.int32), 0,
                   torch.zeros(0, dtype=torch.int64))

    @property
    def lengths(self) -> torch.Tensor:
        """[B] int64 tokens per molecule (BOS/EOS included)."""
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).to(torch.int64)

    def __len__(self) -> int:
        return self.cu_seqlens.shape[0] - 1

    def to(self, device, non_blocking: bool = False) -> PackedBatch:
        t, c, cu, i = (x.to(device, non_blocking=non_blocking) for x in
                       (self.tokens, self.coords, self.cu_seqlens, self.indices))
        return PackedBatch(t, c, cu, self.max_seqlen, i)

    def pin_memory(self) -> PackedBatch:
        t, c, cu, i = (x.pin_memory() for x in (self.tokens, self.coords, self.cu_seqlens, self.indices))
        return PackedBatch(t, c, cu, self.max_seqlen, i)

    def to_padded(self, pad_to_multiple: int = PAD_TO_MULTIPLE) -> PaddedBatch:
        """Right-pad to N = the longest molecule rounded up to ``pad_to_multiple`` (pad values 0).

        On the CPU the scatter runs in numpy: tiny torch ops pay OpenMP start-up on every call, which on a loaded
        machine costs milliseconds each (measured in benchmarks/bench_data.py)."""
        lengths = self.lengths
        B, T = len(lengths), self.tokens.shape[0]
        N = _round_up(self.max_seqlen, pad_to_multiple) if B else 0
        if self.tokens.device.type == "cpu":
            n = lengths.numpy()
            row = np.repeat(np.arange(B), n)  # [T]
            col = np.arange(T) - np.repeat(self.cu_seqlens[:-1].numpy().astype(np.int64), n)  # [T]
            tokens = np.zeros((B, N), dtype=self.tokens.numpy().dtype)  # [B, N]
            coords = np.zeros((B, N, 3), dtype=self.coords.numpy().dtype)  # [B, N, 3]
            tokens[row, col] = self.tokens.numpy()
            coords[row, col] = self.coords.numpy()
            return PaddedBatch(torch.from_numpy(tokens), torch.from_numpy(coords), lengths, self.indices)
        row = torch.repeat_interleave(torch.arange(B, device=lengths.device), lengths)  # [T]
        col = torch.arange(T, device=lengths.device) - self.cu_seqlens[:-1].to(torch.int64)[row]  # [T]
        tokens = self.tokens.new_zeros(B, N)  # [B, N]
        coords = self.coords.new_zeros(B, N, 3)  # [B, N, 3]
        tokens[row, col] = self.tokens
        coords[row, col] = self.coords
        return PaddedBatch(tokens, coords, lengths, self.indices)


def collate_reference(samples: Sequence[tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]],
                      indices: Sequence[int] | None = None, *, pad_to_multiple: int = PAD_TO_MULTIPLE) -> PaddedBatch:
    """Upstream ``D3Collater`` on per-molecule (tokens [n], coords [n, 3]) pairs: right padding, pad value 0,
    N = max n rounded up to ``pad_to_multiple`` with unicore's formula."""
    B = len(samples)
    lengths = [len(t) for t, _ in samples]
    size = max(lengths, default=0)
    if pad_to_multiple != 1 and size % pad_to_multiple != 0:
        size = int(((size - 0.1) // pad_to_multiple + 1) * pad_to_multiple)
    tokens = torch.full((B, size), PAD, dtype=torch.int64)
    coords = torch.zeros(B, size, 3, dtype=torch.float32)
    for b, (t, c) in enumerate(samples):
        tokens[b, :len(t)] = torch.as_tensor(t)
        coords[b, :len(t)] = torch.as_tensor(c, dtype=torch.float32)
    idx = torch.as_tensor(list(indices) if indices is not None else range(B), dtype=torch.int64)
    return PaddedBatch(tokens, coords, torch.as_tensor(lengths, dtype=torch.int64), idx)


def distance_and_edge_type(tokens: torch.Tensor, coords: torch.Tensor, *, pad_idx: int = PAD,
                           num_types: int = NUM_TYPES) -> tuple[torch.Tensor, torch.Tensor]:
    """What upstream materialises per molecule, padded: the plain reference for the encoder's on-device version.

    tokens [B, N] int64, coords [B, N, 3] -> dist [B, N, N] float32 (computed in float64 like scipy's
    ``distance_matrix``, then cast) and edge_type [B, N, N] int64 = t_i * num_types + t_j. Every pair touching a
    pad (tokens == pad_idx) has dist 0 and edge type 0, as ``collate_tokens_2d`` pads them.
    """
    if tokens.dim() != 2 or coords.shape != (*tokens.shape, 3):
        raise ValueError(f"distance_and_edge_type: tokens must be [B, N] and coords [B, N, 3], got "
                         f"{list(tokens.shape)} and {list(coords.shape)}")
    real = tokens.ne(pad_idx)  # [B, N]
    pair = real.unsqueeze(2) & real.unsqueeze(1)  # [B, N, N]
    c = coords.double()
    dist = (c.unsqueeze(2) - c.unsqueeze(1)).square().sum(-1).sqrt().float()  # [B, N, N]
    edge = tokens.unsqueeze(2) * num_types + tokens.unsqueeze(1)  # [B, N, N]
    return dist.where(pair, 0.0), edge.where(pair, 0)


def bucket_batches(lengths: Sequence[int] | np.ndarray, *, batch_size: int | None = None,
                   max_tokens: int | None = None, shuffle: bool = True, seed: int = 0,
                   pad_to_multiple: int = PAD_TO_MULTIPLE) -> list[np.ndarray]:
    """Group molecule indices of similar length into batches.

    lengths: [M] token count per molecule (BOS/EOS included). Exactly one of ``batch_size`` (molecules per batch)
    or ``max_tokens`` (cap on padded slots B * ceil8(max length)) must be given. Indices are sorted by length
    (ties in a seeded random order when ``shuffle``), cut into batches, and the batch order is shuffled with the
    same seed. Every index appears in exactly one batch.
    """
    if (batch_size is None) == (max_tokens is None):
        raise ValueError("bucket_batches: give exactly one of batch_size or max_tokens")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"bucket_batches: batch_size must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng(seed)
    tie = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    order = np.lexsort((tie, lengths))  # by length, ties in random (or index) order
    if batch_size is not None:
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    else:
        if max_tokens < 1:
            raise ValueError(f"bucket_batches: max_tokens must be >= 1, got {max_tokens}")
        padded = -(-lengths[order] // pad_to_multiple) * pad_to_multiple  # sorted ascending
        batches, start = [], 0
        for i in range(1, len(order) + 1):  # padded[i-1] is the batch's widest so far
            if i == len(order) or (i + 1 - start) * padded[i] > max_tokens:
                batches.append(order[start:i])
                start = i
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
