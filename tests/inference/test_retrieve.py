"""Retrieval score and metrics on hand-built cases whose answers are worked out in the comments."""

from __future__ import annotations

import pytest
import torch

from molm_fast.inference.retrieve import fullset_metrics, inbatch_metrics, similarity, target_ranks, topk
from tests.utils import assert_close_to_reference

# A 3 x 3 score matrix S realised with Q = 1: molecule i's feature = row i of S, text j = e_j, so sim = S.
S = torch.tensor([[0.9, 0.1, 0.5],
                  [0.8, 0.3, 0.2],
                  [0.1, 0.7, 0.6]])
MOL, TEXT = S[:, None, :], torch.eye(3)
# GTM logits of (molecule i, text j).
G = torch.tensor([[0.0, 0.0, 1.0],
                  [0.0, 1.0, 0.0],
                  [0.0, 0.5, 0.0]])


def match(mol_idx, text_idx):
    return G[mol_idx, text_idx]


def test_score_is_max_over_queries_of_the_cosine():
    mol = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-1.0, 0.0]]])  # [2, Q=2, 2]
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # m0: max(1, 0) = 1 and max(0, 1) = 1; m1: max(0.6, -1) = 0.6 and max(0.8, 0) = 0.8
    assert torch.equal(similarity(mol, text), torch.tensor([[1.0, 1.0], [0.6, 0.8]]))


def test_ranks_count_strictly_higher_scores():
    assert target_ranks(S, torch.arange(3)).tolist() == [0, 1, 1]  # 0.9 top; 0.3 < 0.8; 0.6 < 0.7
    assert target_ranks(S.T, torch.arange(3)).tolist() == [0, 1, 0]  # columns: 0.9 top; 0.3 < 0.7; 0.6 top
    assert target_ranks(torch.ones(2, 4), torch.tensor([3, 0])).tolist() == [0, 0]  # ties count for the target


@pytest.mark.parametrize("chunk", [1, 2, 1024])
def test_fullset_metrics_and_rerank(chunk):
    out = fullset_metrics(MOL, TEXT, chunk=chunk, match_fn=match, rerank_k=2)
    assert out["m2t_acc"] == pytest.approx(1 / 3) and out["m2t_rec20"] == 1.0
    assert out["t2m_acc"] == pytest.approx(2 / 3) and out["t2m_rec20"] == 1.0
    # m2t, top-2 by sim then sim + G: row 0 {t0: 0.9, t2: 0.5 + 1} -> rank 1; row 1 {t0: 0.8, t1: 0.3 + 1} -> 0;
    # row 2 {t1: 0.7 + 0.5, t2: 0.6} -> 1.  t2m (columns): text 0 {m0: 0.9, m1: 0.8} -> 0; text 1 {m2: 0.7 + 0.5,
    # m1: 0.3 + 1} -> 0; text 2 {m2: 0.6, m0: 0.5 + 1} -> 1.
    assert out["rerank_m2t_acc"] == pytest.approx(1 / 3)
    assert out["rerank_t2m_acc"] == pytest.approx(2 / 3)


def test_rerank_leaves_targets_outside_the_top_k_where_they_were():
    out = fullset_metrics(MOL, TEXT, match_fn=match, rerank_k=1)
    # k = 1: only rows whose target is already first keep rank 0 (row 0); rows 1 and 2 keep rank 1
    assert out["rerank_m2t_acc"] == pytest.approx(1 / 3) and out["rerank_m2t_rec20"] == 1.0


def test_inbatch_metrics_and_rerank_in_given_order():
    out = inbatch_metrics(MOL, TEXT, batch_size=2, seed=None, match_fn=match)
    # batches {0, 1} and {2}. m2t: [[0.9, 0.1], [0.8, 0.3]] -> ranks 0, 1; batch {2} -> 0: acc 2/3.
    # t2m: columns (0.9 vs 0.8) -> 0, (0.3 vs 0.1) -> 0; -> acc 1.
    assert out["m2t_acc"] == pytest.approx(2 / 3) and out["t2m_acc"] == 1.0
    # re-rank: [[0.9, 0.1], [0.8, 1.3]] -> m2t ranks 0, 0; t2m ranks 0, 0
    assert out["rerank_m2t_acc"] == 1.0 and out["rerank_t2m_acc"] == 1.0


@pytest.mark.parametrize("n,last", [(130, 2), (200, 8)])
def test_inbatch_batches_of_64_from_the_permutation(n, last):
    """Target scored lowest in its row (-1 vs 0): its in-batch rank is batch size - 1, so R@20 counts exactly
    the items of batches smaller than 21 -- the last one (130 = 64 + 64 + 2; 200 = 3 x 64 + 8)."""
    mol, text = -torch.eye(n)[:, None, :], torch.eye(n)
    out = inbatch_metrics(mol, text)
    assert out["m2t_acc"] == 0.0 and out["m2t_rec20"] == pytest.approx(last / n)
    assert out["t2m_rec20"] == pytest.approx(last / n)
    full = fullset_metrics(mol, text, chunk=7)
    assert full["m2t_rec20"] == 0.0 and full["t2m_rec20"] == 0.0


def test_permutation_is_seeded():
    mol, text = torch.randn(100, 8, 16), torch.randn(100, 16)
    assert inbatch_metrics(mol, text, batch_size=10) == inbatch_metrics(mol, text, batch_size=10)
    perfect = torch.nn.functional.normalize(torch.randn(100, 16), dim=-1)
    assert inbatch_metrics(perfect[:, None].expand(-1, 8, -1), perfect)["m2t_acc"] == 1.0


@pytest.mark.parametrize("direction", ["m2t", "t2m"])
def test_chunked_topk_matches_brute_force(direction):
    mol, text = torch.randn(11, 8, 16), torch.randn(13, 16)
    sim = similarity(mol, text)
    full = sim if direction == "m2t" else sim.T
    scores, idx = topk(mol, text, 5, direction=direction, chunk=3, candidate_chunk=4)
    want_s, want_i = full.topk(5, dim=1)
    assert_close_to_reference(scores, want_s, name="top-k scores")
    assert_close_to_reference(full.gather(1, idx), scores, name="scores at the returned indices")
    assert idx.shape == want_i.shape


def test_bad_shapes():
    with pytest.raises(ValueError, match="retrieval: mol must be"):
        fullset_metrics(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="as many molecules as texts"):
        inbatch_metrics(torch.randn(3, 2, 4), torch.randn(4, 4))
    with pytest.raises(ValueError, match="direction"):
        topk(torch.randn(3, 2, 4), torch.randn(4, 4), 2, direction="x")
