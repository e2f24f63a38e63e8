"""The tiny Q-Former tokenizer: deterministic byte-pair subwords in WordPiece spelling (molm_fast/training/text.py)."""

from __future__ import annotations

from collections import Counter

from molm_fast.training.text import bpe_merges, build_wordpiece_tokenizer

TEXTS = ["The molecule is a hydroxyflavone.", "The molecule is a methylflavone and a hydroxy acid.",
         "The molecule is a dimethylamine.", "The molecule is a trihydroxybenzoic acid."] * 3


def test_bpe_merges_by_hand():
    # abab x2, ab x3: (a, ##b) occurs 5 times -> "ab"; then (##a, ##b) and (ab, ##a) tie at 2 and the smaller
    # spelling wins -> "##ab"; then (ab, ##ab) -> "abab"; no pair is left
    assert bpe_merges(Counter({"abab": 2, "ab": 3}), 10) == ["ab", "##ab", "abab"]
    assert bpe_merges(Counter({"abab": 2, "ab": 3}), 1) == ["ab"]
    assert bpe_merges(Counter({"xyz": 1}), 10) == []  # no pair occurs twice


def test_tokenizer_is_deterministic_and_bert_shaped():
    a, b = build_wordpiece_tokenizer(TEXTS, vocab_size=80), build_wordpiece_tokenizer(TEXTS, vocab_size=80)
    assert a.get_vocab() == b.get_vocab()
    assert len(a) == 81  # 80 + [DEC]
    assert a.pad_token_id == 0 and a.convert_ids_to_tokens(a.bos_token_id) == "[DEC]"
    ids = a("The molecule is a hydroxy acid.")["input_ids"]
    assert ids[0] == a.cls_token_id and ids[-1] == a.sep_token_id
    assert a.decode(ids, skip_special_tokens=True) == "the molecule is a hydroxy acid."


def test_unseen_word_splits_into_learnt_subwords():
    tok = build_wordpiece_tokenizer(TEXTS, vocab_size=200)
    pieces = tok.tokenize("dihydroxyflavone")  # never seen whole
    assert "[UNK]" not in pieces and len(pieces) < len("dihydroxyflavone") // 2, pieces
    assert "".join(p.removeprefix("##") for p in pieces) == "dihydroxyflavone"
