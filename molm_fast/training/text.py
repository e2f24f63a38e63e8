"""Stage-1 text side: the Q-Former tokenizer and text batches (stage 2/3 prompts and sequences are
``molm_fast.models.llm``'s ``build_prompt`` / ``encode_training_batch``).

Paper: SciBERT's BertTokenizer + ``[DEC]`` (spec §1.3), loaded from a local folder. ``tiny`` (tests, the CPU demo;
no download possible) builds a lower-cased WordPiece of the same shape from the training texts: [PAD]=0, [UNK],
[CLS], [SEP], [MASK], characters, subwords learnt by byte-pair merges, then [DEC]. It is saved beside the
checkpoints (``qformer_tokenizer/``).
"""

from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch


def bpe_merges(words: Counter[str], num_merges: int) -> list[str]:
    """Deterministic byte-pair merges over ``words`` (word -> count) in WordPiece spelling: a word starts as
    [w0, ##w1, ##w2, ...]; the most frequent adjacent pair (ties: the smaller pair by spelling) becomes one symbol,
    until ``num_merges`` distinct symbols are made or no pair occurs twice. Returns the new symbols in merge order."""
    seqs = {w: [w[0]] + [f"##{c}" for c in w[1:]] for w in words}
    counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for w, s in seqs.items():
        for pair in zip(s, s[1:]):
            counts[pair] += words[w]
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    merged: list[str] = []
    merged_set: set[str] = set()
    while heap and len(merged) < num_merges:
        neg, pair = heapq.heappop(heap)
        if -neg != counts[pair]:
            continue  # stale entry: the count changed since it was pushed
        if -neg < 2:
            break
        new = pair[0] + pair[1][2:]
        if new not in merged_set:  # ("ab", "##c") and ("a", "##bc") both spell "abc"
            merged.append(new)
            merged_set.add(new)
        touched = set()
        for w in sorted(where.pop(pair)):
            s, f = seqs[w], words[w]
            for p in zip(s, s[1:]):
                counts[p] -= f
                where[p].discard(w)
                touched.add(p)
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
            for p in zip(out, out[1:]):
                counts[p] += f
                where[p].add(w)
                touched.add(p)
        for p in sorted(touched):
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
    return merged


def build_wordpiece_tokenizer(texts: Sequence[str], vocab_size: int = 2000):
    """A BertTokenizerFast built from ``texts`` with [PAD]=0 and ``[DEC]`` as its bos_token (stage-1 tiny).

    Deterministic (the ``tokenizers`` trainers are not: their ties follow hash order): the vocabulary is the
    specials, every character seen (alone and as a ``##`` continuation), then up to ``vocab_size`` in all of the
    subwords of ``bpe_merges`` (chemistry morphemes such as "hydroxy", "##methyl", "##ic" are shared by many
    molecules' descriptions, including words never seen whole).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for t in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = sorted({c for w in words for c in w})
    vocab = specials + chars + [f"##{c}" for c in chars]
    vocab += bpe_merges(words, max(vocab_size - len(vocab), 0))  # distinct, and never a single character
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
