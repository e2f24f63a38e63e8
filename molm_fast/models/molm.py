"""The whole 3D-MoLM: frozen Uni-Mol -> Q-Former -> (stages 2/3) LLM with LoRA and the <mol> splice.

Layout: ``graph_encoder`` (UniMolEncoder, always eval, no grad, outputs detached as upstream), ``qformer`` (QFormer:
query tokens, ln_graph, Qformer, stage-1 heads or llm_proj) and ``llm`` (MoLMLLM, None for a stage-1 model).
``save_pretrained(dir)`` writes ``config.json`` + ``model.safetensors``; LLM base weights that come unchanged from
``config.llm.path`` are not written (the re-created ``[PAD]``/``<mol>`` rows are, as ``llm.added_rows.*``), so
``from_pretrained`` reproduces the model bit for bit. Released Lightning checkpoints go through
``checkpoint.convert_lightning_checkpoint``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from molm_fast.models.config import MoLMConfig, get_config
from molm_fast.models.llm import MoLMLLM, build_prompt, encode_prompts
from molm_fast.models.qformer import QFormer
from molm_fast.models.unimol import UniMolEncoder

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class MoLM(nn.Module):
    def __init__(self, config: MoLMConfig | str | None = None, *, tokenizer=None, bert_dir: str | None = None) -> None:
        super().__init__()
        cfg = get_config(config) if isinstance(config, str) else (config or MoLMConfig())
        self.config = cfg
        self.graph_encoder = UniMolEncoder(cfg.unimol)
        self.graph_encoder.requires_grad_(False)
        self.qformer = QFormer.from_bert(bert_dir, cfg.qformer) if bert_dir else QFormer(cfg.qformer)
        self.config.qformer = self.qformer.config
        self.llm = MoLMLLM(cfg.llm, tokenizer) if cfg.llm is not None else None
        self.train(False)

    def train(self, mode: bool = True) -> MoLM:
        super().train(mode)
        self.graph_encoder.eval()  # Uni-Mol is never trained in 3D-MoLM; dropout stays off (spec §1.2)
        return self

    # ---- molecule side ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_molecules(self, tokens: torch.Tensor, coords: torch.Tensor):
        """Uni-Mol: tokens [B, N], coords [B, N, 3] -> (atom states [B, N, 512], padding mask [B, N] or None)."""
        states, mask = self.graph_encoder(tokens, coords)
        return states.detach(), mask

    def query_states(self, tokens: torch.Tensor, coords: torch.Tensor, *, return_cache: bool = False):
        """Q-Former query-only pass: [B, Q, C] (+ the query K/V cache for the stage-1 captioning loss)."""
        states, mask = self.encode_molecules(tokens, coords)
        return self.qformer(states, mask, return_cache=return_cache)

    def mol_embeds(self, tokens: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Stages 2/3: llm_proj(query states) [B, Q, llm hidden], what replaces the <mol> embeddings."""
        return self.qformer.llm_proj(self.query_states(tokens, coords))

    # ---- stage 1 (spec §2.3) -----------------------------------------------------------------------------------
    def graph_features(self, query_states: torch.Tensor) -> torch.Tensor:
        return self.qformer.graph_features(query_states)  # [B, Q, 256] normalized

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.qformer.text_features(self.qformer.text_forward(input_ids, attention_mask))  # [B, 256]

    def match_logits(self, input_ids, attention_mask, tokens, coords) -> torch.Tensor:
        states, mask = self.encode_molecules(tokens, coords)
        return self.qformer.match_logits(input_ids, attention_mask, states, mask)  # [B, 2]

    def caption_loss(self, input_ids, attention_mask, cache) -> torch.Tensor:
        return self.qformer.caption_loss(input_ids, attention_mask, cache)

    # ---- stages 2/3 ------------------------------------------------------------------------------------------
    def lm_loss(self, tokens, coords, input_ids, attention_mask, labels) -> torch.Tensor:
        """Causal-LM loss on ``encode_training_batch`` output with the molecule spliced in."""
        return self.llm(input_ids, attention_mask, self.mol_embeds(tokens, coords), labels=labels).loss

    def prompt_embeds(self, tokens, coords, input_ids) -> torch.Tensor:
        """inputs_embeds [B, L, C] for generation: prompt embeddings with the molecule spliced in."""
        return self.llm.embed(input_ids, self.mol_embeds(tokens, coords))

    def encode_prompts(self, smiles: list[str], instructions: list[str] | None = None, *,
                       tasks: list[str | None] | None = None, padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Tokenised prompts (``</s>`` + template) for ``prompt_embeds``; right padding as upstream by default."""
        c = self.config.llm
        instructions = instructions or [None] * len(smiles)
        tasks = tasks or [None] * len(smiles)
        prompts = [build_prompt(s, *(() if i is None else (i,)), task=t, mol_token=c.mol_token,
                                num_query_tokens=self.config.qformer.num_query_tokens,
                                smiles_max_chars=c.smiles_max_chars,
                                description_max_chars=c.description_instruction_max_chars)
                   for s, i, t in zip(smiles, instructions, tasks, strict=True)]
        return encode_prompts(self.llm.tokenizer, prompts, padding_side=padding_side)

    # ---- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        from molm_fast.models.checkpoint import export_state_dict

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        save_file({k: v.contiguous() for k, v in export_state_dict(self).items()}, str(d / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, llm_path: str | None = None, tokenizer=None) -> MoLM:
        """Load ``save_pretrained`` output; ``llm_path`` overrides where the LLM base weights are read from."""
        from safetensors.torch import load_file

        from molm_fast.models.checkpoint import import_state_dict

        d = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (d / name).is_file():
                raise FileNotFoundError(f"MoLM.from_pretrained: {d / name} does not exist")
        raw = json.loads((d / CONFIG_NAME).read_text())
        cfg = MoLMConfig.from_dict(raw)
        if llm_path is not None and cfg.llm is not None:
            cfg.llm.path = llm_path
        model = cls(cfg, tokenizer=tokenizer)
        if raw.get("base_model") is None:
            import_state_dict(model, load_file(str(d / WEIGHTS_NAME)), what=f"MoLM.from_pretrained({d})")
            return model
        # a training checkpoint (molm_fast.training): trainable weights only, everything else from its base folder
        from molm_fast.models.checkpoint import load_into

        base = d / raw["base_model"]
        import_state_dict(model, load_file(str(base / WEIGHTS_NAME)), what=f"MoLM.from_pretrained({base})")
        report = load_into(model, load_file(str(d / WEIGHTS_NAME)), what=f"MoLM.from_pretrained({d})")
        if report.unexpected:
            raise ValueError(f"MoLM.from_pretrained({d}): keys the model does not have: {report.unexpected[:10]}")
        return model
