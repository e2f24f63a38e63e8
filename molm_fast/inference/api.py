"""Python API on the whole model: ``caption``, ``answer``, ``embed``, ``retrieve``.

Molecules in (``load_molecules``): a list of SMILES strings, RDKit Mols (3D conformers used as is) or
``MoleculeRecord``s from ``molm_fast.data`` readers; or the path of an SDF / SMILES / CSV / TSV file. Conformers
come from ``molm_fast.data.generate_conformers`` (ETKDGv3 + MMFF, seeded) and are kept in the on-disk conformer
cache when ``cache`` is given, so a rerun does no RDKit work. Every input item gets exactly one ``ItemResult``, in
input order, with ``status`` "ok" or "error" and, on error, the ``error`` reason (a bad molecule never stops a job).
Batches are bucketed by molecule size (``MoleculeStore.bucketed_batches``) and prompts are left-padded for the
fast generation path (``molm_fast.inference.generate``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from molm_fast.inference.generate import (
    TASK_SETTINGS,
    GenerationSettings,
    generate,
    generate_reference,
    greedy_settings,
)
from molm_fast.inference.metrics import PROPERTY_RANGES, is_valid_value, parse_number

OK, ERROR = "ok", "error"


@dataclass
class ItemResult:
    """One input item's outcome. ``answer``: generated text; ``value``: the parsed number for property questions."""

    index: int
    id: str
    status: str
    answer: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    value: float | None = None
    top: list[dict[str, Any]] | None = None  # retrieval: the best candidates, best first

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "id": self.id, "status": self.status, "answer": self.answer}
        if self.value is not None:
            d["value"] = self.value
        if self.top is not None:
            d["top"] = self.top
        if self.error is not None:
            d["error"] = self.error
        if self.warnings:
            d["warnings"] = list(self.warnings)
        return d


# ------------------------------------------------------------------------------------------- molecules in
def read_input(path: str | os.PathLike) -> list:
    """Records of a molecule file: SDF (.sdf, .sdf.gz, .zip), CSV / TSV with a SMILES column (``read_table``: any
    case; id column id/CID/mol_id/name; other columns go to ``properties``), or a SMILES file (``SMILES [id]``)."""
    from molm_fast.data import read_sdf, read_smiles
    from molm_fast.data.readers import read_table

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file {p} does not exist")
    name = p.name.lower()
    if name.endswith((".sdf", ".sdf.gz", ".zip", ".mol")):
        return read_sdf(p)
    if name.endswith((".csv", ".tsv")):
        return read_table(p)
    return read_smiles(p)


def load_molecules(mols: Any, *, cache: str | os.PathLike | None = None, workers: int | None = 0,
                   progress: bool = False, conformer_config=None) -> list:
    """One ``MoleculeRecord`` per input item, in order, with 3D coordinates when the item is usable."""
    from molm_fast.data import ConformerConfig, generate_conformers

    if isinstance(mols, (str, os.PathLike)) and Path(mols).is_file():
        items = read_input(mols)
    elif isinstance(mols, str):
        items = [mols]
    else:
        items = list(mols)
    return generate_conformers(items, conformer_config or ConformerConfig(), workers=workers, cache=cache,
                               progress=progress)


# ----------------------------------------------------------------------------------------------- batches
def _device(model) -> torch.device:
    return next(model.parameters()).device


def _size_batches(records: Sequence, batch_size: int):
    """(store of the usable records, [store positions per batch]) bucketed by molecule size."""
    from molm_fast.data import MoleculeStore

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    store = MoleculeStore.from_records(records)
    return store, store.bucketed_batches(batch_size=batch_size, shuffle=False) if len(store) else []


def _error_results(records: Sequence) -> dict[int, ItemResult]:
    return {r.index: ItemResult(r.index, r.id, ERROR, error=r.reason or "molecule has no 3D coordinates",
                                warnings=list(r.warnings)) for r in records if not r.has_coordinates}


@torch.no_grad()
def _generate_batch(model, store, idx, records_of, instructions, tasks, settings, fast: bool) -> list[str]:
    batch = store.batch(idx, layout="padded")
    dev = _device(model)
    mol = model.mol_embeds(batch.tokens.to(dev), batch.coords.to(dev))  # [b, Q, C]
    recs = [records_of[int(store.record_index[i])] for i in idx]
    enc = model.encode_prompts([r.smiles or "" for r in recs], [instructions[r.index] for r in recs],
                               tasks=[tasks[r.index] for r in recs], padding_side="left")
    input_ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    embeds = model.llm.embed(input_ids, mol)  # [b, L, C]
    run = generate if fast else generate_reference
    out = run(model.llm.llm_model, embeds, mask, settings)
    return [t.strip() for t in model.llm.tokenizer.batch_decode(out, skip_special_tokens=True)]


def _run_generation(model, records: Sequence, instructions: Mapping[int, str | None], tasks: Mapping[int, str | None],
                    settings_of: Callable[[str | None], GenerationSettings], *, batch_size: int, fast: bool,
                    progress: bool, on_result: Callable[[ItemResult], None] | None) -> list[ItemResult]:
    from tqdm import tqdm

    if model.llm is None:
        raise ValueError("this model has no LLM (a stage-1 model): captioning and QA need a stage-2/3 model")
    results = _error_results(records)
    records_of = {r.index: r for r in records}
    store, batches = _size_batches(records, batch_size)
    groups: dict[GenerationSettings, list[list[int]]] = {}  # one generation config per batch (upstream: per batch)
    for b in batches:
        by_settings: dict[GenerationSettings, list[int]] = {}
        for i in b:
            task = tasks[int(store.record_index[i])]
            by_settings.setdefault(settings_of(task), []).append(int(i))
        for s, idx in by_settings.items():
            groups.setdefault(s, []).append(idx)
    bar = tqdm(total=len(store), desc="generate", unit="mol", disable=not progress)
    for s, idx_lists in groups.items():
        for idx in idx_lists:
            try:
                texts = _generate_batch(model, store, idx, records_of, instructions, tasks, s, fast)
                outcome = list(zip(idx, texts, [None] * len(idx)))
            except Exception as exc:  # isolate the item that breaks the batch
                outcome = []
                for i in idx:
                    try:
                        outcome.append((i, _generate_batch(model, store, [i], records_of, instructions, tasks, s,
                                                           fast)[0], None))
                    except Exception as item_exc:
                        outcome.append((i, None, f"{type(item_exc).__name__}: {item_exc}"))
                if len(idx) > 1 and all(err for _, _, err in outcome):
                    raise exc  # every item fails alone too: not a bad molecule but a broken model or setup
            for i, text, err in outcome:
                r = records_of[int(store.record_index[i])]
                res = ItemResult(r.index, r.id, ERROR if err else OK, answer=text, error=err,
                                 warnings=list(r.warnings))
                if text is not None and tasks[r.index] in PROPERTY_RANGES:
                    value = parse_number(text)
                    res.value = value if is_valid_value(tasks[r.index], value) else None
                results[r.index] = res
                if on_result is not None:
                    on_result(res)
            bar.update(len(idx))
    bar.close()
    return [results[r.index] for r in records]


def caption(model, mols, *, batch_size: int = 16, settings: GenerationSettings | None = None, greedy: bool = False,
            fast: bool = True, cache: str | os.PathLike | None = None, workers: int | None = 0,
            progress: bool = False, on_result: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
    """Describe each molecule (stage-2 prompt, ``TASK_SETTINGS["caption"]``: beams 5, 32..128 new tokens)."""
    records = load_molecules(mols, cache=cache, workers=workers, progress=progress)
    s = settings or TASK_SETTINGS["caption"]
    s = greedy_settings(s) if greedy else s
    none = {r.index: None for r in records}
    return _run_generation(model, records, none, none, lambda _t: s, batch_size=batch_size, fast=fast,
                           progress=progress, on_result=on_result)


def task_settings(task: str | None) -> GenerationSettings:
    """Spec §6: computed properties and Description 16..64 new tokens, Caption 16..128; free questions as
    Description."""
    if task is None or task in PROPERTY_RANGES:
        return TASK_SETTINGS["property"] if task else TASK_SETTINGS["description"]
    if task == "Caption":
        return TASK_SETTINGS["stage3_caption"]
    if task == "Description":
        return TASK_SETTINGS["description"]
    raise ValueError(f"answer: task must be None, 'Caption', 'Description' or one of {sorted(PROPERTY_RANGES)}, "
                     f"got {task!r}")


def answer(model, mols, questions: Sequence[str] | str, *, tasks: Sequence[str | None] | None = None,
           batch_size: int = 16, greedy: bool = False, fast: bool = True, cache: str | os.PathLike | None = None,
           workers: int | None = 0, progress: bool = False,
           on_result: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
    """Answer one question per molecule (stage-3 prompt). ``tasks`` (optional, per item) picks the generation
    limits of spec §6 and, for a computed property, parses ``value`` (first decimal number within the valid range)."""
    records = load_molecules(mols, cache=cache, workers=workers, progress=progress)
    n = len(records)
    qs = [questions] * n if isinstance(questions, str) else list(questions)
    ts = list(tasks) if tasks is not None else [None] * n
    if len(qs) != n or len(ts) != n:
        raise ValueError(f"answer: need one question and one task per molecule ({n}), got {len(qs)} questions and "
                         f"{len(ts)} tasks")
    for t in set(ts):
        task_settings(t)  # validate up front

    def settings_of(task):
        s = task_settings(task)
        return greedy_settings(s) if greedy else s

    return _run_generation(model, records, {r.index: q for r, q in zip(records, qs)},
                           {r.index: t for r, t in zip(records, ts)}, settings_of, batch_size=batch_size, fast=fast,
                           progress=progress, on_result=on_result)


# ------------------------------------------------------------------------------------- embedding, retrieval
def embed(model, mols, *, out_dir: str | os.PathLike | None = None, batch_size: int = 256,
          cache: str | os.PathLike | None = None, workers: int | None = 0,
          progress: bool = False) -> tuple[np.ndarray, list[ItemResult]]:
    """Retrieval features of molecules (``molm_fast.inference.embed``; a stage-1 model): ([M, Q, E] float32, NaN rows
    for failed items, and one ItemResult per item). ``out_dir`` keeps the resumable shards; default: a temp dir."""
    from molm_fast.inference.embed import EmbedSettings, embed_molecules, load_embeddings

    with tempfile.TemporaryDirectory() if out_dir is None else contextlib.nullcontext(out_dir) as d:
        embed_molecules(model, mols, d, settings=EmbedSettings(batch_size=batch_size), cache=cache, workers=workers,
                        progress=progress)
        feats, status = load_embeddings(d, mmap=False)
    return feats, [ItemResult(s["index"], s["id"], s["status"], error=s["error"] or None,
                              warnings=list(s.get("warnings", []))) for s in status]


def embed_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Text features [T, E] (the Q-Former text side with its tokenizer, e.g. ``<model dir>/qformer_tokenizer``)."""
    from molm_fast.inference.embed import EmbedSettings, load_embeddings
    from molm_fast.inference.embed import embed_texts as _embed_texts

    with tempfile.TemporaryDirectory() as d:
        max_length = min(EmbedSettings.max_length, model.config.qformer.max_position_embeddings)  # tiny: 128
        _embed_texts(model, tokenizer, list(texts), d, progress=progress,
                     settings=EmbedSettings(kind="text", batch_size=batch_size, max_length=max_length))
        return load_embeddings(d, mmap=False)[0]


def retrieve(model, mols, texts: Sequence[str], tokenizer, *, k: int = 5, cache: str | os.PathLike | None = None,
             workers: int | None = 0, progress: bool = False, text_features: np.ndarray | None = None
             ) -> list[ItemResult]:
    """For each molecule the ``k`` best texts by the reference score (max over queries of the cosine): ``answer`` is
    the best text, ``top`` lists {"text_index", "score"} best first. ``text_features``: ``embed_texts`` output of
    ``texts`` computed once for many calls."""
    from molm_fast.inference.retrieve import topk

    if len(texts) == 0:
        raise ValueError("retrieve: texts must not be empty")
    mol, results = embed(model, mols, cache=cache, workers=workers, progress=progress)
    if text_features is None:
        text_features = embed_texts(model, tokenizer, texts, progress=progress)
    text = torch.from_numpy(text_features)
    ok = [i for i, r in enumerate(results) if r.status == OK]
    scores, idx = topk(torch.from_numpy(mol[ok]), text, k)
    for row, i in enumerate(ok):
        results[i].top = [{"text_index": int(j), "score": float(v)} for j, v in zip(idx[row], scores[row])]
        results[i].answer = texts[int(idx[row, 0])]
    return results


def retrieval_metrics(model, mols, texts: Sequence[str], tokenizer, *, batch_size: int = 64, seed: int = 0,
                      cache: str | os.PathLike | None = None, workers: int | None = 0) -> dict[str, Any]:
    """Spec §4.1 on pairs (molecule i, text i): in-batch (batches of ``batch_size`` from a seed-``seed``
    permutation) and full-set Acc / R@20 both ways, over the pairs whose molecule embedded; chance levels too."""
    from molm_fast.inference.retrieve import fullset_metrics, inbatch_metrics

    mol, results = embed(model, mols, cache=cache, workers=workers)
    if len(results) != len(texts):
        raise ValueError(f"retrieval_metrics: need one text per molecule, got {len(results)} and {len(texts)}")
    ok = [i for i, r in enumerate(results) if r.status == OK]
    m = torch.from_numpy(mol[ok])
    t = torch.from_numpy(embed_texts(model, tokenizer, [texts[i] for i in ok]))
    n = len(ok)
    return {"pairs": n, "failed": len(results) - n, "inbatch": inbatch_metrics(m, t, batch_size=batch_size, seed=seed),
            "inbatch_chance_acc": 1 / min(batch_size, max(n, 1)), "fullset": fullset_metrics(m, t),
            "fullset_chance_acc": 1 / max(n, 1)}


__all__ = ["ItemResult", "answer", "caption", "embed", "embed_texts", "load_molecules", "read_input",
           "retrieval_metrics", "retrieve", "task_settings"]
