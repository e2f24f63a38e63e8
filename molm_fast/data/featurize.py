"""Uni-Mol featurisation exactly as 3D-MoLM (spec §1.2 "Featurization per molecule", §8.2).

Per molecule: drop every H (unless the molecule is hydrogens only), randomly crop to 256 atoms with a permutation
(which also shuffles the atom order), map symbols to the 31-entry dictionary (unknown -> [UNK]), centre on the
kept atoms, then put BOS=[CLS] and EOS=[SEP] at the origin. Edge types ``t_i * 31 + t_j`` and distances are NOT
built here: the encoder computes them on the device from tokens + coordinates
(``molm_fast.data.collate.distance_and_edge_type`` is the plain reference).

Two implementations, one result:
  * ``featurize_reference(atoms, coordinates, rng=...)``: the upstream steps one molecule at a time (numpy,
    symbol arrays), the yardstick for tests.
  * ``featurize_packed(tokens, coords, offsets, indices, seed=...)``: the same steps vectorised over a whole batch
    of molecules stored as packed arrays (``MoleculeStore``); returns a ``PackedBatch``.
The fast path accumulates the centroid in float64 and rounds it to float32 (upstream, and the reference, take
numpy's float32 mean); the two agree within about one float32 ulp, far inside the fp32 parity tolerance.
The crop permutation of molecule ``i`` comes from ``crop_rng(seed, i)``, so a batch's content does not depend on
batch composition, worker count or order (upstream draws from the unseeded global ``np.random``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The 30 symbols of 3D-MoLM's data_provider/unimol_dict.txt in file order, then [MASK] (spec §1.2, §8.1).
ATOM_SYMBOLS: tuple[str, ...] = (
    "[PAD]", "[CLS]", "[SEP]", "[UNK]", "C", "N", "O", "S", "H", "Cl", "F", "Br", "I", "Si", "P", "B", "Na", "K",
    "Al", "Ca", "Sn", "As", "Hg", "Fe", "Zn", "Cr", "Se", "Gd", "Au", "Li", "[MASK]",
)
NUM_TYPES = len(ATOM_SYMBOLS)  # 31 -> 961 edge types
PAD, BOS, EOS, UNK, H_TOKEN, MASK = 0, 1, 2, 3, 8, 30
MAX_ATOMS = 256
ATOM_INDEX: dict[str, int] = {s: i for i, s in enumerate(ATOM_SYMBOLS)}


def atom_tokens(symbols: Sequence[str]) -> np.ndarray:
    """Element symbols -> dictionary indices [n] uint8; symbols outside the dictionary map to [UNK]=3."""
    get = ATOM_INDEX.get
    return np.fromiter((get(s, UNK) for s in symbols), dtype=np.uint8, count=len(symbols))


def unknown_elements(symbols: Sequence[str]) -> list[str]:
    """The distinct symbols that ``atom_tokens`` maps to [UNK] (for the item's warning)."""
    return sorted({s for s in symbols if s not in ATOM_INDEX})


def crop_rng(seed: int, index: int) -> np.random.Generator:
    """The generator whose ``permutation`` crops molecule ``index`` under run seed ``seed``."""
    return np.random.default_rng((int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)))


def featurize_reference(atoms: Sequence[str], coordinates: np.ndarray, *, max_atoms: int = MAX_ATOMS,
                        rng=None) -> tuple[np.ndarray, np.ndarray]:
    """One molecule, step by step as ``D3Dataset_cid.__getitem__`` (spec §1.2).

    atoms: n element symbols (H included); coordinates: [n, 3] float. rng: anything with ``.permutation`` (a
    ``np.random.Generator`` or ``RandomState``); ``None`` uses the global ``np.random`` as upstream does.
    Returns tokens [m+2] int64 (BOS, atoms, EOS) and coords [m+2, 3] float32 (BOS/EOS at the origin).
    """
    symbols = np.array(list(atoms))
    xyz = np.asarray(coordinates).astype(np.float32)
    if len(symbols) == 0 or xyz.shape != (len(symbols), 3):
        raise ValueError(f"featurize_reference: coordinates must be [n, 3] with n = len(atoms) = {len(symbols)} > 0, "
                         f"got {list(xyz.shape)}")
    heavy = symbols != "H"
    if heavy.sum() > 0:  # a molecule of hydrogens only keeps its hydrogens
        symbols, xyz = symbols[heavy], xyz[heavy]
    if len(symbols) > max_atoms:
        keep = (rng if rng is not None else np.random).permutation(len(symbols))[:max_atoms]
        symbols, xyz = symbols[keep], xyz[keep]
    tokens = atom_tokens(symbols.tolist()).astype(np.int64)
    xyz = xyz - xyz.mean(axis=0)  # float32, numpy's own summation order, as upstream
    tokens = np.concatenate([[BOS], tokens, [EOS]]).astype(np.int64)  # [m+2]
    xyz = np.concatenate([np.zeros((1, 3), np.float32), xyz, np.zeros((1, 3), np.float32)])  # [m+2, 3]
    return tokens, xyz


def featurize_packed(tokens: np.ndarray, coords: np.ndarray, offsets: np.ndarray, indices: Sequence[int] | np.ndarray,
                     *, max_atoms: int = MAX_ATOMS, seed: int = 0):
    """Featurise molecules ``indices`` of a packed store in one vectorised pass.

    tokens: [A] uint8 dictionary indices of every stored atom (H included); coords: [A, 3] float32;
    offsets: [M+1] int64, molecule i owns atoms offsets[i]:offsets[i+1] (each molecule has >= 1 atom).
    Returns a ``molm_fast.data.collate.PackedBatch`` (tokens [T] int64, coords [T, 3] float32, cu_seqlens [B+1]
    int32 with BOS/EOS counted, max_seqlen, indices [B]).
    """
    from molm_fast.data.collate import PackedBatch

    idx = np.asarray(indices, dtype=np.int64)  # [B]
    B = len(idx)
    if B == 0:
        return PackedBatch.empty()
    starts, counts = offsets[idx], offsets[idx + 1] - offsets[idx]  # [B]
    if (counts <= 0).any():
        raise ValueError(f"featurize_packed: molecule {int(idx[np.argmax(counts <= 0)])} has no atoms")
    seg = np.repeat(np.arange(B), counts)  # [A_b] molecule of each gathered atom
    first = np.cumsum(counts) - counts  # [B]
    gather = np.arange(len(seg)) - first[seg] + starts[seg]
    tok = tokens[gather]
    heavy = tok != H_TOKEN
    seg_heavy = np.bincount(seg[heavy], minlength=B)  # [B] heavy atoms per molecule
    keep = heavy | (seg_heavy == 0)[seg]  # hydrogens-only molecules keep their hydrogens
    gather, seg = gather[keep], seg[keep]
    n = np.bincount(seg, minlength=B)  # [B] kept atoms
    over = np.nonzero(n > max_atoms)[0]
    if len(over):  # rare: random crop (and reorder) through a per-molecule permutation
        first = np.cumsum(n) - n
        parts = []
        for b in range(B):
            part = gather[first[b]:first[b] + n[b]]
            if n[b] > max_atoms:
                part = part[crop_rng(seed, idx[b]).permutation(n[b])[:max_atoms]]
            parts.append(part)
        gather = np.concatenate(parts)
        n = np.minimum(n, max_atoms)
        seg = np.repeat(np.arange(B), n)
    tok = tokens[gather]  # [A_k]
    xyz = coords[gather]  # [A_k, 3] float32
    first = np.cumsum(n) - n
    centre = (np.add.reduceat(xyz.astype(np.float64), first, axis=0) / n[:, None]).astype(np.float32)  # [B, 3]
    xyz = xyz - centre[seg]
    lengths = n + 2  # BOS + atoms + EOS
    cu = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    T = int(cu[-1])
    pos = np.arange(len(tok)) + 2 * seg + 1  # atom slots skip each molecule's BOS (and the previous EOS)
    out_tok = np.empty(T, dtype=np.int64)  # [T]
    out_tok[cu[:-1]] = BOS
    out_tok[cu[1:] - 1] = EOS
    out_tok[pos] = tok
    out_xyz = np.zeros((T, 3), dtype=np.float32)  # [T, 3]
    out_xyz[pos] = xyz
    return PackedBatch.from_numpy(out_tok, out_xyz, cu, idx)
