"""Model configuration: one dataclass per component plus the whole-model config, and the presets ``paper``/``tiny``.

``paper`` is 3D-MoLM exactly (spec 3d-molm.md §1.2-§1.4): Uni-Mol 15x512 (64 heads, 128 Gaussians), a
SciBERT-shaped Q-Former (12x768, cross-attention every 2 layers, 8 queries), Llama-2-7B with LoRA r=8 a=32.
``tiny`` keeps every structural feature (pair-bias chain, cross-attention placement, query FFN, LoRA on all
seven projections) at a few million parameters so tests and the CPU demo run in seconds.
Configs are plain dataclasses; ``to_dict``/``from_dict`` give the JSON stored beside ``save_pretrained`` weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class UniMolConfig:
    """Uni-Mol molecular encoder (spec §1.2). Head dim = embed_dim // num_heads (8 in the paper)."""

    num_layers: int = 15
    embed_dim: int = 512
    ffn_dim: int = 2048
    num_heads: int = 64
    num_kernels: int = 128  # K Gaussians (hard-coded 128 upstream)
    num_types: int = 31  # atom dictionary size incl. [MASK]; edge types = num_types ** 2
    pad_idx: int = 0
    emb_dropout: float = 0.1  # dropouts only act in train mode; 3D-MoLM keeps Uni-Mol in eval mode
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"UniMolConfig: embed_dim ({self.embed_dim}) must be a multiple of num_heads "
                             f"({self.num_heads})")


@dataclass
class QFormerConfig:
    """BERT-shaped Q-Former (spec §1.3). ``bert_dir`` is a local Hugging Face BERT directory to initialise from."""

    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2  # cross-attention at layers 0, 2, 4, ...
    encoder_width: int = 512  # Uni-Mol embed dim
    num_query_tokens: int = 8
    vocab_size: int = 31091  # SciBERT 31090 + [DEC]
    dec_token_id: int = 31090  # [DEC], the captioning decoder's BOS (stage 1)
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    embed_dim: int = 256  # graph_proj / text_proj width (stage 1)
    text_side: bool = False  # stage 1: word/position embeddings, text FFN, LM head, graph/text_proj, gtm_head
    llm_dim: int | None = 4096  # llm_proj output width (stages 2/3); None = no llm_proj
    corrected_mask: bool = False  # False = upstream inverted encoder mask (§1.3), the released weights' semantics
    bert_dir: str | None = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"QFormerConfig: hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                             f"({self.num_heads})")


@dataclass
class LLMConfig:
    """Causal LM + LoRA (spec §1.4). ``path`` is a local Hugging Face model dir; ``llama`` builds a random Llama."""

    path: str | None = None
    llama: dict[str, Any] | None = None  # LlamaConfig kwargs when no path is given (tests, tiny; vocab from tokenizer)
    hidden_size: int = 4096
    dtype: str = "bfloat16"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("k_proj", "v_proj", "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    use_lora: bool = True
    mol_token: str = "<mol>"
    pad_token: str = "[PAD]"
    append_eos: bool = False  # upstream never appends EOS to training targets (§1.4); True is opt-in
    smiles_max_chars: int = 96
    description_instruction_max_chars: int = 64
    max_length: int = 320


@dataclass
class MoLMConfig:
    unimol: UniMolConfig = field(default_factory=UniMolConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    llm: LLMConfig | None = field(default_factory=LLMConfig)  # None: stage-1 model (no LLM)

    def stage1(self) -> MoLMConfig:
        """The stage-1 variant: Q-Former with its text side and stage-1 heads, no LLM (spec §2.1)."""
        q = dataclasses.replace(self.qformer, text_side=True, llm_dim=None)
        return MoLMConfig(unimol=dataclasses.replace(self.unimol), qformer=q, llm=None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MoLMConfig:
        llm = d.get("llm")
        if llm is not None:
            llm = dict(llm)
            llm["lora_targets"] = tuple(llm.get("lora_targets", LLMConfig.lora_targets))
            llm = LLMConfig(**llm)
        return cls(unimol=UniMolConfig(**d.get("unimol", {})), qformer=QFormerConfig(**d.get("qformer", {})),
                   llm=llm)


TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5,
                  bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)


def paper() -> MoLMConfig:
    """3D-MoLM stages 2/3 as released: Uni-Mol 47.3M, pruned SciBERT-sized Q-Former + llm_proj, Llama-2-7B (give
    ``llm.path``). ``paper().stage1()`` is the stage-1 model."""
    return MoLMConfig()


def tiny() -> MoLMConfig:
    """A few million parameters with every structural feature of ``paper`` (CPU tests and demo)."""
    return MoLMConfig(
        unimol=UniMolConfig(num_layers=2, embed_dim=64, ffn_dim=128, num_heads=8),
        qformer=QFormerConfig(num_layers=4, hidden_size=64, num_heads=4, intermediate_size=128, encoder_width=64,
                              max_position_embeddings=128, embed_dim=32, llm_dim=64),
        llm=LLMConfig(llama=dict(TINY_LLAMA), hidden_size=64, dtype="float32", max_length=384),
    )


PRESETS = {"paper": paper, "tiny": tiny}


def get_config(name: str) -> MoLMConfig:
    if name not in PRESETS:
        raise ValueError(f"get_config: name must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]()
