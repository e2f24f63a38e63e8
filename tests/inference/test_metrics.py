"""Metrics against values computed by hand on small cases (spec §4.2, §4.3)."""

from __future__ import annotations

import math

import pytest

from molm_fast.inference.metrics import (
    caption_metrics,
    generalist_metrics,
    is_valid_value,
    parse_number,
    property_qa_metrics,
    wordnet,
)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


# --- BLEU ------------------------------------------------------------------------------------------------------

def test_bleu_corpus_hand_computed():
    # pair 1: 6 vs 6 tokens, last differs; pair 2: 4 tokens, reference has one more.
    preds = ["a b c d e f", "x y z w"]
    refs = ["a b c d e g", "x y z w v"]
    m = caption_metrics(preds, refs, str.split)
    p1, p2, p3, p4 = 9 / 10, 7 / 8, 5 / 6, 3 / 4  # clipped n-gram matches / hypothesis n-grams, summed over corpus
    bp = math.exp(1 - 11 / 10)  # hypothesis length 10 < reference length 11
    assert _close(m["bleu2"], 100 * bp * math.sqrt(p1 * p2))
    assert _close(m["bleu4"], 100 * bp * (p1 * p2 * p3 * p4) ** 0.25)


def test_bleu_clips_repeated_tokens():
    m = caption_metrics(["a a b"], ["a b c"], str.split)
    # unigrams: 'a' counted once (clipped) + 'b' = 2/3; bigrams: 'a b' = 1/2; equal lengths, BP = 1
    assert _close(m["bleu2"], 100 * math.sqrt(2 / 3 * 1 / 2))


# --- METEOR ----------------------------------------------------------------------------------------------------

def _meteor(m: int, hyp_len: int, ref_len: int, chunks: int) -> float:
    precision, recall = m / hyp_len, m / ref_len
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    return fmean * (1 - 0.5 * (chunks / m) ** 3)


def test_meteor_exact_matches_and_fragmentation():
    # all 4 hypothesis words match, in 2 chunks ("molecule is" | "an acid"); the reference has one extra word
    m = caption_metrics(["molecule is an acid"], ["an acid molecule is it"], str.split)
    assert _close(m["meteor"], 100 * _meteor(4, 4, 5, 2))


def test_meteor_stem_and_wordnet_synonym():
    # 'acids' ~ 'acid' through the Porter stemmer; 'dog' ~ 'frump' only through WordNet 3.0 (dog.n.02 = frump)
    stem = caption_metrics(["the acids"], ["the acid"], str.split)["meteor"]
    synonym = caption_metrics(["the dog"], ["the frump"], str.split)["meteor"]
    assert _close(stem, 100 * _meteor(2, 2, 2, 1))
    assert _close(synonym, 100 * _meteor(2, 2, 2, 1))
    assert "frump" in {lemma.name() for s in wordnet().synsets("dog") for lemma in s.lemmas()}


def test_meteor_is_a_mean_over_samples_and_empty_prediction_scores_zero():
    m = caption_metrics(["molecule is an acid", ""], ["an acid molecule is it", "anything"], str.split)
    assert _close(m["meteor"], 100 * _meteor(4, 4, 5, 2) / 2)


# --- ROUGE -----------------------------------------------------------------------------------------------------

def test_rouge_hand_computed_on_raw_strings():
    # rouge-score lowercases and drops punctuation itself; the tokenizer argument does not touch ROUGE
    preds = ["The cat sat on the mat.", "a dog runs"]
    refs = ["the cat is on the mat", "the dog runs fast"]
    m = caption_metrics(preds, refs, lambda s: list(s))  # a character tokenizer: BLEU/METEOR change, ROUGE not
    f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    rouge1 = (f(5 / 6, 5 / 6) + f(2 / 3, 2 / 4)) / 2
    rouge2 = (f(3 / 5, 3 / 5) + f(1 / 2, 1 / 3)) / 2
    rouge_l = (f(5 / 6, 5 / 6) + f(2 / 3, 2 / 4)) / 2  # LCS "the cat on the mat" and "dog runs"
    assert _close(m["rouge1"], 100 * rouge1)
    assert _close(m["rouge2"], 100 * rouge2)
    assert _close(m["rougeL"], 100 * rouge_l)


# --- tokenizer handling ----------------------------------------------------------------------------------------

class _BertLike:
    """A tokenizer object (the Hugging Face interface) that emits the special tokens upstream filters."""

    def tokenize(self, text: str) -> list[str]:
        return ["[CLS]"] + text.split() + ["[SEP]", "[PAD]", "[PAD]"]


def test_special_tokens_are_dropped_and_tokenizer_object_accepted():
    preds, refs = ["a b c d e f", "x y z w"], ["a b c d e g", "x y z w v"]
    assert caption_metrics(preds, refs, _BertLike()) == caption_metrics(preds, refs, str.split)


def test_wordpiece_tokenizer_changes_bleu(tmp_path):
    from transformers import BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "acid", "##s", "is"]) + "\n")
    tok = BertTokenizer(str(vocab))
    assert tok.tokenize("the acids") == ["the", "acid", "##s"]
    # subwords: hypothesis [the, acid, ##s] vs reference [the, acid]: p1 = 2/3, p2 = 1/2, BP = 1 (3 > 2)
    m = caption_metrics(["the acids"], ["the acid"], tok)
    assert _close(m["bleu2"], 100 * math.sqrt(2 / 3 * 1 / 2))


@pytest.mark.parametrize("bad", [None, 3])
def test_caption_metrics_rejects_missing_tokenizer(bad):
    with pytest.raises(TypeError, match="tokenizer"):
        caption_metrics(["a"], ["a"], bad)


def test_caption_metrics_rejects_bad_lengths_and_types():
    with pytest.raises(ValueError, match="same length"):
        caption_metrics(["a", "b"], ["a"], str.split)
    with pytest.raises(ValueError, match="must not be empty"):
        caption_metrics([], [], str.split)
    with pytest.raises(TypeError, match="targets must be strings"):
        caption_metrics(["a"], [None], str.split)


# --- property QA -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("The LogP for the input molecule is 0.80.", 0.80),
    ("-3.25 eV, then 1.0", -3.25),
    ("12.5.3", 12.5),
    ("about 5 units", None),   # an integer has no decimal point: not a match
    ("value -.5", None),
    ("1e-3", None),
    ("", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("task, value, valid", [
    ("HOMO", 19.99, True), ("HOMO", 20.0, False), ("LUMO", -20.0, False), ("HOMO-LUMO Gap", 0.0, True),
    ("SCF Energy", 0.0, False), ("SCF Energy", -4.99, True), ("SCF Energy", -5.0, False),
    ("LogP", -30.0, False), ("LogP", 49.99, True), ("LogP", 50.0, False),
    ("Topological Polar Surface Area", 0.0, True), ("Topological Polar Surface Area", 2000.0, False),
    ("Complexity", 0.0, True), ("Complexity", 10000.0, False),
    ("Molecular Weight", 0.0, False), ("Molecular Weight", 3999.9, True), ("Molecular Weight", 4000.0, False),
    ("LogP", None, False),
])
def test_validity_ranges(task, value, valid):
    assert is_valid_value(task, value) is valid


def test_property_qa_hand_computed():
    preds = ["0.80", "The value is 1.5", "none", "99.0", "-5.5 eV"]
    targets = ["1.00", "1.0", "2.0", "3.0", "The HOMO is -6.0 eV."]
    tasks = ["LogP", "LogP", "LogP", "LogP", "HOMO"]
    out = property_qa_metrics(preds, targets, tasks)
    # LogP: 0.80 (|err| 0.2) and 1.5 (0.5) valid; "none" has no number, 99.0 is out of (-30, 50)
    assert out["LogP"]["n"] == 4 and out["LogP"]["n_valid"] == 2
    assert _close(out["LogP"]["valid_ratio"], 0.5)
    assert _close(out["LogP"]["mae"], (0.2 + 0.5) / 2)
    assert out["HOMO"] == {"n": 1, "n_valid": 1, "valid_ratio": 1.0, "mae": pytest.approx(0.5, rel=1e-12)}


def test_property_qa_no_valid_gives_nan_and_bad_input_raises():
    out = property_qa_metrics(["no idea"], ["1.5"], ["Complexity"])
    assert out["Complexity"]["valid_ratio"] == 0.0 and math.isnan(out["Complexity"]["mae"])
    with pytest.raises(ValueError, match=r"targets\[0\] has no decimal number"):
        property_qa_metrics(["1.0"], ["one"], ["LogP"])
    with pytest.raises(ValueError, match=r"tasks\[0\] must be one of"):
        property_qa_metrics(["1.0"], ["1.0"], ["Boiling point"])
    with pytest.raises(ValueError, match="one entry per prediction"):
        property_qa_metrics(["1.0"], ["1.0"], [])


def test_generalist_metrics_routes_tasks():
    preds = ["The cat sat on the mat.", "0.80", "1.0"]
    targets = ["the cat is on the mat", "1.00", "2.0"]
    tasks = ["Caption", "LogP", "HOMO"]
    out = generalist_metrics(preds, targets, tasks, str.split)
    assert set(out) == {"Caption", "LogP", "HOMO"}
    assert out["Caption"] == caption_metrics(preds[:1], targets[:1], str.split)
    assert _close(out["LogP"]["mae"], 0.2) and _close(out["HOMO"]["mae"], 1.0)
