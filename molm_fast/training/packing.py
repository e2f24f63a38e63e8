"""Stage 2/3 sequence layouts for the causal LM: packed (fast) and padded (reference), same loss.

Packed: the B samples of a micro-batch are concatenated into one row of T = sum of their lengths, with
position_ids restarting at 0 for each sample and NO attention mask. Any Hugging Face Llama attention then keeps
each token inside its own sample: sdpa/eager through a block-diagonal causal mask built from the position resets
(transformers >= 4.54, ``find_packed_sequence_indices``; ``use_cache=False`` is required), flash-attention through
varlen cu_seqlens. Those dense masks still compute all T^2 scores, so ``use_packed_attention(model)`` installs
``packed_attention_forward`` (registered as ``molm_fast_packed``): given ``packed_attention_kwargs(cu_seqlens)``
it runs causal attention per sample (torch's FlashAttention ``varlen_attn`` on CUDA, one SDPA call per sample
elsewhere: sum n_b^2 scores, nothing across samples); without them it is plain sdpa (padded batches, generation).
The first label of every sample is -100 (the prompt's BOS), so the shifted loss never crosses a sample boundary.
Padded: upstream's TrainCollater layout (spec 3d-molm.md §1.4): LEFT padding with the pad id to ``max_length``
(stage 2) or to the longest sample (stage 3), attention_mask 0 on pads, labels -100 on pads; positions 0..L-1
including pads, as HF does without explicit position_ids. RoPE is relative, so both layouts give the same
logits at every real token and the same loss.

Shapes: B samples, L padded length, T packed tokens; cu_seqlens [B+1] int32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], fn: str) -> None:
    if len(input_ids) != len(labels) or not input_ids:
        raise ValueError(f"{fn}: need the same positive number of input_ids and labels, got {len(input_ids)} and "
                         f"{len(labels)}")
    for i, (ids, lab) in enumerate(zip(input_ids, labels)):
        if len(ids) != len(lab) or not ids:
            raise ValueError(f"{fn}: sample {i} has {len(ids)} input_ids and {len(lab)} labels (must be equal, > 0)")
        if lab[0] != -100:
            raise ValueError(f"{fn}: sample {i}'s first label must be -100 (prompt BOS), got {lab[0]}")


def pack_sequences(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> dict:
    """B variable-length samples -> one packed row.

    Returns input_ids [1, T] int64, position_ids [1, T] int64 (restarting per sample), labels [1, T] int64,
    cu_seqlens [B+1] int32, max_seqlen, stats (molecules, real_tokens, token_slots; slots = T: nothing padded).
    """
    _check(input_ids, labels, "pack_sequences")
    lengths = torch.tensor([len(x) for x in input_ids], dtype=torch.int64)  # [B]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    T = int(cu[-1])
    ids = torch.tensor([t for x in input_ids for t in x], dtype=torch.int64)  # [T]
    lab = torch.tensor([t for x in labels for t in x], dtype=torch.int64)  # [T]
    pos = torch.arange(T) - torch.repeat_interleave(cu[:-1].to(torch.int64), lengths)  # [T]
    real = int((lab != -100).sum())
    return {"input_ids": ids[None], "position_ids": pos[None], "labels": lab[None], "cu_seqlens": cu,
            "max_seqlen": int(lengths.max()),
            "stats": {"molecules": len(lengths), "real_tokens": T, "token_slots": T, "target_tokens": real}}


def pad_sequences(input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], *, pad_id: int,
                  max_length: int | None = None) -> dict:
    """Upstream layout: left padding to ``max_length`` (or to the longest sample when None).

    Returns input_ids [B, L], attention_mask [B, L] int64 (0 at pads), labels [B, L] (-100 at pads), stats.
    """
    _check(input_ids, labels, "pad_sequences")
    longest = max(len(x) for x in input_ids)
    L = longest if max_length is None else max_length
    if longest > L:
        raise ValueError(f"pad_sequences: a sample has {longest} tokens > max_length {L} (truncate first)")
    B = len(input_ids)
    ids = torch.full((B, L), pad_id, dtype=torch.int64)  # [B, L]
    lab = torch.full((B, L), -100, dtype=torch.int64)  # [B, L]
    mask = torch.zeros(B, L, dtype=torch.int64)  # [B, L]
    for b, (x, y) in enumerate(zip(input_ids, labels)):
        ids[b, L - len(x):] = torch.tensor(x)
        lab[b, L - len(y):] = torch.tensor(y)
        mask[b, L - len(x):] = 1
    real = int(mask.sum())
    return {"input_ids": ids, "attention_mask": mask, "labels": lab,
            "stats": {"molecules": B, "real_tokens": real, "token_slots": B * L,
                      "target_tokens": int((lab != -100).sum())}}


PACKED_ATTENTION = "molm_fast_packed"


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                             cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """HF attention interface. query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:  # not packed: the standard sdpa path with HF's mask
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    gqa = query.shape[1] != key.shape[1]
    half = (torch.float16, torch.bfloat16)
    dtype = query.dtype if query.dtype in half else (
        torch.get_autocast_dtype("cuda") if query.is_cuda and torch.is_autocast_enabled("cuda") else None)
    if query.is_cuda and dtype in half and dropout == 0.0:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = (x[0].transpose(0, 1).to(dtype) for x in (query, key, value))  # [T, H, D]
        out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, scale=scaling,
                          window_size=(-1, 0), enable_gqa=gqa)  # [T, H, D]
        return out[None], None
    bounds = cu_seq_lens_q.tolist()
    outs = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                           dropout_p=dropout, scale=scaling, enable_gqa=gqa)
            for a, b in zip(bounds[:-1], bounds[1:])]  # each [1, H, n_b, D]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None  # [1, T, H, D]


def use_packed_attention(model) -> None:
    """Register ``packed_attention_forward`` (and sdpa's mask builder for unpacked calls) and switch ``model``'s
    attention to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(PACKED_ATTENTION)


def packed_attention_kwargs(cu_seqlens: torch.Tensor, max_seqlen: int) -> dict:
    """The forward kwargs that route a packed row through per-sample attention (flash-attention's names)."""
    return {"cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens, "max_length_q": max_seqlen,
            "max_length_k": max_seqlen}


def unpack_rows(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> list[torch.Tensor]:
    """[1, T, ...] (or [T, ...]) -> B tensors [n_b, ...], the inverse of the packing (for tests and metrics)."""
    flat = packed[0] if packed.dim() >= 2 and packed.shape[0] == 1 else packed
    cu = cu_seqlens.tolist()
    return [flat[cu[b]:cu[b + 1]] for b in range(len(cu) - 1)]
