"""Embedding engine: molecules -> the reference's 8 x 256 normalized query features, texts -> 256-d features.

Input is consumed as a stream of shards of ``shard_size`` items (RAM is bounded by one shard: its records,
conformers and features). Per shard: conformers (``molm_fast.data.generate_conformers``, with the SQLite conformer
cache when given), a packed ``MoleculeStore``, size-bucketed batches (``bucket_batches``, at most ``batch_size``
molecules and ``max_tokens`` padded tokens), encoder + Q-Former, then the shard is written atomically:
``<kind>-<k>.npy`` (float32, [n, Q, E] molecules or [n, E] texts; NaN rows for failed items) and
``<kind>-<k>.jsonl`` (one line per item: index, id, status "ok"/"error", error, warnings), and ``index.json`` is
rewritten (tmp + rename) to list it. A killed run restarted with the same arguments skips the shards in the index
and produces byte-identical files (every shard's batches depend only on its own items).

Mask semantics: with the upstream-inverted mask (default, spec §1.3) a molecule's features depend on its batch
mates (regimes a/b/c). The engine pads every batch so each molecule has >= 1 pad position (``ensure_pad``; the
spec's §8.6 advice): then every molecule is in regime (a), the pad rows are identical whatever the pad count, and
the features no longer depend on batching. ``ensure_pad=False`` keeps the plain multiple-of-8 padding. A model
with ``corrected_mask`` runs packed end to end (varlen encoder and cross-attention, no pad token computed).
Texts are batched by token length and tokenized to the longest text of each batch (dynamic padding).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

INDEX = "index.json"
OK, ERROR = "ok", "error"


@dataclass(frozen=True)
class EmbedSettings:
    """Everything that decides the output bytes; a resumed run must use the same settings."""

    kind: str = "molecule"  # "molecule" or "text"
    shard_size: int = 4096
    batch_size: int = 256  # molecules (or texts) per batch
    max_tokens: int = 16384  # padded tokens per molecule batch
    seed: int = 0  # crop seed for molecules with > 256 heavy atoms
    ensure_pad: bool = True
    max_length: int = 256  # text tokens (SciBERT truncation, spec §4.1)


# ---- inputs as streams -------------------------------------------------------------------------------------
def iter_molecules(source: Any) -> Iterator[Any]:
    """Molecule items one at a time: a SMILES file (``SMILES [id]`` per line) or SDF is streamed; CSV/TSV go
    through ``inference.api.read_input``; an iterable (SMILES, RDKit Mols, MoleculeRecords) is passed through."""
    from molm_fast.data.records import MoleculeRecord

    if not isinstance(source, (str, os.PathLike)):
        yield from source
        return
    path = Path(source)
    name = path.name.lower()
    if name.endswith(".sdf"):
        from molm_fast.data.readers import _sdf_record

        with open(path, encoding="utf-8", errors="replace") as f:
            block: list[str] = []
            n = 0
            for line in _lines_with_end(f):
                if line is None or line.rstrip("\r\n") == "$$$$":
                    if "".join(block).strip():
                        yield _sdf_record(n, "".join(block))
                        n += 1
                    block = []
                else:
                    block.append(line)
        return
    if name.endswith((".csv", ".tsv", ".sdf.gz", ".zip", ".mol")):
        from molm_fast.inference.api import read_input

        yield from read_input(path)
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if parts:
                yield MoleculeRecord(index=-1, id=parts[1] if len(parts) > 1 else "", smiles=parts[0])


def _lines_with_end(f) -> Iterator[str | None]:
    yield from f
    yield None


def iter_texts(source: Any) -> Iterator[Any]:
    """Texts one at a time: a text file (one text per line, ``\\n`` escapes kept as written) or an iterable."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")
    else:
        yield from source


# ---- one shard ---------------------------------------------------------------------------------------------
def _molecule_shard(model, items: list, start: int, settings: EmbedSettings, cache, workers) -> tuple[np.ndarray,
                                                                                                      list[dict]]:
    from rdkit import Chem

    from molm_fast.data import MoleculeStore, generate_conformers
    from molm_fast.data.records import MoleculeRecord

    records = []
    for j, item in enumerate(items):  # global index and id for every item; a non-molecule item fails alone
        i = start + j
        if isinstance(item, MoleculeRecord):
            item.index, item.id = i, item.id or str(i)
        elif isinstance(item, str):
            item = MoleculeRecord(index=i, id=str(i), smiles=item)
        elif not isinstance(item, Chem.Mol):
            item = MoleculeRecord(index=i, id=str(i)).fail(
                f"item must be a SMILES str, an RDKit Mol or a MoleculeRecord, got {type(item).__name__}")
        records.append(item)
    records = generate_conformers(records, workers=workers, cache=cache, progress=False)
    for j, r in enumerate(records):  # RDKit Mols became records numbered by their position in this shard
        r.index = start + j
    store = MoleculeStore.from_records(records)
    out = np.full((len(items), *model_shape(model)), np.nan, np.float32)
    if len(store):
        lengths = store.token_lengths()
        if settings.ensure_pad and not model.config.qformer.corrected_mask:
            lengths = lengths + 1
        batches = _bucket(lengths, settings)
        for idx in batches:
            feats = _embed_molecule_batch(model, store, idx, settings)  # [b, Q, E]
            out[store.record_index[idx] - start] = feats
    status = [_status(r.index, r.id, r.has_coordinates, r.reason or "molecule has no 3D coordinates", r.warnings)
              for r in records]
    return out, status


def model_shape(model) -> tuple[int, int]:
    cfg = model.config.qformer
    return cfg.num_query_tokens, cfg.embed_dim


def _bucket(lengths: np.ndarray, settings: EmbedSettings) -> list[np.ndarray]:
    from molm_fast.data import bucket_batches

    batches = bucket_batches(lengths, max_tokens=settings.max_tokens, shuffle=False)
    return [b[i:i + settings.batch_size] for b in batches for i in range(0, len(b), settings.batch_size)]


@torch.no_grad()
def _embed_molecule_batch(model, store, idx: np.ndarray, settings: EmbedSettings) -> np.ndarray:
    dev = next(model.parameters()).device
    if model.config.qformer.corrected_mask:  # varlen end to end: no pad token in the encoder or the Q-Former
        batch = store.batch(idx, layout="packed", seed=settings.seed)
        cu = batch.cu_seqlens.to(dev)  # [b + 1] int32
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            states = model.graph_encoder.forward_packed(batch.tokens.to(dev), batch.coords.to(dev), cu,
                                                        batch.max_seqlen)  # [T, C]
            z = model.qformer(states, None, cu_seqlens=cu, max_seqlen=batch.max_seqlen)  # [b, Q, C]
            return model.graph_features(z).float().cpu().numpy()
    batch = store.batch(idx, layout="padded", seed=settings.seed)
    tokens, coords = batch.tokens.to(dev), batch.coords.to(dev)  # [b, N], [b, N, 3]
    if settings.ensure_pad and bool((tokens[:, -1] != 0).any()):  # a molecule fills N: add one pad block of 8
        tokens, coords = F.pad(tokens, (0, 8)), F.pad(coords, (0, 0, 0, 8))
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        z = model.query_states(tokens, coords)  # [b, Q, C]
        feats = model.graph_features(z)  # [b, Q, E] normalized
    return feats.float().cpu().numpy()


def _text_shard(model, tokenizer, items: list, start: int, settings: EmbedSettings) -> tuple[np.ndarray, list[dict]]:
    out = np.full((len(items), model_shape(model)[1]), np.nan, np.float32)
    good = [j for j, t in enumerate(items) if isinstance(t, str)]
    status = [_status(start + j, str(start + j), isinstance(t, str), f"text must be a str, got {type(t).__name__}", [])
              for j, t in enumerate(items)]
    if good:
        max_length = _max_text_length(model, settings)
        lengths = np.array([len(tokenizer(items[j], truncation=True, max_length=max_length)["input_ids"])
                            for j in good])
        order = np.argsort(lengths, kind="stable")
        for b0 in range(0, len(order), settings.batch_size):
            sel = [good[j] for j in order[b0:b0 + settings.batch_size]]
            out[sel] = _embed_text_batch(model, tokenizer, [items[j] for j in sel], settings)
    return out, status


def _max_text_length(model, settings: EmbedSettings) -> int:
    """settings.max_length, capped by the model's position embeddings (the tiny config has 128)."""
    return min(settings.max_length, model.config.qformer.max_position_embeddings)


@torch.no_grad()
def _embed_text_batch(model, tokenizer, texts: list[str], settings: EmbedSettings) -> np.ndarray:
    dev = next(model.parameters()).device
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=_max_text_length(model, settings),
                    return_tensors="pt")
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        feats = model.qformer.text_embeddings(enc["input_ids"].to(dev), enc["attention_mask"].to(dev))  # [b, E]
    return feats.float().cpu().numpy()


def _status(index: int, id_: str, ok: bool, error: str, warnings: list[str]) -> dict[str, Any]:
    return {"index": index, "id": id_, "status": OK if ok else ERROR, "error": "" if ok else error,
            "warnings": list(warnings)}


# ---- the run: shards, index, resume ---------------------------------------------------------------------------
def model_fingerprint(model) -> str:
    """A cheap hash of every parameter's name, shape and sum (detects resuming with other weights)."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}{float(p.double().sum()):.12e}".encode())
    return h.hexdigest()[:16]


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_index(out: Path, header: dict[str, Any], resume: bool) -> dict[str, Any]:
    path = out / INDEX
    if resume and path.is_file():
        index = json.loads(path.read_text())
        if {k: index.get(k) for k in header} != header:
            raise ValueError(f"embed: {path} was written with other settings or weights "
                             f"({ {k: index.get(k) for k in header} } vs {header}); use a new out_dir or resume=False")
        return index
    return {**header, "shards": [], "complete": False, "items": 0}


def _run(out_dir, items: Iterable, header: dict[str, Any], settings: EmbedSettings, embed_shard, *, resume: bool,
         progress: bool, total: int | None, max_shards: int | None) -> dict[str, Any]:
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = _load_index(out, header, resume)
    done = sum(s["count"] for s in index["shards"])
    stream = itertools.islice(iter(items), done, None)  # skip the items already written
    bar = tqdm(total=total, initial=done, desc=f"embed {settings.kind}s", unit=settings.kind[:3], disable=not progress)
    written = 0
    while not index["complete"] and (max_shards is None or written < max_shards):
        chunk = list(itertools.islice(stream, settings.shard_size))
        if not chunk:
            index["complete"] = True
        else:
            k = len(index["shards"])
            feats, status = embed_shard(chunk, done)
            stem = f"{settings.kind}-{k:05d}"
            _write_atomic(out / f"{stem}.npy", lambda f, a=feats: np.save(f, a))
            lines = "".join(json.dumps(s) + "\n" for s in status).encode()
            _write_atomic(out / f"{stem}.jsonl", lambda f, b=lines: f.write(b))
            index["shards"].append({"features": f"{stem}.npy", "status": f"{stem}.jsonl", "start": done,
                                    "count": len(chunk), "ok": sum(s["status"] == OK for s in status)})
            done += len(chunk)
            written += 1
            bar.update(len(chunk))
        index["items"] = done
        _write_atomic(out / INDEX, lambda f: f.write(json.dumps(index, indent=1).encode()))
    bar.close()
    return index


def embed_molecules(model, molecules: Any, out_dir: str | os.PathLike, *, settings: EmbedSettings | None = None,
                    cache: str | os.PathLike | None = None, workers: int | None = 0, resume: bool = True,
                    progress: bool = True, max_shards: int | None = None) -> dict[str, Any]:
    """Embed molecules (a SMILES/SDF/CSV path, or an iterable of SMILES / RDKit Mols / MoleculeRecords) into
    ``out_dir``; returns the index. ``model``: a ``molm_fast.MoLM`` with stage-1 heads. ``cache``: the SQLite
    conformer cache; ``workers``: conformer processes; ``max_shards``: stop after that many new shards (the run
    resumes on the next call)."""
    settings = settings or EmbedSettings()
    if settings.kind != "molecule":
        raise ValueError(f"embed_molecules: settings.kind must be 'molecule', got {settings.kind!r}")
    header = {"settings": asdict(settings), "model": model_fingerprint(model), "shape": list(model_shape(model))}
    total = len(molecules) if hasattr(molecules, "__len__") and not isinstance(molecules, (str, os.PathLike)) else None
    return _run(out_dir, iter_molecules(molecules), header, settings,
                lambda chunk, start: _molecule_shard(model, chunk, start, settings, cache, workers),
                resume=resume, progress=progress, total=total, max_shards=max_shards)


def embed_texts(model, tokenizer, texts: Any, out_dir: str | os.PathLike, *, settings: EmbedSettings | None = None,
                resume: bool = True, progress: bool = True, max_shards: int | None = None) -> dict[str, Any]:
    """Embed texts (a file with one text per line, or an iterable of str) into ``out_dir``: [n, 256] features."""
    settings = settings or EmbedSettings(kind="text")
    if settings.kind != "text":
        raise ValueError(f"embed_texts: settings.kind must be 'text', got {settings.kind!r}")
    header = {"settings": asdict(settings), "model": model_fingerprint(model), "shape": [model_shape(model)[1]]}
    total = len(texts) if hasattr(texts, "__len__") and not isinstance(texts, (str, os.PathLike)) else None
    return _run(out_dir, iter_texts(texts), header, settings,
                lambda chunk, start: _text_shard(model, tokenizer, chunk, start, settings),
                resume=resume, progress=progress, total=total, max_shards=max_shards)


def load_embeddings(out_dir: str | os.PathLike, *, mmap: bool = True) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(features [n, ...] float32 in input order, per-item status dicts) of a finished or partial run."""
    out = Path(out_dir)
    index = json.loads((out / INDEX).read_text())
    shape = tuple(index["shape"])
    parts = [np.load(out / s["features"], mmap_mode="r" if mmap else None) for s in index["shards"]]
    feats = np.concatenate(parts) if parts else np.zeros((0, *shape), np.float32)
    status = [json.loads(line) for s in index["shards"] for line in (out / s["status"]).read_text().splitlines()]
    return feats, status
