"""Stage-1 losses of 3D-MoLM (spec 3d-molm.md §2.3): MTC + MTM + MTG, their unweighted sum.

MTC  molecule-text contrastive. Features are all-gathered across ranks WITHOUT gradient through the remote
     ranks' features (upstream `pl_concat_all_gather` is a no-grad all_gather); this rank's own slice of the
     gathered tensor keeps its gradient (`keep_local_grad=True`, the open_clip convention, which makes W = 1 equal
     to upstream's single-GPU run where the "gathered" tensor is the local one itself; `False` reproduces
     upstream's multi-GPU gradient where the gathered side carries none). Similarity = max over the Q queries,
     fixed temperature tau = 0.1, targets = rank * B + b.
MTM  molecule-text matching on 3B pairs [pos, (text, neg mol), (neg text, mol)]; one hard negative per side drawn
     from softmax(sim) + 1e-4 with the diagonal zeroed, on the local B x B block only.
MTG  captioning with [DEC]: shifted cross-entropy with label smoothing 0.1, mean over non -100 labels.

Shapes: B molecules per rank, Q queries, E = 256 projection dim, L text tokens, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

MTC_TEMPERATURE = 0.1
MTM_EPS = 1e-4
MTG_LABEL_SMOOTHING = 0.1


def world_and_rank(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


def all_gather_features(x: torch.Tensor, *, keep_local_grad: bool = True,
                        group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] from every rank along dim 0 -> [W * B, ...], rank order.

    No gradient flows to remote ranks. With ``keep_local_grad`` this rank's slice is ``x`` itself (differentiable);
    otherwise the whole result is detached (upstream multi-GPU semantics). Every rank must pass the same B.
    """
    world, rank = world_and_rank(group)
    if world == 1:
        return x if keep_local_grad else x.detach()
    sizes = torch.tensor([x.shape[0]], device=x.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes, group=group)
    if any(int(s) != x.shape[0] for s in all_sizes):
        raise ValueError(f"all_gather_features: every rank must pass the same batch size (use drop_last), "
                         f"got {[int(s) for s in all_sizes]}")
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous(), group=group)
    if keep_local_grad:
        parts[rank] = x
    return torch.cat(parts, dim=0)  # [W * B, ...]


def mtc_loss(graph_feats: torch.Tensor, text_feats: torch.Tensor, *, temperature: float = MTC_TEMPERATURE,
             keep_local_grad: bool = True, group: dist.ProcessGroup | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Molecule-text contrastive loss.

    graph_feats [B, Q, E] and text_feats [B, E], both L2-normalised. Returns (loss, logits_g2t, logits_t2g) where
    the logits are this rank's local [B, B] blocks of sim / temperature (what MTM samples negatives from).
    """
    if graph_feats.dim() != 3 or text_feats.dim() != 2 or graph_feats.shape[0] != text_feats.shape[0] \
            or graph_feats.shape[2] != text_feats.shape[1]:
        raise ValueError(f"mtc_loss: graph_feats must be [B, Q, E] and text_feats [B, E], got "
                         f"{list(graph_feats.shape)} and {list(text_feats.shape)}")
    B = graph_feats.shape[0]
    _, rank = world_and_rank(group)
    graph_all = all_gather_features(graph_feats, keep_local_grad=keep_local_grad, group=group)  # [W*B, Q, E]
    text_all = all_gather_features(text_feats, keep_local_grad=keep_local_grad, group=group)  # [W*B, E]
    sim_g2t = torch.einsum("bqe,ce->bcq", graph_feats, text_all).amax(dim=-1)  # [B, W*B]
    sim_t2g = torch.einsum("be,cqe->bcq", text_feats, graph_all).amax(dim=-1)  # [B, W*B]
    logits_g2t = sim_g2t.float() / temperature
    logits_t2g = sim_t2g.float() / temperature
    targets = torch.arange(rank * B, rank * B + B, device=graph_feats.device)  # [B]
    loss = 0.5 * (F.cross_entropy(logits_g2t, targets) + F.cross_entropy(logits_t2g, targets))
    local = slice(rank * B, rank * B + B)
    return loss, logits_g2t[:, local], logits_t2g[:, local]


@torch.no_grad()
def hard_negative_weights(logits: torch.Tensor) -> torch.Tensor:
    """softmax(logits [B, B], dim=1) + 1e-4 with the diagonal set to 0 (unnormalised sampling weights)."""
    w = F.softmax(logits.float(), dim=1) + MTM_EPS  # [B, B] fp32
    return w.fill_diagonal_(0)


@torch.no_grad()
def sample_hard_negatives(logits_g2t: torch.Tensor, logits_t2g: torch.Tensor, *,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative per side, drawn from hard_negative_weights of the local [B, B] blocks.

    Returns (neg_graph_for_text [B], neg_text_for_graph [B]) as int64 indices into the local batch.
    """
    B = logits_g2t.shape[0]
    if B < 2:
        raise ValueError(f"sample_hard_negatives: MTM needs at least 2 molecules per rank, got B = {B}")
    neg_graph = torch.multinomial(hard_negative_weights(logits_t2g), 1, generator=generator).squeeze(1)  # [B]
    neg_text = torch.multinomial(hard_negative_weights(logits_g2t), 1, generator=generator).squeeze(1)  # [B]
    return neg_graph, neg_text


def mtm_labels(B: int, device: torch.device | str) -> torch.Tensor:
    """[1]*B + [0]*2B: order of the 3B batch is (text, mol), (text, neg mol), (neg text, mol)."""
    return torch.cat([torch.ones(B, dtype=torch.long, device=device), torch.zeros(2 * B, dtype=torch.long,
                                                                                   device=device)])


def mtm_loss(query_logits: torch.Tensor) -> torch.Tensor:
    """query_logits [3B, Q, 2] = gtm_head(query outputs), or [3B, 2] already averaged over the queries
    (``QFormer.match_logits``); logit = mean over queries; CE with mtm_labels."""
    if query_logits.dim() not in (2, 3) or query_logits.shape[0] % 3 or query_logits.shape[-1] != 2:
        raise ValueError(f"mtm_loss: query_logits must be [3B, Q, 2] or [3B, 2], got {list(query_logits.shape)}")
    logits = query_logits.float().mean(dim=1) if query_logits.dim() == 3 else query_logits.float()  # [3B, 2]
    return F.cross_entropy(logits, mtm_labels(query_logits.shape[0] // 3, query_logits.device))


def mtg_loss(logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = MTG_LABEL_SMOOTHING
             ) -> torch.Tensor:
    """logits [B, L, V] at the text positions, labels [B, L] (-100 = ignored): CE(logits[:, :-1], labels[:, 1:])."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"mtg_loss: logits must be [B, L, V] and labels [B, L], got {list(logits.shape)} and "
                         f"{list(labels.shape)}")
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()  # [B*(L-1), V]
    target = labels[:, 1:].reshape(-1)  # [B*(L-1)]
    return F.cross_entropy(shifted, target, ignore_index=-100, label_smoothing=label_smoothing)


def mtg_loss_fused(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor,
                   *, label_smoothing: float = MTG_LABEL_SMOOTHING) -> torch.Tensor:
    """MTG from the LM head's input: hidden [B, L, C], decoder weight [V, C] (+ bias [V]).

    On CUDA with liger-kernel installed this never materialises the [B*L, V] logits (fused linear CE, the same
    math); otherwise it is mtg_loss(hidden @ weight.T + bias, labels).
    """
    if hidden.is_cuda:
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError:
            liger_fused_linear_cross_entropy = None
        if liger_fused_linear_cross_entropy is not None:
            h = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # [B*(L-1), C]
            target = labels[:, 1:].reshape(-1)
            return liger_fused_linear_cross_entropy(h, weight, target, bias, ignore_index=-100,
                                                    label_smoothing=label_smoothing)
    return mtg_loss(F.linear(hidden, weight, bias), labels, label_smoothing=label_smoothing)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage 2/3 causal-LM loss (HF LlamaForCausalLM: shift by 1, mean over non -100, no smoothing)."""
    return mtg_loss(logits, labels, label_smoothing=0.0)
