"""Stage 1: Q-Former pretraining with MTC + MTM + MTG (spec 3d-molm.md §2.1, §2.3); ``train_stage1(cfg)``.

``Stage1Step`` holds the MoLM's ``graph_encoder`` (frozen, eval) and ``qformer`` under the MoLM's own attribute names,
so checkpoint keys are MoLM keys. Its forward on a batch of B (molecule, text) pairs: Uni-Mol (no grad) -> query
pass (keeping the query K/V for MTG) -> text pass -> MTC over all ranks' features -> one hard negative per side
-> joint pass over 3B pairs (MTM) -> [DEC] captioning (MTG); loss = the unweighted sum.
Fast paths that change no math: text padded to the batch's longest instead of 256 (``text_padding="longest"``),
and ``cache_encoder``: the frozen Uni-Mol's outputs kept across epochs (exact in eval mode; molecules are featurised
deterministically, and the crop of > 256-atom molecules is seeded per molecule).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from molm_fast.training import losses
from molm_fast.training.config import TrainConfig
from molm_fast.training.data import PairData, load_pairs
from molm_fast.training.loop import TrainTask, setup_distributed, train
from molm_fast.training.sampler import EpochBatchSampler
from molm_fast.training.text import build_wordpiece_tokenizer, load_tokenizer, text_batch

QFORMER_TOKENIZER_DIR = "qformer_tokenizer"


class Stage1Step(nn.Module):
    def __init__(self, molm, *, pad_token_id: int, cache_encoder: bool = False) -> None:
        super().__init__()
        self.graph_encoder, self.qformer = molm.graph_encoder, molm.qformer
        self.pad_token_id = pad_token_id
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] | None = {} if cache_encoder else None

    def train(self, mode: bool = True) -> Stage1Step:
        super().train(mode)
        self.graph_encoder.eval()  # frozen Uni-Mol stays in eval mode (spec §2.1)
        return self

    @torch.no_grad()
    def encode(self, mol) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Uni-Mol atom states [B, N, C] and padding mask [B, N] (True = pad) or None."""
        if self.cache is None:
            states, mask = self.graph_encoder(mol.tokens, mol.coords)
            return states.detach(), mask
        keys = mol.indices.tolist()
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            states, _ = self.graph_encoder(mol.tokens[missing], mol.coords[missing])  # [b, N', C]
            for j, i in enumerate(missing):
                n = int(mol.lengths[i])
                pad = states[j, n].clone() if states.shape[1] > n else None  # the pad-readout vector (spec §1.3)
                self.cache[keys[i]] = (states[j, :n].clone(), pad)
        B, N = mol.tokens.shape
        out = mol.coords.new_zeros(B, N, self.graph_encoder.config.embed_dim)  # [B, N, C]
        for b, k in enumerate(keys):
            real, pad = self.cache[k]
            out[b, :real.shape[0]] = real
            if N > real.shape[0]:
                if pad is None:  # never seen with pads: run it once at this width
                    s, _ = self.graph_encoder(mol.tokens[b:b + 1], mol.coords[b:b + 1])
                    pad = s[0, real.shape[0]].clone()
                    self.cache[k] = (real, pad)
                out[b, real.shape[0]:] = pad
        mask = mol.tokens.eq(0)
        return out, (mask if bool(mask.any()) else None)

    def embed(self, mol, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Retrieval features: graph [B, Q, E] and text [B, E], L2-normalised."""
        states, mask = self.encode(mol)
        z = self.qformer(states, mask)
        return self.qformer.graph_features(z), self.qformer.text_features(
            self.qformer.text_forward(input_ids, attention_mask))

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        mol, ids, att = batch["mol"], batch["input_ids"], batch["attention_mask"]
        states, mask = self.encode(mol)  # [B, N, C]
        z, cache = self.qformer(states, mask, return_cache=True)  # [B, Q, H]
        g = self.qformer.graph_features(z)  # [B, Q, E]
        t = self.qformer.text_features(self.qformer.text_forward(ids, att))  # [B, E]
        mtc, logits_g2t, logits_t2g = losses.mtc_loss(g, t)
        neg_graph, neg_text = losses.sample_hard_negatives(logits_g2t, logits_t2g)
        ids3 = torch.cat([ids, ids, ids[neg_text]])  # texts [T, T, T_neg]
        att3 = torch.cat([att, att, att[neg_text]])
        states3 = torch.cat([states, states[neg_graph], states])  # molecules [M, M_neg, M]
        mask3 = None if mask is None else torch.cat([mask, mask[neg_graph], mask])
        mtm = losses.mtm_loss(self.qformer.match_logits(ids3, att3, states3, mask3))
        labels = ids.masked_fill(ids == self.pad_token_id, -100)
        mtg = losses.mtg_loss(self.qformer.caption_logits(ids, att, cache), labels)
        real = int(att.sum())
        return {"loss": mtc + mtm + mtg, "mtc": mtc, "mtm": mtm, "mtg": mtg,
                "stats": {"molecules": ids.shape[0], "real_tokens": real, "token_slots": ids.numel()}}


class PairCollate:
    """indices -> {"mol": PaddedBatch, "input_ids", "attention_mask"} (picklable for DataLoader workers)."""

    def __init__(self, data: PairData, tokenizer, cfg: TrainConfig) -> None:
        self.data, self.tokenizer = data, tokenizer
        self.max_length, self.padding, self.seed = cfg.text_max_length, cfg.text_padding, cfg.seed

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        mol = self.data.store.batch(indices, layout="padded", seed=self.seed)
        text = text_batch(self.tokenizer, [self.data.texts[i] for i in indices], max_length=self.max_length,
                          padding=self.padding)
        return {"mol": mol, **text}


def stage1_model(cfg: TrainConfig, tokenizer):
    """A fresh stage-1 MoLM of preset ``cfg.model`` whose Q-Former vocabulary fits ``tokenizer`` (tiny)."""
    from molm_fast.models import MoLM, get_config

    mcfg = get_config(cfg.model).stage1()
    mcfg.qformer = dataclasses.replace(mcfg.qformer, vocab_size=len(tokenizer), dec_token_id=tokenizer.bos_token_id)
    if cfg.corrected_mask is not None:
        mcfg.qformer = dataclasses.replace(mcfg.qformer, corrected_mask=cfg.corrected_mask)
    if cfg.qformer_dropout is not None:
        mcfg.qformer = dataclasses.replace(mcfg.qformer, hidden_dropout=cfg.qformer_dropout,
                                           attention_dropout=cfg.qformer_dropout)
    return MoLM(mcfg, bert_dir=cfg.bert_dir)


@torch.no_grad()
def evaluate_retrieval(step: Stage1Step, data: PairData, tokenizer, cfg: TrainConfig, *, batch_size: int = 32,
                       device: torch.device | str = "cpu") -> dict[str, float]:
    """In-batch retrieval accuracy (chance = 1/batch_size) over consecutive batches, both directions."""
    was_training, cache = step.training, step.cache
    step.eval()
    step.cache = None  # the cache is keyed by the training store's indices
    collate = PairCollate(data, tokenizer, cfg)
    hits_g2t = hits_t2g = total = 0
    for start in range(0, len(data) - batch_size + 1, batch_size):
        batch = collate(list(range(start, start + batch_size)))
        g, t = step.embed(batch["mol"].to(device), batch["input_ids"].to(device), batch["attention_mask"].to(device))
        sim = torch.einsum("bqe,ce->bcq", g, t).amax(-1)  # [B, B] molecule b vs text c
        target = torch.arange(batch_size, device=sim.device)
        hits_g2t += int((sim.argmax(1) == target).sum())
        hits_t2g += int((sim.argmax(0) == target).sum())
        total += batch_size
    step.train(was_training)
    step.cache = cache
    return {"g2t_acc": hits_g2t / max(total, 1), "t2g_acc": hits_t2g / max(total, 1), "chance": 1 / batch_size,
            "pairs": total, "batch_size": batch_size}


def train_stage1(cfg: TrainConfig, *, resume: bool = False, train_data: PairData | None = None,
                 eval_data: PairData | None = None, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train stage 1; returns {"model": MoLM, "tokenizer", "out_dir", "metrics_path", "checkpoint", "retrieval"}.

    The full model (frozen parts included) is written once to ``<out_dir>/base`` (MoLM.save_pretrained), each
    checkpoint holds the trainable weights with ``base_model`` pointing there, and the trained model is written
    to ``<out_dir>/model``; the Q-Former tokenizer sits in each as ``qformer_tokenizer/``.
    """
    if cfg.stage != 1:
        raise ValueError(f"train_stage1: cfg.stage must be 1, got {cfg.stage}")
    world, rank, device = setup_distributed()
    train_data = train_data or load_pairs(cfg.train_data, molecules=cfg.molecules,
                                          conformer_cache=cfg.conformer_cache, max_molecules=cfg.max_molecules)
    out = Path(cfg.out_dir)
    base = out / "base"
    resuming = resume and (base / "config.json").exists()
    if resuming:
        from molm_fast.models import MoLM

        tokenizer = load_tokenizer(base / QFORMER_TOKENIZER_DIR)
        molm = MoLM.from_pretrained(base)
    else:
        torch.manual_seed(cfg.seed)  # the same initial model on every rank
        if cfg.bert_dir is not None:  # paper: SciBERT's tokenizer + [DEC], Q-Former initialised from SciBERT
            tokenizer = load_tokenizer(cfg.bert_dir)
            tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        elif cfg.model == "paper":
            raise ValueError("train_stage1: the paper preset needs bert_dir (a local SciBERT folder)")
        else:
            tokenizer = build_wordpiece_tokenizer(train_data.texts)
        molm = stage1_model(cfg, tokenizer)
        if rank == 0:
            molm.save_pretrained(base)
            tokenizer.save_pretrained(base / QFORMER_TOKENIZER_DIR)
    step = Stage1Step(molm, pad_token_id=tokenizer.pad_token_id, cache_encoder=cfg.cache_encoder)
    sampler = EpochBatchSampler(len(train_data), cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    task = TrainTask(module=step, dataset=range(len(train_data)), collate=PairCollate(train_data, tokenizer, cfg),
                     sampler=sampler, model_config={**molm.config.to_dict(), "base_model": "../../base"})
    result = train(cfg, task, resume=resume, device=device, stop_after_steps=stop_after_steps)
    if rank == 0:
        molm.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model" / QFORMER_TOKENIZER_DIR)
        if result["checkpoint"] is not None:
            tokenizer.save_pretrained(Path(result["checkpoint"]) / QFORMER_TOKENIZER_DIR)
    retrieval = None
    if eval_data is None and cfg.eval_data:
        eval_data = load_pairs(cfg.eval_data, molecules=cfg.molecules, conformer_cache=cfg.conformer_cache)
    if eval_data is not None and rank == 0:
        retrieval = evaluate_retrieval(step, eval_data, tokenizer, cfg, device=device)
    return {**result, "model": molm, "tokenizer": tokenizer, "out_dir": out, "retrieval": retrieval}
