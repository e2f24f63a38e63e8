"""Stage-1 text side: the Q-Former tokenizer and text batches (stage 2/3 prompts and sequences are
``molm_fast.models.llm``'s ``build_prompt`` / ``encode_training_batch``).

Paper: SciBERT's BertTokenizer + ``[DEC]`` (spec §1.3), loaded from a local folder. ``tiny`` (tests, the CPU demo;
no download possible) builds a lower-cased WordPiece of the same shape from the training texts: [PAD]=0, [UNK],
[CLS], [SEP], [MASK], characters, frequent words, then [DEC]. It is saved beside the checkpoints
(``qformer_tokenizer/``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def build_wordpiece_tokenizer(texts: Sequence[str], vocab_size: int = 2000):
    """A BertTokenizerFast built from ``texts`` with [PAD]=0 and ``[DEC]`` as its bos_token (stage-1 tiny).

    Deterministic (the ``tokenizers`` WordPiece trainer is not: its ties depend on hash order): the vocabulary is
    the specials, every character seen (alone and as a ``##`` continuation), then the most frequent whole words
    (ties by spelling) up to ``vocab_size``; other words split into characters.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for t in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = sorted({c for w in words for c in w})
    vocab = specials + chars + [f"##{c}" for c in chars]
    ranked = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab += ranked[:max(vocab_size - len(vocab), 0)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, splitter, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]")
    fast.add_special_tokens({"bos_token": "[DEC]"})
    return fast


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.fspath(path))


def text_batch(tokenizer, texts: Sequence[str], *, max_length: int, padding: str) -> dict[str, torch.Tensor]:
    """Stage-1 text: [CLS] text [SEP], truncated to max_length; ``padding`` "max_length" (upstream) or "longest"
    (same losses: pads are masked keys and -100 labels). -> input_ids [B, L], attention_mask [B, L]."""
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
