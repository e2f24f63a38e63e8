"""Packed vs padded stage-2 layouts on a tiny random HF Llama: the same logits at every real token, the same loss."""

from __future__ import annotations

import pytest
import torch

from molm_fast.training.losses import lm_loss
from molm_fast.training.packing import (
    pack_sequences,
    packed_attention_kwargs,
    pad_sequences,
    unpack_rows,
    use_packed_attention,
)
from tests.utils import assert_close_to_reference


def _tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).eval()


def _samples(lengths):
    ids, labels = [], []
    for n in lengths:
        x = torch.randint(3, 97, (n,)).tolist()
        k = max(1, n // 2)  # prompt length: labels -100 over the prompt (token type 0)
        ids.append(x)
        labels.append([-100] * k + x[k:])
    return ids, labels


@pytest.mark.parametrize("attn", ["sdpa", "eager", "molm_fast_packed"])
@pytest.mark.parametrize("lengths", [[1, 2], [7, 3, 12], [5], [9, 9, 1, 30]])
def test_packed_equals_padded(attn, lengths):
    torch.manual_seed(torch.initial_seed() % 2**31)
    model = _tiny_llama("sdpa" if attn == "molm_fast_packed" else attn)
    extra = {}
    if attn == "molm_fast_packed":
        use_packed_attention(model)
    ids, labels = _samples(lengths)
    packed = pack_sequences(ids, labels)
    padded = pad_sequences(ids, labels, pad_id=0, max_length=max(lengths) + 3)
    if attn == "molm_fast_packed":
        extra = packed_attention_kwargs(packed["cu_seqlens"], packed["max_seqlen"])
    with torch.no_grad():
        lp = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False,
                   **extra).logits
        lr = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False).logits
    L = padded["input_ids"].shape[1]
    for b, rows in enumerate(unpack_rows(lp, packed["cu_seqlens"])):
        n = lengths[b]
        assert_close_to_reference(rows, lr[b, L - n:], name=f"{attn} logits of sample {b} (n={n})")
    if any(x != -100 for y in labels for x in y):
        assert_close_to_reference(lm_loss(lp, packed["labels"]), lm_loss(lr, padded["labels"]), name="lm loss")
    assert packed["stats"]["real_tokens"] == padded["stats"]["real_tokens"] == sum(lengths)
    assert packed["stats"]["token_slots"] == sum(lengths) < padded["stats"]["token_slots"]


def test_packing_layout_and_errors():
    p = pack_sequences([[5, 6, 7], [8, 9]], [[-100, 6, 7], [-100, 9]])
    assert p["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert p["cu_seqlens"].tolist() == [0, 3, 5] and p["cu_seqlens"].dtype == torch.int32
    assert p["max_seqlen"] == 3
    with pytest.raises(ValueError, match="first label must be -100"):
        pack_sequences([[1, 2]], [[1, 2]])
    with pytest.raises(ValueError, match="sample 0 has 2 input_ids and 1 labels"):
        pack_sequences([[1, 2]], [[-100]])
    with pytest.raises(ValueError, match="max_length 2"):
        pad_sequences([[1, 2, 3]], [[-100, 2, 3]], pad_id=0, max_length=2)


@pytest.mark.gpu
def test_packed_attention_varlen_on_cuda_matches_padded_fp32():
    model = _tiny_llama("sdpa").cuda()
    use_packed_attention(model)
    lengths = [9, 33, 1, 17]
    ids, labels = _samples(lengths)
    packed = {k: v.cuda() if torch.is_tensor(v) else v for k, v in pack_sequences(ids, labels).items()
              if k != "stats"}
    padded = pad_sequences(ids, labels, pad_id=0)
    with torch.no_grad():
        ref = model(input_ids=padded["input_ids"].cuda(), attention_mask=padded["attention_mask"].cuda(),
                    use_cache=False).logits
        with torch.autocast("cuda", dtype=torch.bfloat16):  # bf16 q/k/v: torch's FlashAttention varlen path
            out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False,
                        **packed_attention_kwargs(packed["cu_seqlens"], packed["max_seqlen"])).logits
    L = padded["input_ids"].shape[1]
    for b, rows in enumerate(unpack_rows(out.float(), packed["cu_seqlens"])):
        assert_close_to_reference(rows, ref[b, L - lengths[b]:], name=f"varlen logits of sample {b}",
                                  dtype=torch.bfloat16)
