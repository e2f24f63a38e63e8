"""Stage-1 text side: the Q-Former tokenizer and text batches (stage 2/3 prompts and sequences are
``molm_fast.models.llm``'s ``build_prompt`` / ``encode_training_batch``).

Paper: SciBERT's BertTokenizer + ``[DEC]`` (spec §1.3), loaded from a local folder. ``tiny`` (tests, the CPU demo;
no download possible) trains a lower-cased WordPiece of the same shape on the training texts with the
``tokenizers`` library: [PAD]=0, [UNK], [CLS], [SEP], [MASK], then the vocabulary, then [DEC]. It is saved beside
the checkpoints (``qformer_tokenizer/``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch


def build_wordpiece_tokenizer(texts: Sequence[str], vocab_size: int = 2000):
    """A BertTokenizerFast trained on ``texts`` with [PAD]=0 and ``[DEC]`` as its bos_token (stage-1 tiny)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                             show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
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
