"""Every key map between molm_fast and the released weights, the mismatch report, and the .ckpt converter.

Sources (spec 3d-molm.md §5): Uni-Mol ``mol_pre_no_h_220816.pt['model']`` (keys = ``UniMolEncoder``'s, plus heads
3D-MoLM ignores); Hugging Face BERT dirs (SciBERT) for the Q-Former init; 3D-MoLM Lightning checkpoints with prefix
``blip2qformer.`` (stage 1, stage 1-ft) or ``blip2opt.`` (stage 2, generalist) holding only trainable tensors (bf16):
Q-Former keys = ``QFormer``'s, LoRA under ``llm_model.base_model.model...`` (peft naming). ``MoLM``'s own layout is
``graph_encoder.*`` (Uni-Mol), ``qformer.*`` (QFormer) and ``llm.llm_model.*`` (the peft-wrapped LM).
Pickles are always read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn

UNIMOL_IGNORED_PREFIXES = ("lm_head.", "pair2coord_proj.", "dist_head.", "encoder.final_head_layer_norm.",
                           "classification_head.")
LIGHTNING_PREFIXES = ("blip2qformer.", "blip2opt.")
_HF_QUERY_PATH = re.compile(
    r"Qformer\.bert\.encoder\.layer\.\d+\.(attention|crossattention|intermediate_query|output_query|intermediate|output)\.")


@dataclass
class LoadReport:
    """What a load did: keys the model expected but did not get, keys it got but has no place for."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def show(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        return f"missing {len(self.missing)} [{show(self.missing)}]; unexpected {len(self.unexpected)} " \
               f"[{show(self.unexpected)}]"


def load_into(module: nn.Module, state_dict: dict[str, torch.Tensor], *, what: str = "checkpoint",
              strict: bool = False) -> LoadReport:
    """Copy ``state_dict`` into ``module`` (casting dtypes). A wrong shape is refused, naming every such key with
    both shapes; missing/unexpected keys are returned (and raise with ``strict``)."""
    own = module.state_dict()
    bad = [f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}" for k, v in state_dict.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{what}: {len(bad)} tensors have the wrong shape: " + "; ".join(bad))
    report = LoadReport(missing=sorted(set(own) - set(state_dict)), unexpected=sorted(set(state_dict) - set(own)))
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"{what}: keys do not match the model: {report}")
    casted = {k: v.to(own[k].dtype) for k, v in state_dict.items() if k in own}
    module.load_state_dict(casted, strict=False, assign=any(p.is_meta for p in own.values()))
    return report


def read_pickle(path: str | os.PathLike) -> dict:
    """A .pt/.ckpt/.bin file, unpickled with weights_only=True (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- Uni-Mol ---------------------------------------------------------------------------------------------
def load_unimol(encoder: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Uni-Mol's ``mol_pre_no_h_220816.pt`` (``['model']``) into ``UniMolEncoder``. The pretraining heads 3D-MoLM
    ignores are reported as unexpected; a missing encoder key raises."""
    sd = read_pickle(path)
    sd = sd.get("model", sd)
    report = load_into(encoder, sd, what=f"Uni-Mol {path}")
    if report.missing:
        raise ValueError(f"Uni-Mol {path}: encoder keys missing from the file: {report.missing}")
    return report


# ---- Q-Former from a Hugging Face BERT directory ------------------------------------------------------------
def bert_to_qformer_state_dict(qformer_cls, bert_dir: str | os.PathLike, config=None):
    """Build ``qformer_cls`` from a local BERT dir as 3D-MoLM's ``init_Qformer`` + ``Blip2Qformer.__init__``."""
    from transformers import BertConfig, BertForMaskedLM

    from molm_fast.models.config import QFormerConfig

    bert_cfg = BertConfig.from_pretrained(bert_dir)
    if bert_cfg.hidden_act != "gelu":
        raise ValueError(f"QFormer.from_bert: {bert_dir} uses hidden_act={bert_cfg.hidden_act!r}; only 'gelu'")
    base = config or QFormerConfig(text_side=True, llm_dim=None)
    cfg = dataclasses.replace(
        base, num_layers=bert_cfg.num_hidden_layers, hidden_size=bert_cfg.hidden_size,
        num_heads=bert_cfg.num_attention_heads, intermediate_size=bert_cfg.intermediate_size,
        vocab_size=bert_cfg.vocab_size + 1, dec_token_id=bert_cfg.vocab_size,
        max_position_embeddings=bert_cfg.max_position_embeddings, pad_token_id=bert_cfg.pad_token_id or 0,
        layer_norm_eps=bert_cfg.layer_norm_eps, hidden_dropout=bert_cfg.hidden_dropout_prob,
        attention_dropout=bert_cfg.attention_probs_dropout_prob, initializer_range=bert_cfg.initializer_range,
        bert_dir=str(bert_dir))
    model = qformer_cls(cfg)
    bert = BertForMaskedLM.from_pretrained(bert_dir).state_dict()
    sd = {}
    for k, v in bert.items():
        if "token_type_embeddings" in k or "position_ids" in k or k.startswith("bert.pooler"):
            continue  # LAVIS's Q-Former has no token types or pooler
        sd[f"Qformer.{k}"] = v
        if (".intermediate." in k or ".output." in k) and ".attention." not in k and k.startswith("bert.encoder"):
            # the text FFN seeds the query FFN (Blip2Qformer.__init__)
            q = k.replace(".intermediate.", ".intermediate_query.").replace(".output.", ".output_query.")
            sd[f"Qformer.{q}"] = v
    own = model.state_dict()
    words = "Qformer.bert.embeddings.word_embeddings.weight"
    for key in (words, "Qformer.cls.predictions.decoder.weight", "Qformer.cls.predictions.bias",
                "Qformer.cls.predictions.decoder.bias"):
        if key in sd and key in own and sd[key].shape[0] != own[key].shape[0]:  # resize to + [DEC]
            grown = own[key].clone()
            grown[: sd[key].shape[0]] = sd[key]
            sd[key] = grown
    load_into(model, {k: v for k, v in sd.items() if k in own}, what=f"BERT {bert_dir}")
    if cfg.text_side:  # tied decoder follows the (resized) word embeddings
        model.Qformer.cls.predictions.decoder.weight = model.Qformer.bert.embeddings.word_embeddings.weight
    return model


def qformer_to_hf_blip2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``QFormer`` keys -> transformers' ``Blip2QFormerModel`` keys (word/position embeddings and heads dropped)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("Qformer.bert.embeddings.LayerNorm."):
            out[k.replace("Qformer.bert.embeddings.LayerNorm.", "layernorm.")] = v
        elif _HF_QUERY_PATH.match(k):
            out[k.removeprefix("Qformer.bert.").replace(".self.", ".attention.")] = v
    return out
