"""Stage-1 losses (spec 3d-molm.md §2.3) against hand-written formulas, and the gathered MTC on 2 gloo ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from molm_fast.training import losses
from tests.training.distributed import run_distributed
from tests.utils import assert_close_to_reference


def _features(B: int, Q: int = 8, E: int = 16, dtype=torch.float32):
    g = F.normalize(torch.randn(B, Q, E, dtype=dtype), dim=-1)
    t = F.normalize(torch.randn(B, E, dtype=dtype), dim=-1)
    return g, t


def _mtc_by_hand(g: torch.Tensor, t: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Loops over pairs: s(b, c) = max_k <g_b^k, t_c>; symmetric CE with targets b."""
    B = g.shape[0]
    s = torch.stack([torch.stack([max(g[b, k] @ t[c] for k in range(g.shape[1])) for c in range(B)])
                     for b in range(B)])  # [B, B] s[b, c] = molecule b vs text c
    total = 0.0
    for b in range(B):
        total = total - torch.log_softmax(s[b] / tau, 0)[b] - torch.log_softmax(s[:, b] / tau, 0)[b]
    return total / (2 * B)


@pytest.mark.parametrize("B,Q", [(2, 1), (5, 8), (16, 8)])
def test_mtc_matches_hand_formula(B, Q):
    g, t = _features(B, Q, dtype=torch.float64)
    loss, l_g2t, l_t2g = losses.mtc_loss(g, t)
    assert_close_to_reference(loss, _mtc_by_hand(g, t), name="mtc loss", dtype=torch.float32)
    sim = torch.einsum("bqe,ce->bcq", g, t).amax(-1)  # [B, B]
    assert_close_to_reference(l_g2t, sim / 0.1, name="local g2t logits", dtype=torch.float32)
    assert_close_to_reference(l_t2g, sim.T / 0.1, name="local t2g logits", dtype=torch.float32)


def test_mtc_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mtc_loss: graph_feats must be"):
        losses.mtc_loss(torch.randn(3, 8, 4), torch.randn(2, 4))


def _gathered_mtc_rank(rank: int, world: int, g_full, t_full):
    B = g_full.shape[0] // world
    out = {}
    for keep_local_grad in (True, False):
        g = g_full[rank * B:(rank + 1) * B].clone().requires_grad_(True)
        t = t_full[rank * B:(rank + 1) * B].clone().requires_grad_(True)
        loss, l_g2t, l_t2g = losses.mtc_loss(g, t, keep_local_grad=keep_local_grad)
        loss.backward()
        out[keep_local_grad] = {"loss": loss.detach(), "g2t": l_g2t.detach(), "t2g": l_t2g.detach(),
                                "grad_g": g.grad, "grad_t": t.grad}
    return out


def test_gathered_mtc_on_two_gloo_ranks_equals_full_batch():
    world, B = 2, 3
    g_full, t_full = _features(world * B)
    both = run_distributed(_gathered_mtc_rank, world, g_full, t_full)
    for keep_local_grad in (True, False):
        _check_gathered([o[keep_local_grad] for o in both], g_full, t_full, B, keep_local_grad)


def _check_gathered(out, g_full, t_full, B, keep_local_grad):
    full_loss, full_g2t, full_t2g = losses.mtc_loss(g_full, t_full)
    # DDP averages the per-rank means: equal to the single-process loss on the full batch
    mean_loss = torch.stack([o["loss"] for o in out]).mean()
    assert_close_to_reference(mean_loss, full_loss.detach(), name="mean of gathered rank losses")
    for r, o in enumerate(out):
        blk = slice(r * B, (r + 1) * B)
        assert_close_to_reference(o["g2t"], full_g2t.detach()[blk, blk], name=f"rank {r} local g2t block")
        assert_close_to_reference(o["t2g"], full_t2g.detach()[blk, blk], name=f"rank {r} local t2g block")
        # gradient: remote features are constants, this rank's own slice keeps its grad iff keep_local_grad
        g = g_full.clone()
        t = t_full.clone()
        g_loc = g_full[blk].clone().requires_grad_(True)
        t_loc = t_full[blk].clone().requires_grad_(True)
        g_keys = torch.cat([g[:r * B], g_loc if keep_local_grad else g_loc.detach(), g[(r + 1) * B:]])
        t_keys = torch.cat([t[:r * B], t_loc if keep_local_grad else t_loc.detach(), t[(r + 1) * B:]])
        s_g2t = torch.einsum("bqe,ce->bcq", g_loc, t_keys).amax(-1) / 0.1
        s_t2g = torch.einsum("be,cqe->bcq", t_loc, g_keys).amax(-1) / 0.1
        y = torch.arange(r * B, (r + 1) * B)
        expect = 0.5 * (F.cross_entropy(s_g2t, y) + F.cross_entropy(s_t2g, y))
        expect.backward()
        assert_close_to_reference(o["loss"], expect.detach(), name=f"rank {r} loss")
        assert_close_to_reference(o["grad_g"], g_loc.grad, name=f"rank {r} grad graph")
        assert_close_to_reference(o["grad_t"], t_loc.grad, name=f"rank {r} grad text")


def test_hard_negative_weights_exact_and_never_diagonal():
    B = 6
    logits = torch.randn(B, B) * 5
    w = losses.hard_negative_weights(logits)
    expect = torch.softmax(logits, 1) + 1e-4
    expect[range(B), range(B)] = 0
    assert_close_to_reference(w, expect, name="hard-negative weights")
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        neg_graph, neg_text = losses.sample_hard_negatives(logits, logits.T, generator=g)
        assert (neg_graph != torch.arange(B)).all() and (neg_text != torch.arange(B)).all()


def test_hard_negatives_follow_similarity():
    # one off-diagonal entry per row dominates: it must be drawn far more often than the 1e-4 floor allows others
    B = 4
    logits = torch.full((B, B), -20.0)
    hard = torch.tensor([1, 2, 3, 0])
    logits[torch.arange(B), hard] = 20.0
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([losses.sample_hard_negatives(logits, logits, generator=g)[0] for _ in range(100)])
    assert (draws == hard).float().mean() > 0.99


def test_hard_negatives_reject_single_molecule():
    with pytest.raises(ValueError, match="at least 2 molecules"):
        losses.sample_hard_negatives(torch.zeros(1, 1), torch.zeros(1, 1))


@pytest.mark.parametrize("B,Q", [(1, 8), (4, 3)])
def test_mtm_loss_is_mean_over_queries_then_ce(B, Q):
    ql = torch.randn(3 * B, Q, 2, dtype=torch.float64)
    labels = [1] * B + [0] * (2 * B)
    expect = sum(-torch.log_softmax(ql[i].mean(0), 0)[labels[i]] for i in range(3 * B)) / (3 * B)
    assert_close_to_reference(losses.mtm_loss(ql), expect, name="mtm loss", dtype=torch.float32)
    with pytest.raises(ValueError, match="mtm_loss"):
        losses.mtm_loss(torch.randn(4, Q, 2))


@pytest.mark.parametrize("B,L,V", [(1, 3, 5), (3, 7, 11)])
def test_mtg_loss_label_smoothing_by_hand(B, L, V):
    logits = torch.randn(B, L, V, dtype=torch.float64)
    labels = torch.randint(0, V, (B, L))
    labels[0, -1] = -100  # a pad
    eps, terms = 0.1, []
    for b in range(B):
        for i in range(L - 1):
            y = int(labels[b, i + 1])
            if y == -100:
                continue
            logp = torch.log_softmax(logits[b, i], 0)
            terms.append(-(1 - eps) * logp[y] - eps * logp.mean())
    expect = torch.stack(terms).mean()
    assert_close_to_reference(losses.mtg_loss(logits, labels), expect, name="mtg loss", dtype=torch.float32)
    # the no-smoothing causal-LM loss of stages 2/3
    nll = torch.stack([-torch.log_softmax(logits[b, i], 0)[int(labels[b, i + 1])] for b in range(B)
                       for i in range(L - 1) if int(labels[b, i + 1]) != -100]).mean()
    assert_close_to_reference(losses.lm_loss(logits, labels), nll, name="lm loss", dtype=torch.float32)


def test_mtg_loss_fused_equals_unfused_on_cpu():
    B, L, C, V = 2, 6, 8, 13
    hidden = torch.randn(B, L, C)
    w, b = torch.randn(V, C), torch.randn(V)
    labels = torch.randint(0, V, (B, L))
    ref = losses.mtg_loss(hidden @ w.T + b, labels)
    assert_close_to_reference(losses.mtg_loss_fused(hidden, w, b, labels), ref, name="mtg fused (cpu path)")
    assert math.isfinite(ref.item())


@pytest.mark.gpu
def test_mtg_loss_fused_liger_on_gpu():
    pytest.importorskip("liger_kernel", reason="liger-kernel is optional (GPU only)")
    B, L, C, V = 4, 37, 64, 1031
    hidden = torch.randn(B, L, C, device="cuda", requires_grad=True)
    w = torch.randn(V, C, device="cuda", requires_grad=True)
    b = torch.randn(V, device="cuda")
    labels = torch.randint(0, V, (B, L), device="cuda")
    labels[:, :3] = -100
    out = losses.mtg_loss_fused(hidden, w, b, labels)
    ref = losses.mtg_loss(hidden.double() @ w.double().T + b.double(), labels)
    assert_close_to_reference(out, ref.float(), name="liger fused linear CE")
    gh, gw = torch.autograd.grad(out, (hidden, w))
    rh, rw = torch.autograd.grad(ref, (hidden, w))
    assert_close_to_reference(gh, rh.float(), name="liger grad hidden")
    assert_close_to_reference(gw, rw.float(), name="liger grad weight")
