"""The ``molm-fast`` command: demo, caption, qa, embed, retrieve, eval, convert, bench.

Inputs are SMILES files (``SMILES [id]`` per line), CSV/TSV with a SMILES column, or SDF. ``caption`` and ``qa``
write JSONL: one record per input item, in input order: ``index``, ``id``, ``status`` ("ok" or "error"),
``answer`` and, when not ok, ``error`` (the reason). Results are appended chunk by chunk as they are made; rerunning
the same command skips the items already in the output (a half-written last line is dropped and redone).
An unusable input (missing file, unreadable format, no molecules) or model directory prints one clear message and
exits with status 2; a bad molecule is one error record and the job goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class UsageError(Exception):
    """Something the user must fix (printed without a traceback, exit status 2)."""


# ------------------------------------------------------------------------------------------------ helpers
def _load_model(args):
    import torch

    from molm_fast import MoLM

    d = Path(args.model)
    if not (d / "config.json").is_file():
        raise UsageError(f"--model {d} is not a model directory (no config.json); make one with `molm-fast demo` "
                         f"or `molm-fast convert`")
    model = MoLM.from_pretrained(d)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def _read_records(path: str) -> list:
    from molm_fast.inference.api import read_input

    try:
        records = read_input(path)
    except FileNotFoundError as exc:
        raise UsageError(f"--input: {exc}") from exc
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"--input {path} cannot be read: {exc}") from exc
    return records


def _resume(out: Path, records: list) -> set[int]:
    """Indices already written to ``out``; drops a half-written last line; refuses output of another input."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        return set()
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    good, done = [], {}
    for line in lines:
        try:
            d = json.loads(line)
            done[int(d["index"])] = str(d["id"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            break  # an interrupted write: keep what came before, redo the rest
        if not line.endswith("\n"):
            line += "\n"
        good.append(line)
    if len(good) != len(lines) or "".join(good) != "".join(lines):
        out.write_text("".join(good), encoding="utf-8")
    ids = {r.index: r.id for r in records}
    for i, ident in done.items():
        if ids.get(i) != ident:
            raise UsageError(f"--output {out} holds results for another input (item {i} is {ident!r} there, "
                             f"{ids.get(i)!r} here); remove it or choose another --output")
    return set(done)


def _run_jsonl(args, records: list, work) -> int:
    """Run ``work(chunk_records) -> results`` over the items not yet in ``args.output``, appending in input order."""
    from tqdm import tqdm

    out = Path(args.output)
    done = _resume(out, records)
    todo = [r for r in records if r.index not in done]
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=args.command, unit="mol",
               disable=args.quiet)
    n_ok = n_err = 0
    with open(out, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), args.chunk_size):
            results = work(todo[start:start + args.chunk_size])
            for res in sorted(results, key=lambda r: r.index):
                f.write(json.dumps(res.to_json(), ensure_ascii=False) + "\n")
                n_ok, n_err = n_ok + (res.status == "ok"), n_err + (res.status != "ok")
            f.flush()
            bar.update(len(results))
    bar.close()
    print(f"{args.command}: {n_ok} ok, {n_err} errors, {len(records) - len(todo)} already done -> {out}",
          file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------- commands
def cmd_caption(args) -> int:
    from molm_fast.inference import api

    records = _read_records(args.input)
    model = _load_model(args)

    def work(chunk):
        return api.caption(model, chunk, batch_size=args.batch_size, greedy=args.greedy, fast=not args.reference,
                           cache=args.cache, workers=args.workers)

    return _run_jsonl(args, records, work)


def cmd_qa(args) -> int:
    from molm_fast.inference import api

    records = _read_records(args.input)
    for r in records:
        question = r.properties.get("question") or args.question
        if r.ok and not question:
            raise UsageError("qa: give --question or a 'question' column in the input")
        r.properties["question"] = question
        r.properties["task"] = r.properties.get("task") or args.task
    for t in {r.properties["task"] for r in records} - {None, ""}:
        try:
            api.task_settings(t)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    model = _load_model(args)

    def work(chunk):
        return api.answer(model, chunk, [r.properties["question"] or "" for r in chunk],
                          tasks=[r.properties["task"] or None for r in chunk], batch_size=args.batch_size,
                          greedy=args.greedy, fast=not args.reference, cache=args.cache, workers=args.workers)

    return _run_jsonl(args, records, work)


def _tokenizer(args):
    """The Q-Former text tokenizer: --tokenizer, else ``<model>/qformer_tokenizer`` (saved by training)."""
    from transformers import AutoTokenizer

    path = Path(args.tokenizer) if args.tokenizer else Path(args.model) / "qformer_tokenizer"
    if not path.is_dir():
        raise UsageError(f"no Q-Former text tokenizer at {path}; pass --tokenizer DIR (retrieval needs a stage-1 "
                         f"model, e.g. molm-fast-demo/stage1/model)")
    return AutoTokenizer.from_pretrained(str(path))


def _texts(path: str) -> list[str]:
    """Candidate texts: a TSV/CSV with a 'description' (or 'text') column, else one text per line."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--texts {p} does not exist")
    if p.suffix.lower() in (".tsv", ".csv"):
        records = _read_records(path)
        key = next((k for k in ("description", "text") if records and k in records[0].properties), None)
        if key is None:
            raise UsageError(f"--texts {p} needs a 'description' or 'text' column")
        return [r.properties[key] for r in records]
    texts = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()]
    if not texts:
        raise UsageError(f"--texts {p} is empty")
    return texts


def _check_stage1(model) -> None:
    if not model.config.qformer.text_side:
        raise UsageError("this model has no Q-Former text side (a stage-2/3 model): embed and retrieve need a "
                         "stage-1 model directory (e.g. molm-fast-demo/stage1/model)")


def cmd_embed(args) -> int:
    from molm_fast.inference.embed import EmbedSettings, embed_molecules

    _read_records(args.input)  # unusable input: a clear message before any work
    model = _load_model(args)
    _check_stage1(model)
    index = embed_molecules(model, args.input, args.output, settings=EmbedSettings(batch_size=args.batch_size),
                            cache=args.cache, workers=args.workers, progress=not args.quiet)
    ok = sum(s["ok"] for s in index["shards"])
    print(f"embed: {ok} of {index['items']} molecules embedded -> {args.output} (index.json, molecule-*.npy "
          f"[n, Q, E] float32 with NaN rows for failed items, molecule-*.jsonl per-item status)", file=sys.stderr)
    return 0


def cmd_retrieve(args) -> int:
    from molm_fast.inference import api

    records = _read_records(args.input)
    texts = _texts(args.texts)
    model = _load_model(args)
    _check_stage1(model)
    tokenizer = _tokenizer(args)
    text_features = api.embed_texts(model, tokenizer, texts)  # once, for every chunk

    def work(chunk):
        return api.retrieve(model, chunk, texts, tokenizer, k=args.top_k, cache=args.cache, workers=args.workers,
                            text_features=text_features)

    return _run_jsonl(args, records, work)


def cmd_convert(args) -> int:
    from molm_fast.models.checkpoint import convert_lightning_checkpoint

    if not Path(args.checkpoint).is_file():
        raise UsageError(f"--checkpoint {args.checkpoint} does not exist")
    from molm_fast.models import get_config

    config = get_config(args.config) if args.config else None
    if config is not None and args.stage1:
        config = config.stage1()
    _, report = convert_lightning_checkpoint(args.checkpoint, config=config, unimol_path=args.unimol,
                                             llm_path=args.llm, out_dir=args.output)
    print(f"convert: wrote {args.output}; {report}")
    return 0


def cmd_eval(args) -> int:
    from molm_fast.inference import api, metrics

    records = _read_records(args.input)
    model = _load_model(args)
    if args.task == "caption":
        key = next((k for k in ("description", "caption", "text") if records and k in records[0].properties), None)
        if key is None:
            raise UsageError("eval --task caption needs a 'description' column (e.g. ChEBI-20 CID/SMILES/description)")
        if args.metric_tokenizer is None:
            raise UsageError("eval --task caption needs --metric-tokenizer: 'llm' (the model's LLM tokenizer, the "
                             "generalist path) or a Hugging Face tokenizer directory (SciBERT: the specialist path)")
        results = api.caption(model, records, batch_size=args.batch_size, greedy=args.greedy,
                              fast=not args.reference, cache=args.cache, workers=args.workers)
        if args.metric_tokenizer == "llm":
            tokenizer = model.llm.tokenizer
        else:
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(args.metric_tokenizer)
        ok = [(res, r) for res, r in zip(results, records) if res.status == "ok"]
        if not ok:
            raise UsageError("eval: no molecule could be captioned")
        scores = metrics.caption_metrics([res.answer for res, _ in ok],
                                         [r.properties[key] for _, r in ok], tokenizer)
    elif args.task == "retrieval":
        _check_stage1(model)
        key = next((k for k in ("description", "text") if records and k in records[0].properties), None)
        if key is None:
            raise UsageError("eval --task retrieval needs a 'description' column (molecule-text pairs)")
        scores = api.retrieval_metrics(model, records, [r.properties[key] for r in records], _tokenizer(args),
                                       cache=args.cache, workers=args.workers)
        ok = [None] * scores["pairs"]
    else:  # qa: columns question, answer, task
        missing = [c for c in ("question", "answer", "task") if records and c not in records[0].properties]
        if missing:
            raise UsageError(f"eval --task qa needs columns question, answer, task; missing {missing}")
        results = api.answer(model, records, [r.properties["question"] for r in records],
                             tasks=[r.properties["task"] for r in records], batch_size=args.batch_size,
                             greedy=args.greedy, fast=not args.reference, cache=args.cache, workers=args.workers)
        ok = [(res, r) for res, r in zip(results, records) if res.status == "ok"]
        scores = metrics.generalist_metrics([res.answer for res, _ in ok], [r.properties["answer"] for _, r in ok],
                                            [r.properties["task"] for _, r in ok], model.llm.tokenizer)
    report = {"task": args.task, "items": len(records), "evaluated": len(ok), "metrics": scores}
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def cmd_demo(args) -> int:
    from molm_fast.inference.demo import run_demo

    return run_demo(args.output, quick=args.quick, seed=args.seed, threads=args.threads)


def cmd_bench(args) -> int:
    from molm_fast.inference.demo import run_bench

    model = _load_model(args) if args.model else None
    report = run_bench(model, args.input, n=args.n, batch_size=args.batch_size)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser, *, output_help: str) -> None:
    p.add_argument("--input", required=True, help="SMILES file, CSV/TSV with a SMILES column, or SDF")
    p.add_argument("--output", required=True, help=output_help)
    p.add_argument("--model", required=True, help="model directory (from `molm-fast demo` or `convert`)")
    _runtime(p)


def _runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=16, help="molecules per batch (bucketed by size)")
    p.add_argument("--chunk-size", type=int, default=64, help="items per appended chunk of output")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of the reference beam 5")
    p.add_argument("--reference", action="store_true", help="decode with Hugging Face generate (upstream path)")
    p.add_argument("--cache", default=None, help="on-disk conformer cache (SQLite) to reuse across runs")
    p.add_argument("--workers", type=int, default=0, help="conformer processes (0: in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molm-fast", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train the tiny model on the bundled ChEBI-20 subset and use it (CPU, minutes)")
    p.add_argument("--output", default="molm-fast-demo", help="where the model and reports go")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (tests)")
    p.add_argument("--seed", type=int, default=0, help="training seed (model init, batch order)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on busy cores)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("caption", help="describe molecules (JSONL)")
    _common(p, output_help="JSONL, one record per input item")
    p.set_defaults(func=cmd_caption)
    p = sub.add_parser("qa", help="answer a question per molecule (JSONL)")
    _common(p, output_help="JSONL, one record per input item")
    p.add_argument("--question", default=None, help="question for every molecule (else a 'question' column)")
    p.add_argument("--task", default=None, help="property task (e.g. LogP) for limits and value parsing")
    p.set_defaults(func=cmd_qa)
    p = sub.add_parser("eval", help="caption or QA metrics against references (spec §4)")
    _common(p, output_help="metrics JSON")
    p.add_argument("--task", choices=("caption", "qa", "retrieval"), default="caption")
    p.add_argument("--metric-tokenizer", default=None, help="'llm' or a tokenizer directory for BLEU/METEOR")
    p.add_argument("--tokenizer", default=None, help="retrieval: Q-Former text tokenizer (default: in --model)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("embed", help="retrieval features of molecules (resumable .npy shards + status JSONL)")
    _common(p, output_help="output directory")
    p.set_defaults(func=cmd_embed, batch_size=256)
    p = sub.add_parser("retrieve", help="the best texts for each molecule (JSONL)")
    _common(p, output_help="JSONL, one record per input item")
    p.add_argument("--texts", required=True, help="candidate texts: one per line, or TSV/CSV with a description")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--tokenizer", default=None, help="Q-Former text tokenizer (default: <model>/qformer_tokenizer)")
    p.set_defaults(func=cmd_retrieve)
    p = sub.add_parser("convert", help="released 3D-MoLM .ckpt -> safetensors model directory")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output", required=True, help="model directory to write")
    p.add_argument("--unimol", default=None, help="Uni-Mol weights mol_pre_no_h_220816.pt")
    p.add_argument("--llm", default=None, help="local Llama-2-7B directory (Hugging Face layout)")
    p.add_argument("--config", choices=("paper", "tiny"), default=None,
                   help="model preset (default: paper, stage from the checkpoint's key prefix)")
    p.add_argument("--stage1", action="store_true", help="with --config: the stage-1 variant (no LLM)")
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("bench", help="throughput per stage (conformers, encoder, generation)")
    p.add_argument("--model", default=None, help="model directory (default: a random tiny model)")
    p.add_argument("--input", default=None, help="molecules (default: the bundled demo subset)")
    p.add_argument("--output", default=None, help="also write the numbers as JSON")
    p.add_argument("--n", type=int, default=32, help="molecules to time")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        code = args.func(args)
    except UsageError as exc:
        print(f"molm-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if args.command not in ("demo", "bench"):
        print(f"molm-fast {args.command}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
