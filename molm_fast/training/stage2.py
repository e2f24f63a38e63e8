"""Stages 2 and 3: LoRA instruction tuning of the LLM with the molecule spliced in (spec §1.4, §2.1); ``train_stage2``.

Trainable: the Q-Former query path (query tokens, ln_graph, pruned Qformer, llm_proj) and LoRA; frozen: Uni-Mol
and every LLM base weight. Stage 2 is captioning ("Describe the input molecule."); stage 3 (``cfg.stage == 3``)
draws from several sources (caption TSVs and 3D-MoIT JSON instruction files, ``data.load_sources``) with p
proportional to |D|^0.25 (``MixtureBatchSampler``) and the per-step cosine.
Sequences are upstream's ``</s> prompt </s> target`` (``models.llm.encode_training_batch``). Fast path
(``cfg.packing``): the micro-batch's B samples packed into one row (``packing.pack_sequences``): the same samples per
step, the same per-micro-batch token-mean loss, no pad computed. ``cfg.packing=False`` is the reference layout (left
padding to 320 in stage 2, to the longest in stage 3). On CUDA with liger-kernel installed (``cfg.liger``), the
LLM's RMSNorm, RoPE, SwiGLU and cross-entropy are Liger's fused kernels (``fused_linear_cross_entropy``: the [T, V]
logits are never materialised).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from molm_fast.training.config import TrainConfig
from molm_fast.training.data import PairData, concat_pairs, load_pairs, load_sources
from molm_fast.training.loop import TrainTask, setup_distributed, train
from molm_fast.training.packing import pack_sequences, packed_attention_kwargs, use_packed_attention
from molm_fast.training.sampler import EpochBatchSampler, MixtureBatchSampler


class Stage2Step(nn.Module):
    def __init__(self, molm) -> None:
        super().__init__()
        self.graph_encoder, self.qformer, self.llm = molm.graph_encoder, molm.qformer, molm.llm

    def train(self, mode: bool = True) -> Stage2Step:
        super().train(mode)
        self.graph_encoder.eval()
        return self

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        mol = batch["mol"]
        with torch.no_grad():
            states, mask = self.graph_encoder(mol.tokens, mol.coords)  # [B, N, C]
        mol_embeds = self.qformer.llm_proj(self.qformer(states.detach(), mask))  # [B, Q, hidden]
        ids = batch["input_ids"]
        if "position_ids" in batch:  # packed: one row [1, T]; the <mol> slots are filled row-major, in order
            embeds = self.llm.embed(ids, mol_embeds.reshape(1, -1, mol_embeds.shape[-1]))
            out = self.llm.llm_model(inputs_embeds=embeds, position_ids=batch["position_ids"], labels=batch["labels"],
                                     use_cache=False, **packed_attention_kwargs(batch["cu_seqlens"],
                                                                                batch["max_seqlen"]))
        else:
            out = self.llm(ids, batch["attention_mask"], mol_embeds, labels=batch["labels"])
        return {"loss": out.loss, "lm": out.loss.detach(), "stats": batch["stats"]}


class SequenceCollate:
    """indices -> {"mol", "input_ids", ("position_ids" | "attention_mask"), "labels", "stats"}."""

    def __init__(self, data: PairData, tokenizer, cfg: TrainConfig) -> None:
        self.data, self.tokenizer, self.cfg = data, tokenizer, cfg

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        from molm_fast.models.llm import CAPTION_INSTRUCTION, build_prompt, encode_training_batch

        cfg = self.cfg
        d = self.data
        prompts = [build_prompt(d.smiles[i], d.instructions[i] if d.instructions else CAPTION_INSTRUCTION,
                                task=d.tasks[i] if d.tasks else None) for i in indices]
        enc = encode_training_batch(self.tokenizer, prompts, [self.data.texts[i] for i in indices],
                                    max_length=cfg.text_max_length,
                                    pad_to_max_length=cfg.stage == 2 and cfg.text_padding == "max_length")
        mol = self.data.store.batch(indices, layout="padded", seed=cfg.seed)
        if cfg.packing:
            keep = enc["attention_mask"].bool()  # [B, L]
            rows = [enc["input_ids"][b][keep[b]].tolist() for b in range(len(indices))]
            labels = [enc["labels"][b][keep[b]].tolist() for b in range(len(indices))]
            packed = pack_sequences(rows, labels)
            return {"mol": mol, **{k: packed[k] for k in ("input_ids", "position_ids", "labels", "cu_seqlens",
                                                           "max_seqlen", "stats")}}
        real = int(enc["attention_mask"].sum())
        return {"mol": mol, **enc, "stats": {"molecules": len(indices), "real_tokens": real,
                                             "token_slots": enc["input_ids"].numel()}}


def stage2_model(cfg: TrainConfig, init_from: str | None):
    """The stages-2/3 MoLM of preset ``cfg.model``, with Uni-Mol and the Q-Former taken from ``init_from`` (a
    stage-1 ``model`` folder or checkpoint) where names and shapes match (upstream: strict=False)."""
    from molm_fast.models import MoLM, get_config
    from molm_fast.models.checkpoint import load_into

    mcfg = get_config(cfg.model)
    if cfg.llm_path is not None:
        mcfg.llm.path = cfg.llm_path
    molm = MoLM(mcfg)
    if init_from is not None:
        prev = MoLM.from_pretrained(init_from).state_dict()
        own = molm.state_dict()
        take = {k: v for k, v in prev.items() if k.startswith(("graph_encoder.", "qformer."))
                and k in own and own[k].shape == v.shape}
        load_into(molm, take, what=f"stage-{cfg.stage} init from {init_from}")
    return molm


def prepare_llm(molm, cfg: TrainConfig) -> None:
    """Per-sample packed attention (``cfg.packing``) and, on CUDA, Liger-Kernel's fused ops (``cfg.liger``)."""
    base = molm.llm.llm_model.get_base_model() if hasattr(molm.llm.llm_model, "get_base_model") \
        else molm.llm.llm_model
    if cfg.packing:
        use_packed_attention(base)
    if cfg.liger and torch.cuda.is_available():
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_llama
        except ImportError:
            apply_liger_kernel_to_llama = None
        if apply_liger_kernel_to_llama is not None:
            apply_liger_kernel_to_llama(model=base)


@torch.no_grad()
def evaluate_lm_loss(step: Stage2Step, data: PairData, collate: SequenceCollate, *, batch_size: int = 16,
                     device: torch.device | str = "cpu", max_batches: int | None = None) -> float:
    """Mean teacher-forced LM loss over consecutive batches of ``data`` (eval mode)."""
    from molm_fast.training.loop import to_device

    was_training = step.training
    step.eval()
    vals = []
    for n, start in enumerate(range(0, len(data) - batch_size + 1, batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        vals.append(float(step(to_device(collate(list(range(start, start + batch_size))), device))["loss"]))
    step.train(was_training)
    return sum(vals) / max(len(vals), 1)


def train_stage2(cfg: TrainConfig, *, resume: bool = False, train_data: PairData | list[PairData] | None = None,
                 eval_data: PairData | None = None, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train stage 2 (or 3 with ``cfg.stage == 3`` and a list of sources); returns {"model", "out_dir",
    "metrics_path", "checkpoint", "eval_loss_before", "eval_loss_after"}. ``cfg.init_from``: stage-1 output."""
    if cfg.stage not in (2, 3):
        raise ValueError(f"train_stage2: cfg.stage must be 2 or 3, got {cfg.stage}")
    world, rank, device = setup_distributed()
    from molm_fast.models import MoLM

    out = Path(cfg.out_dir)
    base = out / "base"
    if resume and (base / "config.json").exists():
        molm = MoLM.from_pretrained(base)
    else:
        torch.manual_seed(cfg.seed)
        molm = stage2_model(cfg, cfg.init_from)
        if rank == 0:
            molm.save_pretrained(base)
    prepare_llm(molm, cfg)
    if train_data is None:  # comma-separated TSVs / 3D-MoIT JSONs: one source each (stage 3 mixes them by |D|^0.25)
        train_data = load_sources(cfg.train_data.split(","), molecules=cfg.molecules,
                                  conformer_cache=cfg.conformer_cache, max_molecules=cfg.max_molecules)
    sources = train_data if isinstance(train_data, list) else [train_data]
    data = sources[0] if len(sources) == 1 else concat_pairs(sources)
    if cfg.stage == 3:
        sampler = MixtureBatchSampler([len(s) for s in sources], cfg.batch_size, seed=cfg.seed, rank=rank,
                                      world_size=world)
    else:
        sampler = EpochBatchSampler(len(data), cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    step = Stage2Step(molm)
    collate = SequenceCollate(data, molm.llm.tokenizer, cfg)
    if eval_data is None and cfg.eval_data:
        eval_data = load_pairs(cfg.eval_data, molecules=cfg.molecules, conformer_cache=cfg.conformer_cache)
    eval_collate = SequenceCollate(eval_data, molm.llm.tokenizer, cfg) if eval_data is not None else None
    before = evaluate_lm_loss(step.to(device), eval_data, eval_collate, device=device, max_batches=8) \
        if eval_collate is not None and rank == 0 and not resume else None
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    task = TrainTask(module=step, dataset=range(len(data)), collate=collate, sampler=sampler,
                     model_config={**molm.config.to_dict(), "base_model": "../../base"},
                     wrap_classes=(LlamaDecoderLayer,))
    result = train(cfg, task, resume=resume, device=device, stop_after_steps=stop_after_steps)
    if rank == 0:
        molm.save_pretrained(out / "model")
    after = evaluate_lm_loss(step, eval_data, eval_collate, device=device, max_batches=8) \
        if eval_collate is not None and rank == 0 else None
    return {**result, "model": molm, "out_dir": out, "eval_loss_before": before, "eval_loss_after": after}

