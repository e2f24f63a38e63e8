"""Packed on-disk store of conformers, featurised a whole batch at a time.

``MoleculeStore`` keeps every usable molecule as packed arrays (tokens [A] uint8 with H, coords [A, 3] float32,
offsets [M+1]); ``store.batch(indices)`` runs the vectorised featurisation and returns a padded or packed batch.
``BatchDataset`` wraps a store and a list of batches for ``torch.utils.data.DataLoader(..., batch_size=None)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from molm_fast.data.collate import PackedBatch, PaddedBatch, bucket_batches
from molm_fast.data.featurize import H_TOKEN, MAX_ATOMS, atom_tokens, featurize_packed
from molm_fast.data.records import MoleculeRecord

LAYOUTS = ("padded", "packed")


class MoleculeStore:
    """tokens [A] uint8 (dictionary index of every atom, H included); coords [A, 3] float32; offsets [M+1] int64;
    record_index [M] int64 (the source record of each molecule); ids: M strings."""

    def __init__(self, tokens: np.ndarray, coords: np.ndarray, offsets: np.ndarray, record_index: np.ndarray,
                 ids: Sequence[str]):
        if coords.shape != (len(tokens), 3) or offsets[-1] != len(tokens) or len(offsets) != len(ids) + 1:
            raise ValueError(f"MoleculeStore: inconsistent arrays: tokens {tokens.shape}, coords {coords.shape}, "
                             f"offsets {offsets.shape} ending at {offsets[-1]}, {len(ids)} ids")
        self.tokens, self.coords = np.ascontiguousarray(tokens, np.uint8), np.ascontiguousarray(coords, np.float32)
        self.offsets, self.record_index = np.asarray(offsets, np.int64), np.asarray(record_index, np.int64)
        self.ids = list(ids)

    @classmethod
    def from_records(cls, records: Sequence[MoleculeRecord]) -> MoleculeStore:
        """Pack every record with coordinates; failed records (and ones without coordinates) are left out, and
        ``record_index`` says which record each stored molecule is."""
        usable = [r for r in records if r.has_coordinates]
        counts = np.array([len(r.atoms) for r in usable], dtype=np.int64)
        offsets = np.zeros(len(usable) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        tokens = np.concatenate([atom_tokens(r.atoms) for r in usable]) if usable else np.zeros(0, np.uint8)
        coords = (np.concatenate([r.coordinates for r in usable]).astype(np.float32) if usable
                  else np.zeros((0, 3), np.float32))
        return cls(tokens, coords, offsets, np.array([r.index for r in usable], np.int64), [r.id for r in usable])

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int] | np.ndarray) -> MoleculeStore:
        """A new store holding molecules ``indices`` in that order (ids and record_index follow)."""
        idx = np.asarray(indices, dtype=np.int64)
        counts = np.diff(self.offsets)[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        first = np.cumsum(counts) - counts
        atoms = np.arange(int(offsets[-1])) - np.repeat(first - self.offsets[idx], counts)  # [A'] source rows
        return MoleculeStore(self.tokens[atoms], self.coords[atoms], offsets, self.record_index[idx],
                             [self.ids[i] for i in idx])

    @classmethod
    def concatenate(cls, stores: Sequence[MoleculeStore]) -> MoleculeStore:
        """Stores one after another (record_index kept as is: it refers to each store's own records)."""
        if not stores:
            raise ValueError("MoleculeStore.concatenate: needs at least one store")
        counts = np.concatenate([np.diff(s.offsets) for s in stores])
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(np.concatenate([s.tokens for s in stores]), np.concatenate([s.coords for s in stores]), offsets,
                   np.concatenate([s.record_index for s in stores]), [i for s in stores for i in s.ids])

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, tokens=self.tokens, coords=self.coords, offsets=self.offsets, record_index=self.record_index,
                 ids=np.array(self.ids, dtype=str))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MoleculeStore:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["tokens"], z["coords"], z["offsets"], z["record_index"], [str(s) for s in z["ids"]])

    def token_lengths(self, max_atoms: int = MAX_ATOMS) -> np.ndarray:
        """[M] int64 tokens per molecule after featurisation (heavy atoms, or all if H only; cropped; +BOS/EOS)."""
        seg = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        heavy = np.bincount(seg[self.tokens != H_TOKEN], minlength=len(self))
        n = np.where(heavy > 0, heavy, np.diff(self.offsets))
        return np.minimum(n, max_atoms) + 2

    def batch(self, indices: Sequence[int] | np.ndarray, *, layout: str = "padded", seed: int = 0,
              max_atoms: int = MAX_ATOMS) -> PaddedBatch | PackedBatch:
        """Featurise molecules ``indices`` (store positions) into one batch of the given layout."""
        if layout not in LAYOUTS:
            raise ValueError(f"MoleculeStore.batch: layout must be one of {LAYOUTS}, got {layout!r}")
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(f"MoleculeStore.batch: indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}")
        packed = featurize_packed(self.tokens, self.coords, self.offsets, idx, max_atoms=max_atoms, seed=seed)
        return packed if layout == "packed" else packed.to_padded()

    def bucketed_batches(self, *, batch_size: int | None = None, max_tokens: int | None = None,
                         shuffle: bool = True, seed: int = 0, max_atoms: int = MAX_ATOMS) -> list[np.ndarray]:
        return bucket_batches(self.token_lengths(max_atoms), batch_size=batch_size, max_tokens=max_tokens,
                              shuffle=shuffle, seed=seed)


class BatchDataset(torch.utils.data.Dataset):
    """Item i = ``store.batch(batches[i], layout=..., seed=...)``; use with ``DataLoader(ds, batch_size=None)``."""

    def __init__(self, store: MoleculeStore, batches: Sequence[Sequence[int]], *, layout: str = "padded",
                 seed: int = 0, max_atoms: int = MAX_ATOMS):
        if layout not in LAYOUTS:
            raise ValueError(f"BatchDataset: layout must be one of {LAYOUTS}, got {layout!r}")
        self.store, self.batches, self.layout, self.seed, self.max_atoms = store, list(batches), layout, seed, max_atoms

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> PaddedBatch | PackedBatch:
        return self.store.batch(self.batches[i], layout=self.layout, seed=self.seed, max_atoms=self.max_atoms)
