"""The causal LM of 3D-MoLM (spec 3d-molm.md §1.4): tokenizer changes, LoRA, prompts, training pairs, <mol> splice.

- Tokenizer: ``[PAD]`` added (32000 for Llama-2), BOS/EOS/UNK all remapped to ``</s>`` (id 2), ``<mol>`` added as
  an additional special token (32001); embeddings resized to ``len(tokenizer)`` with the new rows drawn N(0, 0.02)
  (transformers 4.35's ``_init_weights``; v5's mean-resizing is switched off). These rows are in no released
  checkpoint.
- LoRA (peft): r=8, alpha=32, dropout 0.1 on q,k,v,o,gate,up,down; the wrapped model is ``llm_model`` so keys are
  ``llm_model.base_model.model.model.layers.N.self_attn.q_proj.lora_A.default.weight`` as in the checkpoints.
- Prompts: the exact stage-2/3 template, SMILES[:96], Description instructions [:64].
- Training pairs: ``</s> prompt </s> target`` (the slow tokenizer's pair layout after the BOS remap), longest-first
  truncation, LEFT padding, labels -100 on pads and on ``</s>`` + prompt, NO trailing EOS (``append_eos`` opts in).
- Splice: ``inputs_embeds[input_ids == <mol>] = llm_proj(Q-Former states)`` in order, row-major over the batch.
"""

from __future__ import annotations

import string

import torch
from torch import nn

from molm_fast.models.config import LLMConfig

PROMPT_TEMPLATE = ("Below is an instruction that describes a task, paired with an input molecule. Write a response "
                   "that appropriately completes the request.\nInstruction: {instruction}\nInput molecule: {smiles} "
                   "{mol_tokens}.\nResponse: ")
CAPTION_INSTRUCTION = "Describe the input molecule."


def build_prompt(smiles: str, instruction: str = CAPTION_INSTRUCTION, *, task: str | None = None,
                 num_query_tokens: int = 8, mol_token: str = "<mol>", smiles_max_chars: int = 96,
                 description_max_chars: int = 64) -> str:
    """The stage-2/3 prompt (stage 2 = the default caption instruction). ``task='Description'`` truncates the
    instruction to 64 characters, as ``BalanceDataset``."""
    if task == "Description":
        instruction = instruction[:description_max_chars]
    return PROMPT_TEMPLATE.format(instruction=instruction, smiles=smiles[:smiles_max_chars],
                                  mol_tokens=mol_token * num_query_tokens)


def setup_tokenizer(tokenizer, cfg: LLMConfig | None = None):
    """Apply 3D-MoLM's special-token changes in upstream's order; sets ``tokenizer.mol_token_id``."""
    cfg = cfg or LLMConfig()
    tokenizer.padding_side = "right"
    tokenizer.add_special_tokens({"pad_token": cfg.pad_token})
    tokenizer.add_special_tokens({"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"})
    tokenizer.add_special_tokens({"additional_special_tokens": [cfg.mol_token]})
    tokenizer.mol_token_id = tokenizer.convert_tokens_to_ids(cfg.mol_token)
    return tokenizer


def tiny_tokenizer():
    """A character-level Llama tokenizer built in code (no files): for the ``tiny`` preset, tests and the demo."""
    from transformers import LlamaTokenizer

    chars = sorted(set(string.printable) - set(" \t\r\x0b\x0c"))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "\u2581": 3}
    for prefix in ("", "\u2581"):
        for c in chars:
            vocab.setdefault(prefix + c, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=[], legacy=True)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_training_batch(tokenizer, prompts: list[str], targets: list[str], *, max_length: int,
                          pad_to_max_length: bool = True, append_eos: bool = False) -> dict[str, torch.Tensor]:
    """Upstream's TrainCollater: ``</s> prompt </s> target`` (+ ``</s>`` if ``append_eos``), longest-first
    truncation to ``max_length``, left padding (to ``max_length`` in stage 2, to the longest in stage 3).

    Returns input_ids, attention_mask [B, L] and labels [B, L] (-100 on pads and on ``</s>`` + prompt).
    """
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    rows = []
    for prompt, target in zip(prompts, targets, strict=True):
        a, b = _ids(tokenizer, prompt), _ids(tokenizer, target) + ([tokenizer.eos_token_id] if append_eos else [])
        while len(a) + len(b) + 2 > max_length:  # HF longest_first, truncating on the right
            (a if len(a) > len(b) else b).pop()
        rows.append(([bos] + a, [bos] + b))
    L = max_length if pad_to_max_length else max(len(a) + len(b) for a, b in rows)
    input_ids = torch.full((len(rows), L), pad, dtype=torch.long)
    labels = torch.full((len(rows), L), -100, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        seq = torch.tensor(a + b)
        input_ids[i, L - len(seq):] = seq
        attention_mask[i, L - len(seq):] = 1
        labels[i, L - len(b):] = torch.tensor(b)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_prompts(tokenizer, prompts: list[str], *, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Inference prompts: ``</s> prompt``, padded to the longest (upstream: right padding, spec §6)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"encode_prompts: padding_side must be 'left' or 'right', got {padding_side!r}")
    rows = [[tokenizer.bos_token_id] + _ids(tokenizer, p) for p in prompts]
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if padding_side == "right" else slice(L - len(r), L)
        input_ids[i, sl], attention_mask[i, sl] = torch.tensor(r), 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class MoLMLLM(nn.Module):
    """The LM with 3D-MoLM's tokenizer, resized embeddings and LoRA. ``llm_model`` is the (peft-wrapped) HF model."""

    def __init__(self, cfg: LLMConfig, tokenizer=None) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        self.config = cfg
        dtype = getattr(torch, cfg.dtype)
        if cfg.path is not None:
            model = AutoModelForCausalLM.from_pretrained(cfg.path, dtype=dtype)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(cfg.path, use_fast=False, padding_side="right")
        elif cfg.llama is not None:
            tokenizer = tokenizer or tiny_tokenizer()
            model = LlamaForCausalLM(LlamaConfig(**{"vocab_size": len(tokenizer), **cfg.llama})).to(dtype)
        else:
            raise ValueError("MoLMLLM: LLMConfig needs a local model directory (path) or a LlamaConfig dict (llama)")
        self.tokenizer = setup_tokenizer(tokenizer, cfg)
        self.base_vocab_size = model.get_input_embeddings().weight.shape[0]
        self._resize(model, len(self.tokenizer))
        model.config.pad_token_id = self.tokenizer.pad_token_id
        if cfg.use_lora:
            from peft import LoraConfig, TaskType, get_peft_model

            lora = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=cfg.lora_r,
                              lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=list(cfg.lora_targets))
            model = get_peft_model(model, lora)
        self.llm_model = model

    def _resize(self, model, n: int) -> None:
        """Resize input/output embeddings to ``n`` rows; new rows N(0, initializer_range) as transformers 4.35."""
        old = model.get_input_embeddings().weight.shape[0]
        if n == old:
            return
        model.resize_token_embeddings(n, mean_resizing=False)
        std = getattr(model.config, "initializer_range", 0.02)
        with torch.no_grad():
            for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                if emb is not None and n > old:
                    emb.weight[old:].normal_(0.0, std)

    @property
    def mol_token_id(self) -> int:
        return self.tokenizer.mol_token_id

    def embed(self, input_ids: torch.Tensor, mol_embeds: torch.Tensor) -> torch.Tensor:
        """inputs_embeds [B, L, C] with the <mol> positions replaced by ``mol_embeds`` [B, Q, C] in order."""
        mol = input_ids == self.mol_token_id  # [B, L]
        per_row = mol.sum(1)
        if mol_embeds.dim() != 3 or mol_embeds.shape[0] != input_ids.shape[0]:
            raise ValueError(f"MoLMLLM.embed: mol_embeds must be [B, Q, C] with B = {input_ids.shape[0]}, "
                             f"got {list(mol_embeds.shape)}")
        if bool((per_row != mol_embeds.shape[1]).any()):
            raise ValueError(f"MoLMLLM.embed: every row needs exactly Q = {mol_embeds.shape[1]} <mol> tokens, "
                             f"got {per_row.tolist()}")
        emb = self.llm_model.get_input_embeddings()(input_ids)  # [B, L, C]
        return emb.masked_scatter(mol[..., None], mol_embeds.to(emb.dtype))

    def forward(self, input_ids, attention_mask, mol_embeds, labels=None):
        """HF causal-LM output (``.loss`` = mean shifted CE over labels != -100, ``.logits``)."""
        return self.llm_model(inputs_embeds=self.embed(input_ids, mol_embeds), attention_mask=attention_mask,
                              labels=labels)
