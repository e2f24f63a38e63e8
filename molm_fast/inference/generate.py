"""Text generation from prompt embeddings: the upstream reference and a fast path with the same decoding rules.

Reference settings (spec §6, §8.14): no sampling, beams 5, repetition penalty 1.2, length penalty 0.8 (eval),
min/max new tokens per task (``TASK_SETTINGS``), pad 32000, eos 2. ``generate_reference`` is Hugging Face
``generate`` with those settings, exactly what upstream calls. ``generate`` is the fast path:
  - prompts are left-aligned (left padding; upstream right-pads, which feeds the first new token from an untrained
    [PAD] row, spec §6 consequence 1; with left padding both paths agree);
  - the prompt is prefilled once per molecule and its KV copied to the beams (HF prefills every beam);
  - the KV cache is static ([rows, H, prompt + max_new, D], allocated once), beams reorder it in place;
  - the decode step runs under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) on GPU when ``compile``.
The decoding rules are Hugging Face's (transformers 5): greedy applies the processors to logits; beam search applies
them to log-probabilities, keeps 2 * beams candidates per step, scores finished hypotheses by
sum log p / (new tokens ** length_penalty), and stops on HF's ``early_stopping=False`` heuristic. The repetition
penalty sees generated tokens only (the prompt enters as embeddings). Greedy output is token-identical to HF
``generate`` given the same weights and left-padded inputs (tests/inference/test_generate.py).
Shapes: B prompts, K beams, L prompt length, C hidden size, V vocabulary, T new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    min_new_tokens: int = 32
    num_beams: int = 5
    repetition_penalty: float = 1.2
    length_penalty: float = 0.8
    eos_token_id: int = 2
    pad_token_id: int = 32000

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"GenerationSettings: need 0 <= min_new_tokens ({self.min_new_tokens}) <= max_new_tokens "
                             f"({self.max_new_tokens}) and max_new_tokens >= 1")
        if self.num_beams < 1:
            raise ValueError(f"GenerationSettings: num_beams must be >= 1, got {self.num_beams}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"GenerationSettings: repetition_penalty must be > 0, got {self.repetition_penalty}")


# spec §6: stage 2 captioning; stage 3 computed properties and Description; stage 3 Caption
TASK_SETTINGS: dict[str, GenerationSettings] = {
    "caption": GenerationSettings(max_new_tokens=128, min_new_tokens=32),
    "property": GenerationSettings(max_new_tokens=64, min_new_tokens=16),
    "description": GenerationSettings(max_new_tokens=64, min_new_tokens=16),
    "stage3_caption": GenerationSettings(max_new_tokens=128, min_new_tokens=16),
}


def _check(fn: str, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> None:
    if inputs_embeds.dim() != 3:
        raise ValueError(f"{fn}: inputs_embeds must be [B, L, C], got {list(inputs_embeds.shape)}")
    if tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
        raise ValueError(f"{fn}: attention_mask must be [B, L] = {list(inputs_embeds.shape[:2])}, "
                         f"got {list(attention_mask.shape)}")
    if inputs_embeds.shape[0] and bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError(f"{fn}: every prompt needs at least one attended position (attention_mask row of zeros)")


@torch.no_grad()
def generate_reference(lm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                       settings: GenerationSettings) -> torch.Tensor:
    """Upstream generation: HF ``generate`` on ``inputs_embeds`` [B, L, C] -> new tokens [B, T] (pad after EOS).

    The repetition penalty is passed as HF's own processor without ``prompt_ignore_length``: transformers 5 builds
    it from the attention mask's left padding, which with ``inputs_embeds`` (no prompt ids) skips the first n_pad
    *generated* tokens of a left-padded row. Upstream (transformers 4.35) penalises every generated token; so do we.
    """
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    _check("generate_reference", inputs_embeds, attention_mask)
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty)))
    beam = dict(num_beams=settings.num_beams, length_penalty=settings.length_penalty) if settings.num_beams > 1 else {}
    return lm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, do_sample=False,
                       num_return_sequences=1, max_new_tokens=settings.max_new_tokens,
                       min_new_tokens=settings.min_new_tokens, logits_processor=processors,
                       pad_token_id=settings.pad_token_id, eos_token_id=settings.eos_token_id, **beam)


def left_align(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's attended positions to the right end, keeping their order (any padding -> left padding)."""
    mask = attention_mask.bool()
    # stable sort by "is attended": pads (0) first, attended (1) last, each group in original order
    order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices  # [B, L]
    embeds = torch.gather(inputs_embeds, 1, order[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
    return embeds, torch.gather(attention_mask, 1, order)


CACHE_LEN_MULTIPLE = 64  # cache lengths are rounded up so batches of similar prompts reuse one compiled step


class _StepGraph:
    """A static KV cache for ``rows`` sequences of up to ``cache_len`` tokens and the one-token decode step on it,
    compiled once (CUDA graphs) and kept on the model for every later call with the same (rows, cache_len)."""

    def __init__(self, lm: nn.Module, rows: int, cache_len: int, compile: bool):
        from transformers import StaticCache

        self.cache = StaticCache(config=lm.config, max_cache_len=cache_len)

        def step(tokens: torch.Tensor, position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out = lm(input_ids=tokens, attention_mask=mask, position_ids=position, past_key_values=self.cache,
                     use_cache=True)
            return out.logits[:, -1].float()  # [rows, V] fp32

        self.compiled = compile
        self.fn = torch.compile(step, mode="reduce-overhead", dynamic=False) if compile else step

    @staticmethod
    def get(lm: nn.Module, rows: int, cache_len: int, compile: bool) -> _StepGraph:
        graphs = lm.__dict__.setdefault("_molm_fast_step_graphs", {})
        key = (rows, cache_len, compile)
        if key not in graphs:
            graphs[key] = _StepGraph(lm, rows, cache_len, compile)
        return graphs[key]


class _Decoder:
    """Prefill the B prompts once, copy their KV to the B * K rows of a static cache, then decode token by token."""

    def __init__(self, lm: nn.Module, inputs_embeds: torch.Tensor, mask: torch.Tensor, repeats: int,
                 max_new_tokens: int, compile: bool):
        B, L = mask.shape
        out = lm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=self._positions(mask),
                 use_cache=True, logits_to_keep=1)  # the LM head on the last position only
        self.first_logits = out.logits[:, -1].float().repeat_interleave(repeats, 0)  # [B*K, V] fp32
        rows = B * repeats
        cache_len = -(-(L + max_new_tokens) // CACHE_LEN_MULTIPLE) * CACHE_LEN_MULTIPLE
        self.graph = _StepGraph.get(lm, rows, cache_len, compile)
        self.cache = self.graph.cache
        for layer, src in zip(self.cache.layers, out.past_key_values.layers):
            keys = src.keys.repeat_interleave(repeats, 0)  # [B*K, H, L, D]: the prompt's KV, shared by its beams
            values = src.values.repeat_interleave(repeats, 0)
            if not layer.is_initialized:
                layer.lazy_initialization(keys, values)
            layer.keys[:, :, :L].copy_(keys)  # later slots hold stale values: causal-masked until overwritten
            layer.values[:, :, :L].copy_(values)
            layer.cumulative_length.fill_(L)
        self.mask = torch.ones(rows, cache_len, dtype=mask.dtype, device=mask.device)  # [B*K, cache_len]
        self.mask[:, :L] = mask.repeat_interleave(repeats, 0)  # future slots are masked by causality
        self.next_position = mask.sum(-1).repeat_interleave(repeats, 0)[:, None]  # [B*K, 1]

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens at 0..n-1 (HF's rule)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B*K] -> next logits [B*K, V] fp32."""
        logits = self.graph.fn(tokens[:, None], self.next_position, self.mask)
        self.next_position = self.next_position + 1
        return logits.clone() if self.graph.compiled else logits  # CUDA graphs reuse their output buffer

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row r continues from row ``rows[r]``; in place, so the cache keeps its address."""
        for layer in self.cache.layers:
            layer.keys.copy_(layer.keys.index_select(0, rows))
            layer.values.copy_(layer.values.index_select(0, rows))


def _process(scores: torch.Tensor, generated: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """HF's repetition penalty (on tokens generated so far) and min-new-tokens EOS ban; scores [R, V]."""
    if generated.shape[1] and s.repetition_penalty != 1.0:
        ids = generated.clamp(max=scores.shape[1])  # pad may lie past the LM head; it is dropped below
        padded = torch.nn.functional.pad(scores, (0, 1))
        picked = torch.gather(padded, 1, ids)
        picked = torch.where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty)
        scores = padded.scatter(1, ids, picked)[:, :-1]
    if generated.shape[1] < s.min_new_tokens:
        scores = scores.clone()
        scores[:, s.eos_token_id] = -float("inf")
    return scores


def _greedy(dec: _Decoder, B: int, s: GenerationSettings) -> torch.Tensor:
    device = dec.first_logits.device
    generated = torch.empty(B, 0, dtype=torch.long, device=device)
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    logits = dec.first_logits
    for t in range(s.max_new_tokens):
        tokens = _process(logits, generated, s).argmax(-1)  # [B]
        tokens = torch.where(unfinished, tokens, torch.full_like(tokens, s.pad_token_id))
        generated = torch.cat([generated, tokens[:, None]], 1)
        unfinished &= tokens != s.eos_token_id
        if t + 1 == s.max_new_tokens or not bool(unfinished.any()):
            break
        logits = dec.step(tokens)
    return generated


def _beam(dec: _Decoder, B: int, s: GenerationSettings) -> torch.Tensor:
    K, T, device = s.num_beams, s.max_new_tokens, dec.first_logits.device
    keep = 2 * K  # HF: max(2, 1 + number of EOS ids) * beams candidates per step
    running = torch.full((B, K, T), s.pad_token_id, dtype=torch.long, device=device)
    finished = running.clone()
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = -1e9  # only beam 0 expands on the first step (all beams share the prompt)
    finished_scores = torch.full((B, K), -1e9, device=device)
    finished_len = torch.zeros(B, K, dtype=torch.long, device=device)
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    top_k_mask = torch.arange(keep, device=device) < K
    batch_offset = torch.arange(B, device=device)[:, None] * K
    logits = dec.first_logits
    for t in range(T):
        log_probs = torch.log_softmax(logits, -1)
        log_probs = _process(log_probs, running[:, :, :t].reshape(B * K, t), s)  # [B*K, V]
        V = log_probs.shape[-1]
        totals = (log_probs.view(B, K, V) + running_scores[..., None]).view(B, K * V)
        cand_scores, cand_idx = torch.topk(totals, keep)  # [B, 2K]
        cand_beam, cand_token = cand_idx // V, cand_idx % V
        cand_seqs = torch.take_along_dim(running, cand_beam[..., None], 1)  # [B, 2K, T]
        cand_seqs[:, :, t] = cand_token
        hits_stop = (cand_token == s.eos_token_id) | (t + 1 == T)  # EOS or max length
        # best K candidates that did not stop continue
        alive_scores = cand_scores + hits_stop.float() * -1e9
        next_idx = torch.topk(alive_scores, K).indices  # [B, K]
        running = torch.take_along_dim(cand_seqs, next_idx[..., None], 1)
        running_scores = torch.take_along_dim(alive_scores, next_idx, 1)
        source_rows = (torch.take_along_dim(cand_beam, next_idx, 1) + batch_offset).view(-1)  # [B*K]
        # stopped candidates among the top K enter the finished pool with the length penalty
        just_finished = hits_stop & top_k_mask[None]
        penalised = cand_scores / ((t + 1) ** s.length_penalty)
        penalised = penalised + (~improvable).float() * -1e9 + (~just_finished).float() * -1e9
        merged_scores = torch.cat([finished_scores, penalised], 1)
        pick = torch.topk(merged_scores, K).indices
        finished = torch.take_along_dim(torch.cat([finished, cand_seqs], 1), pick[..., None], 1)
        finished_scores = torch.take_along_dim(merged_scores, pick, 1)
        finished_len = torch.take_along_dim(torch.cat([finished_len, torch.full_like(cand_token, t + 1)], 1), pick, 1)
        is_finished = torch.take_along_dim(torch.cat([is_finished, just_finished], 1), pick, 1)
        # HF early_stopping=False heuristic: can the best running beam still beat the worst finished one?
        best_possible = running_scores[:, :1] / ((t + 1) ** s.length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(1, keepdim=True).values,
                                     torch.full_like(finished_scores, -1e9))
        improvable = improvable & (best_possible > worst_finished).any(-1, keepdim=True)
        if t + 1 == T or not bool(improvable.any()) or bool(hits_stop.all()):
            break
        dec.reorder(source_rows)
        logits = dec.step(running[:, :, t].reshape(-1))
    best = finished[:, 0]  # [B, T]
    length = int(finished_len[:, 0].max())
    return best[:, :length]


@torch.no_grad()
def generate(lm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
             settings: GenerationSettings, *, compile: bool | None = None) -> torch.Tensor:
    """Fast generation: ``inputs_embeds`` [B, L, C] and ``attention_mask`` [B, L] (any padding side) -> new tokens
    [B, T] (pad after EOS), same decoding rules as ``generate_reference``. ``compile`` (default: on CUDA) compiles the
    decode step with CUDA graphs."""
    _check("generate", inputs_embeds, attention_mask)
    B = inputs_embeds.shape[0]
    if B == 0:
        return torch.empty(0, 0, dtype=torch.long, device=inputs_embeds.device)
    compile = inputs_embeds.is_cuda if compile is None else compile
    embeds, mask = left_align(inputs_embeds, attention_mask)
    if settings.num_beams == 1:
        return _greedy(_Decoder(lm, embeds, mask, 1, settings.max_new_tokens, compile), B, settings)
    return _beam(_Decoder(lm, embeds, mask, settings.num_beams, settings.max_new_tokens, compile), B, settings)


def greedy_settings(settings: GenerationSettings) -> GenerationSettings:
    """The same limits and penalties with one beam."""
    return replace(settings, num_beams=1)


__all__ = ["GenerationSettings", "TASK_SETTINGS", "generate", "generate_reference", "greedy_settings", "left_align"]
