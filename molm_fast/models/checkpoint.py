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
import pickle
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


# ---- Lightning checkpoints (3D-MoLM releases) -----------------------------------------------------------------
def _inert_class(qualified: str) -> type:
    """A stand-in for a class a checkpoint pickled (e.g. Lightning's AttributeDict): holds data, runs no code."""
    module, _, name = qualified.rpartition(".")

    def setstate(self, state):
        self.update(state if isinstance(state, dict) else {"state": state})

    return type(name, (dict,), {"__module__": module, "__qualname__": name, "__setstate__": setstate})


def read_lightning_checkpoint(path: str | os.PathLike) -> dict:
    """Unpickle a Lightning ``.ckpt`` with ``weights_only=True``. Classes other than tensors/containers (hparams
    objects) are replaced by inert dict stand-ins, never imported or run."""
    stubs: list[type] = []
    for _ in range(32):
        try:
            with torch.serialization.safe_globals(stubs):
                return read_pickle(path)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(exc))
            if found is None:
                raise
            stubs.append(_inert_class(found.group(1)))
    raise ValueError(f"read_lightning_checkpoint: {path} pickles too many unknown classes")


def strip_lightning_prefix(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove ``blip2qformer.`` (stage 1) or ``blip2opt.`` (stages 2/3); returns (state dict, prefix)."""
    for prefix in LIGHTNING_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items()}, prefix
    heads = sorted({k.split(".", 1)[0] for k in state_dict})
    raise ValueError(f"checkpoint: expected every key to start with one of {LIGHTNING_PREFIXES}, got prefixes {heads}")


def lightning_to_molm_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """3D-MoLM (prefix stripped) -> ``MoLM`` keys: Uni-Mol and LLM sub-modules keep their place, the rest is the
    Q-Former's (query_tokens, ln_graph, Qformer.*, heads, llm_proj)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("llm_model."):
            out[f"llm.{k}"] = v
        elif k.startswith("graph_encoder."):
            out[k] = v
        else:
            out[f"qformer.{k}"] = v
    return out


def _aliases(module: nn.Module) -> set[str]:
    """State-dict keys whose tensor is another key's (tied weights): saved once, re-tied by construction."""
    seen, alias = set(), set()
    for k, v in module.state_dict(keep_vars=True).items():
        ptr = (v.data_ptr(), v.dtype, tuple(v.shape)) if not v.is_meta else None
        if ptr is not None and ptr in seen:
            alias.add(k)
        elif ptr is not None:
            seen.add(ptr)
    return alias


def _llm_base_keys(model) -> set[str]:
    """LLM weights read unchanged from ``config.llm.path`` (not saved); empty when the LLM is built in code."""
    if model.llm is None or model.config.llm.path is None:
        return set()
    return {k for k in model.state_dict() if k.startswith("llm.") and "lora_" not in k}


def _embedding_tables(model) -> dict[str, nn.Module]:
    lm = model.llm.llm_model
    return {"input": lm.get_input_embeddings(), "output": lm.get_output_embeddings()}


def export_state_dict(model) -> dict[str, torch.Tensor]:
    """What ``MoLM.save_pretrained`` writes: everything but tied aliases and LLM base weights from its path; the
    re-created [PAD]/<mol> rows are kept as ``llm.added_rows.{input,output}``."""
    skip = _aliases(model) | _llm_base_keys(model)
    out = {k: v.detach() for k, v in model.state_dict().items() if k not in skip}
    if _llm_base_keys(model):
        base = model.llm.base_vocab_size
        for name, emb in _embedding_tables(model).items():
            if emb is not None and emb.weight.shape[0] > base:
                out[f"llm.added_rows.{name}"] = emb.weight.detach()[base:].clone()
    return out


def import_state_dict(model, state_dict: dict[str, torch.Tensor], *, what: str) -> LoadReport:
    """Inverse of ``export_state_dict``; anything else missing or unexpected raises."""
    sd = dict(state_dict)
    added = {name: sd.pop(f"llm.added_rows.{name}") for name in ("input", "output") if f"llm.added_rows.{name}" in sd}
    report = load_into(model, sd, what=what)
    missing = sorted(set(report.missing) - _aliases(model) - _llm_base_keys(model))
    if missing or report.unexpected:
        raise ValueError(f"{what}: keys do not match the model: {LoadReport(missing, report.unexpected)}")
    if added:
        base = model.llm.base_vocab_size
        with torch.no_grad():
            for name, rows in added.items():
                weight = _embedding_tables(model)[name].weight
                if tuple(rows.shape) != (weight.shape[0] - base, weight.shape[1]):
                    raise ValueError(f"{what}: llm.added_rows.{name} has shape {list(rows.shape)}, the model's "
                                     f"new rows are {[weight.shape[0] - base, weight.shape[1]]}")
                weight[base:] = rows.to(weight.dtype)
    return report


def convert_lightning_checkpoint(ckpt_path: str | os.PathLike, *, config=None, unimol_path=None, llm_path=None,
                                 out_dir=None, tokenizer=None):
    """A released 3D-MoLM ``.ckpt`` (stage1, stage1-ft, stage2, generalist) -> ``(MoLM, LoadReport)``.

    The stage comes from the key prefix (``blip2qformer.`` -> ``paper().stage1()``, ``blip2opt.`` -> ``paper()``)
    unless ``config`` is given. Uni-Mol comes from ``unimol_path`` (``mol_pre_no_h_220816.pt``), the LLM base from
    ``llm_path``; the ``[PAD]``/``<mol>`` rows, absent from every release, are re-created (N(0, 0.02)). bf16 values
    are cast to the model's dtypes. The report's ``missing`` lists every model key no source provided; its
    ``unexpected`` the checkpoint keys the model has no place for (e.g. stage-1 text side in a stage-2 model).
    With ``out_dir`` the result is also written with ``save_pretrained``.
    """
    from molm_fast.models.config import paper
    from molm_fast.models.molm import MoLM

    raw = read_lightning_checkpoint(ckpt_path)
    sd, prefix = strip_lightning_prefix(raw.get("state_dict", raw))
    cfg = config or (paper().stage1() if prefix == "blip2qformer." else paper())
    if llm_path is not None and cfg.llm is not None:
        cfg.llm.path = str(llm_path)
    model = MoLM(cfg, tokenizer=tokenizer)
    provided = set()
    if unimol_path is not None:
        load_unimol(model.graph_encoder, unimol_path)
        provided |= {f"graph_encoder.{k}" for k in model.graph_encoder.state_dict()}
    report = load_into(model, lightning_to_molm_keys(sd), what=f"checkpoint {ckpt_path}")
    report.missing = sorted(set(report.missing) - provided - _aliases(model) - _llm_base_keys(model))
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model, report
