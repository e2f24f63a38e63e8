"""``molm-fast demo``: the whole system on built-in defaults, offline, in minutes on a laptop CPU.

1. Data: the bundled ChEBI-20 pairs (``molm_fast/assets``; see its README for source, licence and selection):
   2,010 training pairs from the validation split (the smoke test's, tests/training/test_smoke.py) and 320 held-out
   pairs from the test split (molecules never seen in training).
2. Conformers: RDKit ETKDGv3 + MMFF (seeded), built for the held-out molecules and cached in
   ``DIR/conformers.sqlite``; the training molecules' conformers (the same recipe, the smoke test's) are bundled,
   as building them would take 3-4 minutes of the demo's.
3. Stage 1 (Q-Former: contrastive + matching + captioning losses) of the ``tiny`` model with the ``tiny`` stage-1
   preset unchanged (``molm_fast.training.config``: tokenizer, epochs, batch size, lr; the smoke test's recipe),
   then spec §4.1 retrieval (full set and in-batch) on the held-out pairs against chance.
4. Stage 2 (LLM with LoRA: captioning, plus computed-property QA in 3D-MoIT's templates), saved to ``DIR/model``:
   a model directory every other command accepts (``--model DIR/model``).
5. Captions for held-out molecules and answers to property questions, with the spec §4 metrics.
Each stage prints its throughput. ``run_bench`` times the inference stages on any model directory.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch

ASSETS = {"train": "chebi20_demo_train.tsv", "heldout": "chebi20_demo_heldout.tsv",
          "train_conformers": "chebi20_demo_train_conformers.npz"}


def _say(msg: str) -> None:
    print(msg, flush=True)


def asset_rows(split: str = "train") -> list[list[str]]:
    """Header + rows of the bundled TSV of ``split`` ("train" or "heldout")."""
    if split not in ("train", "heldout"):
        raise ValueError(f"asset_rows: split must be 'train' or 'heldout', got {split!r}")
    text = resources.files("molm_fast").joinpath("assets", ASSETS[split]).read_text(encoding="utf-8")
    return list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def _property_data(pairs, seed: int = 0):
    """3D-MoIT computed-property QA (MW, LogP, TPSA from RDKit) for the molecules of ``pairs`` as PairData."""
    from molm_fast.data import MoleculeRecord
    from molm_fast.data.moit import RDKIT_COMPUTABLE, computed_property_items
    from molm_fast.training.data import instruction_pairs

    records = [MoleculeRecord(index=i, id=cid, smiles=s) for i, (cid, s) in enumerate(zip(pairs.cids, pairs.smiles))]
    items, _ = computed_property_items(records, RDKIT_COMPUTABLE, seed=seed)
    return instruction_pairs(items, pairs)


def run_demo(output: str | Path = "molm-fast-demo", *, quick: bool = False, seed: int = 0, threads: int = 1) -> int:
    """Train and use the tiny model; everything goes under ``output``. ``quick``: fewer molecules and steps;
    ``seed``: the training seed (model init, batch order); ``threads``: torch threads (1 by default: the tiny model's
    ops are small, and 2 threads on 2 busy cores ran stage 1 at 0.2-0.5 steps/s against 4 steps/s with one)."""
    if threads < 1:
        raise ValueError(f"run_demo: threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_demo(Path(output), quick=quick, seed=seed)
    finally:
        torch.set_num_threads(before)


def _run_demo(out: Path, *, quick: bool, seed: int) -> int:
    from molm_fast.inference import api, metrics
    from molm_fast.training.config import training_config
    from molm_fast.training.data import load_pairs
    from molm_fast.training.stage1 import train_stage1
    from molm_fast.training.stage2 import train_stage2

    t_all = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    header, *rows = asset_rows("train")
    _, *held_rows = asset_rows("heldout")
    if quick:
        rows, held_rows = rows[:96], held_rows[:32]
    train_tsv = _write_tsv(out / "train.tsv", header, rows)
    eval_tsv = _write_tsv(out / "heldout.tsv", header, held_rows)
    _say(f"[data] {len(rows)} training pairs (ChEBI-20 validation split) and {len(held_rows)} held-out pairs "
         f"(test split; bundled, see molm_fast/assets/README.md)")

    with resources.as_file(resources.files("molm_fast").joinpath("assets", ASSETS["train_conformers"])) as npz:
        train = load_pairs(train_tsv, molecules=npz)
    t = time.perf_counter()
    cache = out / "conformers.sqlite"
    heldout = load_pairs(eval_tsv, conformer_cache=cache, workers=2)
    dt = time.perf_counter() - t
    _say(f"[conformers] {len(train)} training molecules bundled (same recipe); {len(heldout)} held-out molecules in "
         f"{dt:.1f} s ({len(heldout) / dt:.1f} mol/s; ETKDGv3 + MMFF, cached in {cache}); "
         f"{len(train.dropped) + len(heldout.dropped)} without a conformer")

    cfg1 = training_config("tiny", 1, out_dir=str(out / "stage1"), progress=not quick, ckpt_every=10_000, seed=seed,
                           **({"max_epochs": 2} if quick else {}))
    t = time.perf_counter()
    train_stage1(cfg1, train_data=train)
    dt = time.perf_counter() - t
    n1 = cfg1.max_epochs * len(train)
    _say(f"[stage 1] {cfg1.max_epochs} epochs, {n1} pairs in {dt:.1f} s ({n1 / dt:.1f} pairs/s)")
    from molm_fast import MoLM
    from molm_fast.training.text import load_tokenizer

    stage1_dir = out / "stage1" / "model"
    t = time.perf_counter()
    ret = api.retrieval_metrics(MoLM.from_pretrained(stage1_dir).eval(), heldout.smiles, heldout.texts,
                                load_tokenizer(stage1_dir / "qformer_tokenizer"), cache=cache)
    _say(f"[retrieval] {ret['pairs']} held-out pairs in {time.perf_counter() - t:.1f} s (spec §4.1): full set "
         f"molecule->text Acc {100 * ret['fullset']['m2t_acc']:.1f}% R@20 {100 * ret['fullset']['m2t_rec20']:.1f}%, "
         f"text->molecule Acc {100 * ret['fullset']['t2m_acc']:.1f}% R@20 {100 * ret['fullset']['t2m_rec20']:.1f}% "
         f"(chance Acc {100 * ret['fullset_chance_acc']:.1f}%, R@20 {min(100, 2000 * ret['fullset_chance_acc']):.0f}%)"
         f"; in-batch Acc {100 * ret['inbatch']['m2t_acc']:.1f}% / {100 * ret['inbatch']['t2m_acc']:.1f}% (chance "
         f"{100 * ret['inbatch_chance_acc']:.1f}%)")

    props = _property_data(train, seed=seed)
    cfg2 = training_config("tiny", 3, out_dir=str(out / "stage2"), init_from=str(out / "stage1" / "model"),
                           max_steps=(8 if quick else 240), progress=not quick, ckpt_every=10_000, seed=seed,
                           text_max_length=640)  # the tiny char-level tokenizer: prompt + target fit whole
    t = time.perf_counter()
    r2 = train_stage2(cfg2, train_data=[train, props], eval_data=heldout)
    dt = time.perf_counter() - t
    n2 = cfg2.max_steps * cfg2.batch_size * cfg2.grad_accum
    _say(f"[stage 2] captions + {len(props)} property QA items: {cfg2.max_steps} steps, {n2} samples in {dt:.1f} s "
         f"({n2 / dt:.1f} samples/s); held-out LM loss {r2['eval_loss_before']:.3f} -> {r2['eval_loss_after']:.3f}")
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    shutil.copytree(out / "stage2" / "model", model_dir)
    model = MoLM.from_pretrained(model_dir).eval()
    n_show = 8 if quick else 24
    held = held_rows[:n_show]
    t = time.perf_counter()
    caps = api.caption(model, [r[1].replace("\\\\", "\\") for r in held], greedy=True, cache=cache)
    dt = time.perf_counter() - t
    ok = [(c, r) for c, r in zip(caps, held) if c.status == "ok"]
    scores = metrics.caption_metrics([c.answer for c, _ in ok], [r[2] for _, r in ok], model.llm.tokenizer)
    _say(f"[caption] {len(ok)} held-out molecules in {dt:.1f} s ({len(ok) / dt:.1f} mol/s, greedy); "
         + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()) + " (LLM-tokenizer path, spec §4.2)")
    for c, r in ok[:3]:
        _say(f"  {r[0]} {r[1][:40]}\n    model:     {c.answer[:150]!r}\n    reference: {r[2][:150]!r}")

    from molm_fast.data.moit import RDKIT_COMPUTABLE

    qa_items = _property_data(heldout, seed=seed)
    take = [i for i, task in enumerate(qa_items.tasks) if task in RDKIT_COMPUTABLE][: (12 if quick else 48)]
    t = time.perf_counter()
    answers = api.answer(model, [qa_items.smiles[i] for i in take], [qa_items.instructions[i] for i in take],
                         tasks=[qa_items.tasks[i] for i in take], greedy=True, cache=cache)
    dt = time.perf_counter() - t
    good = [(a, i) for a, i in zip(answers, take) if a.status == "ok"]
    qa = metrics.property_qa_metrics([a.answer for a, _ in good], [qa_items.texts[i] for _, i in good],
                                     [qa_items.tasks[i] for _, i in good])
    _say(f"[qa] {len(good)} property questions in {dt:.1f} s; " + "; ".join(
        f"{task}: valid {100 * m['valid_ratio']:.0f}%, MAE {m['mae']:.2f}" for task, m in qa.items()))
    if good:
        a, i = good[0]
        _say(f"  Q: {qa_items.instructions[i]}\n  A: {a.answer!r}  (reference: {qa_items.texts[i]!r})")
    report = {"seed": seed, "retrieval": ret, "caption": scores, "qa": qa, "model": str(model_dir),
              "seconds": time.perf_counter() - t_all}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    _say(f"[done] {report['seconds']:.0f} s. Models: {model_dir} (captions, QA), {stage1_dir} (embed, retrieve). "
         f"Try:\n  molm-fast caption --model {model_dir} --input {eval_tsv} --output {out / 'captions.jsonl'} "
         f"--greedy\n  molm-fast retrieve --model {stage1_dir} --input {eval_tsv} --texts {eval_tsv} "
         f"--output {out / 'retrieved.jsonl'}")
    return 0


def run_bench(model, input_path: str | None, *, n: int = 32, batch_size: int = 16) -> dict[str, Any]:
    """Throughput per inference stage on ``n`` molecules: conformers, encoder + Q-Former, generation (fast vs HF)."""
    from molm_fast import MoLM
    from molm_fast.data import ConformerConfig, MoleculeStore, generate_conformers
    from molm_fast.inference.generate import GenerationSettings, generate, generate_reference

    if model is None:
        torch.manual_seed(0)
        model = MoLM("tiny").eval()
    smiles = [r[1].replace("\\\\", "\\") for r in asset_rows("heldout")[1:]] if input_path is None else None
    if smiles is None:
        from molm_fast.inference.api import read_input

        smiles = [r.smiles for r in read_input(input_path) if r.ok]
    smiles = smiles[:n]
    dev = next(model.parameters()).device
    report: dict[str, Any] = {"device": str(dev), "molecules": len(smiles)}
    t = time.perf_counter()
    records = generate_conformers(smiles, ConformerConfig(), workers=0, progress=False)
    report["conformers_per_s"] = len(smiles) / (time.perf_counter() - t)
    store = MoleculeStore.from_records(records)
    batch = store.batch(list(range(min(batch_size, len(store)))), layout="padded")
    tokens, coords = batch.tokens.to(dev), batch.coords.to(dev)
    with torch.no_grad():
        model.mol_embeds(tokens, coords)  # warm-up
        t = time.perf_counter()
        mol = model.mol_embeds(tokens, coords)
        report["encode_molecules_per_s"] = len(tokens) / (time.perf_counter() - t)
        kept = [records[int(i)].smiles for i in store.record_index[:len(tokens)]]
        enc = model.encode_prompts(kept, padding_side="left")
        embeds = model.llm.embed(enc["input_ids"].to(dev), mol)
        mask = enc["attention_mask"].to(dev)
        s = GenerationSettings(max_new_tokens=64, min_new_tokens=64, num_beams=1)
        for name, fn in (("hf_generate", generate_reference), ("fast", generate)):
            fn(model.llm.llm_model, embeds[:2], mask[:2], GenerationSettings(max_new_tokens=4, min_new_tokens=4,
                                                                             num_beams=1))
            t = time.perf_counter()
            out = fn(model.llm.llm_model, embeds, mask, s)
            report[f"greedy_{name}_tokens_per_s"] = out.numel() / (time.perf_counter() - t)
    report["greedy_speedup"] = report["greedy_fast_tokens_per_s"] / report["greedy_hf_generate_tokens_per_s"]
    for k, v in report.items():
        _say(f"{k:>36}: {v:.2f}" if isinstance(v, float) else f"{k:>36}: {v}")
    return report
