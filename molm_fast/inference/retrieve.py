"""Molecule <-> text retrieval with the reference score and metrics (spec 3d-molm.md §4.1).

Score: s(m, t) = max over the Q query features of <g_m^q, t> (both already L2-normalized, so a cosine).
Metrics: the rank of the true partner = the number of candidates scoring strictly higher (ties resolved in the
target's favour; upstream's argsort leaves tie order unspecified). Acc = rank 0, R@20 = rank < 20, as fractions.
- in-batch: batches of 64 consecutive items of a seed-0 permutation (31 x 64 + 16 for 2,000 pairs), ranks within
  each batch; ``inbatch_metrics``.
- full set: ranks against every candidate; ``fullset_metrics`` (chunked, never materialises more than
  ``chunk`` x n scores).
- MTM re-ranking: score = sim + the raw class-1 logit of ``mean_k gtm_head(Z_k)`` (no softmax). In-batch: every
  pair of the batch; full set: the top ``rerank_k`` (64 in 3D-MoLM) candidates by sim are re-scored and re-sorted,
  the rest keep their order. ``match_fn(mol_idx, text_idx) -> logits`` supplies the GTM logits of index pairs
  (``model_match_fn`` builds it from a model).
Top-k search over large sets: ``topk`` (chunked matmul + running top-k, GPU or CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

MatchFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (mol idx [P], text idx [P]) -> logits [P]


def similarity(mol: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """mol [M, Q, E], text [T, E] (normalized) -> [M, T] = max_q <mol[m, q], text[t]> (fp32)."""
    return torch.einsum("mqe,te->mqt", mol.float(), text.float()).amax(1)


def _check(mol: torch.Tensor, text: torch.Tensor, paired: bool) -> None:
    if mol.dim() != 3 or text.dim() != 2 or mol.shape[2] != text.shape[1]:
        raise ValueError(f"retrieval: mol must be [M, Q, E] and text [T, E] with the same E, got {list(mol.shape)} "
                         f"and {list(text.shape)}")
    if paired and mol.shape[0] != text.shape[0]:
        raise ValueError(f"retrieval: paired evaluation needs as many molecules as texts, got {mol.shape[0]} and "
                         f"{text.shape[0]}")


def _rates(ranks: torch.Tensor) -> dict[str, float]:
    n = max(len(ranks), 1)
    return {"acc": float((ranks == 0).sum()) / n, "rec20": float((ranks < 20).sum()) / n}


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """scores [n, C], targets [n] (column of each row's true partner) -> [n] ranks (strictly higher count)."""
    true = scores.gather(1, targets[:, None])  # [n, 1]
    return (scores > true).sum(1)


def inbatch_metrics(mol: torch.Tensor, text: torch.Tensor, *, batch_size: int = 64, seed: int | None = 0,
                    match_fn: MatchFn | None = None) -> dict[str, float]:
    """In-batch Acc/R@20 both ways over batches of a seed-``seed`` permutation (None = keep the given order).
    With ``match_fn`` also the re-ranked ``rerank_*`` metrics (sim + GTM logit on every in-batch pair)."""
    _check(mol, text, paired=True)
    n = mol.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if seed is not None else torch.arange(n)
    ranks: dict[str, list[torch.Tensor]] = {"m2t": [], "t2m": [], "rerank_m2t": [], "rerank_t2m": []}
    for b0 in range(0, n, batch_size):
        idx = order[b0:b0 + batch_size].to(mol.device)
        sim = similarity(mol[idx], text[idx])  # [b, b]
        diag = torch.arange(len(idx), device=sim.device)
        ranks["m2t"].append(target_ranks(sim, diag))
        ranks["t2m"].append(target_ranks(sim.T, diag))
        if match_fn is not None:
            mi, ti = torch.meshgrid(idx, idx, indexing="ij")  # [b, b]: molecule row, text column
            score = sim + match_fn(mi.flatten(), ti.flatten()).float().view_as(sim)
            ranks["rerank_m2t"].append(target_ranks(score, diag))
            ranks["rerank_t2m"].append(target_ranks(score.T, diag))
    out = {}
    for key, parts in ranks.items():
        if parts:
            out.update({f"{key}_{k}": v for k, v in _rates(torch.cat(parts)).items()})
    return out


def _full_ranks(queries, candidates, score_rows, chunk: int) -> torch.Tensor:
    """Rank of candidate i for query i, chunked over queries. score_rows(q0, q1) -> [q1 - q0, C] scores."""
    ranks = []
    for q0 in range(0, queries, chunk):
        q1 = min(q0 + chunk, queries)
        scores = score_rows(q0, q1)
        ranks.append(target_ranks(scores, torch.arange(q0, q1, device=scores.device)))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def _reranked_ranks(scores: torch.Tensor, q0: int, k: int, match_fn: MatchFn, mol_side: bool) -> torch.Tensor:
    """Re-rank the top-k of each row by sim + GTM logit; the rest keep their sim order. [rows] ranks."""
    rows = torch.arange(q0, q0 + scores.shape[0], device=scores.device)
    k = min(k, scores.shape[1])
    top_sim, top_idx = scores.topk(k, dim=1)  # [r, k], sorted by sim
    qi = rows[:, None].expand_as(top_idx)
    mi, ti = (qi, top_idx) if mol_side else (top_idx, qi)
    new = top_sim + match_fn(mi.flatten(), ti.flatten()).float().view_as(top_sim)
    hit = top_idx == rows[:, None]  # [r, k]
    in_top = hit.any(1)
    new_true = (new * hit).sum(1, keepdim=True)
    rank_in_top = ((new > new_true) & ~hit).sum(1)
    return torch.where(in_top, rank_in_top, target_ranks(scores, rows))


def fullset_metrics(mol: torch.Tensor, text: torch.Tensor, *, chunk: int = 1024, match_fn: MatchFn | None = None,
                    rerank_k: int = 64) -> dict[str, float]:
    """Full-set Acc/R@20 both ways (molecule i pairs with text i); with ``match_fn`` also ``rerank_*``."""
    _check(mol, text, paired=True)
    n = mol.shape[0]
    out: dict[str, float] = {}
    for name, mol_side in (("m2t", True), ("t2m", False)):
        def rows(q0, q1, mol_side=mol_side):
            return similarity(mol[q0:q1], text) if mol_side else similarity(mol, text[q0:q1]).T  # [r, n]

        out.update({f"{name}_{k}": v for k, v in _rates(_full_ranks(n, n, rows, chunk)).items()})
        if match_fn is not None:
            ranks = torch.cat([_reranked_ranks(rows(q0, min(q0 + chunk, n)), q0, rerank_k, match_fn, mol_side)
                               for q0 in range(0, n, chunk)]) if n else torch.zeros(0, dtype=torch.long)
            out.update({f"rerank_{name}_{k}": v for k, v in _rates(ranks).items()})
    return out


def topk(mol: torch.Tensor, text: torch.Tensor, k: int, *, direction: str = "m2t", chunk: int = 4096,
         candidate_chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k candidates of every query by the reference score, over sets larger than memory allows as one matrix.

    direction "m2t": queries = molecules [M, Q, E], candidates = texts [T, E]; "t2m": the reverse. Runs on the
    tensors' device; query chunks x candidate chunks keep a running top-k. -> (scores [n, k], indices [n, k]).
    """
    if direction not in ("m2t", "t2m"):
        raise ValueError(f"topk: direction must be 'm2t' or 't2m', got {direction!r}")
    _check(mol, text, paired=False)
    n_q, n_c = (mol.shape[0], text.shape[0]) if direction == "m2t" else (text.shape[0], mol.shape[0])
    k = min(k, n_c)
    scores, indices = [], []
    for q0 in range(0, n_q, chunk):
        q1 = min(q0 + chunk, n_q)
        best_s = torch.full((q1 - q0, 0), float("-inf"), device=mol.device)
        best_i = torch.zeros((q1 - q0, 0), dtype=torch.long, device=mol.device)
        for c0 in range(0, n_c, candidate_chunk):
            c1 = min(c0 + candidate_chunk, n_c)
            s = similarity(mol[q0:q1], text[c0:c1]) if direction == "m2t" else similarity(mol[c0:c1], text[q0:q1]).T
            cat_s = torch.cat([best_s, s], 1)
            cat_i = torch.cat([best_i, torch.arange(c0, c1, device=s.device).expand(q1 - q0, -1)], 1)
            best_s, pos = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
            best_i = cat_i.gather(1, pos)
        scores.append(best_s)
        indices.append(best_i)
    if not scores:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(scores), torch.cat(indices)


def model_match_fn(model, store, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, batch_size: int = 64,
                   seed: int = 0) -> MatchFn:
    """GTM logits from a stage-1 ``MoLM``: molecule i = ``store`` position i (a ``MoleculeStore``), text i =
    row i of ``input_ids``/``attention_mask``; pairs are scored ``batch_size`` at a time with the joint pass."""
    from molm_fast.models.qformer import QFormer

    dev = next(model.parameters()).device

    @torch.no_grad()
    def match(mol_idx: torch.Tensor, text_idx: torch.Tensor) -> torch.Tensor:
        out = []
        for p0 in range(0, len(mol_idx), batch_size):
            mi = mol_idx[p0:p0 + batch_size].cpu().numpy()
            ti = text_idx[p0:p0 + batch_size].cpu()
            batch = store.batch(np.asarray(mi), layout="padded", seed=seed)
            ids, mask = QFormer.trim_text_padding(input_ids[ti], attention_mask[ti])
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model.match_logits(ids.to(dev), mask.to(dev), batch.tokens.to(dev), batch.coords.to(dev))
            out.append(logits[:, 1].float())
        return torch.cat(out).to(mol_idx.device) if out else torch.zeros(0, device=mol_idx.device)

    return match
