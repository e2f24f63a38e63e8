"""Generic anchors every bench file imports: the alternatives molm_fast is measured against in the same run.

* ``sdpa_composite(q, k, v, bias, *, scale, backend)`` -- K-sdpa (performance.md §9.1): the best generic
  composite that still yields the logits: ``baddbmm(bias, q, k^T, alpha=scale)`` for the logits and
  ``scaled_dot_product_attention(q, k, v, attn_mask=bias)`` for the output, with the SDPA backend PINNED
  through ``torch.nn.attention.sdpa_kernel`` (``default_sdpa_backend(device)``: EFFICIENT_ATTENTION on CUDA,
  the fused FLASH_ATTENTION CPU kernel on the CPU; also report CUDNN_ATTENTION on CUDA).
* ``unimol_tools_attention(q, k, v, bias, ...)`` -- K-unicore: Uni-Mol's attention sub-op as unimol-tools runs it
  (bmm, in-place += bias, clone, eager softmax_dropout, bmm), with unimol-tools' own ``softmax_dropout``.
* ``unimol_tools_available()`` -- None, or why the unimol-tools anchors cannot be built here.
* ``unimol_tools_encoder(...)`` -- A-tools: unimol-tools' own Uni-Mol modules (``GaussianLayer``,
  ``NonLinearHead``, ``TransformerEncoderWithPair``) with random weights, run as ``UniMolModel.forward`` runs
  them (up to the encoder output). Raises ``AnchorUnavailable`` with the reason when unimol-tools is absent.
* ``blip2_qformer(...)`` -- transformers' ``Blip2QFormerModel`` at 3D-MoLM's sizes (Q-ref / Q-sdpa anchor).
* ``llama_lora(config, ...)`` -- transformers' ``LlamaForCausalLM`` + peft LoRA (r 8, alpha 32, dropout 0.1,
  all 7 projections) for the T2-ref training step; ``HF_GENERATE`` / ``HF_GENERATE_GREEDY`` are G-hf's settings.
* ``flash_attn_available()`` -- flash-attn is the optional ``flash`` extra: an anchor only where importable.

Every builder takes ``device`` and ``dtype`` and builds from a config with random weights (no downloads).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class AnchorUnavailable(RuntimeError):
    """An anchor that cannot be built here; the message says why (bench files record it as skipped)."""


# ---- K-sdpa: baddbmm logits + pinned SDPA -----------------------------------------------------------------------
def default_sdpa_backend(device: torch.device) -> SDPBackend:
    return SDPBackend.EFFICIENT_ATTENTION if device.type == "cuda" else SDPBackend.FLASH_ATTENTION


def sdpa_composite(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, *, scale: float = 1.0,
                   backend: SDPBackend | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [B, H, N, D]; bias [B, H, N, N] -> (out [B, H, N, D], logits [B, H, N, N]).

    logits = scale * q @ k^T + bias (Uni-Mol scales q first; same math); out = softmax(logits) @ v via SDPA
    with ``backend`` pinned (fully masked rows give NaN here, unlike molm_fast: an anchor only).
    """
    B, H, N, D = q.shape
    logits = torch.baddbmm(bias.reshape(B * H, N, N), q.reshape(B * H, N, D),
                           k.reshape(B * H, N, D).transpose(1, 2), alpha=scale)  # [B*H, N, N]
    with sdpa_kernel(backend or default_sdpa_backend(q.device)):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)  # [B, H, N, D]
    return out, logits.view(B, H, N, N)


# ---- A-tools: unimol-tools' Uni-Mol modules -------------------------------------------------------------------
def _unimol_tools_modules() -> dict[str, Any]:
    """unimol-tools' GaussianLayer, NonLinearHead and TransformerEncoderWithPair.

    Imported normally when the package imports. Its ``__init__`` pulls in pandas, scikit-learn and RDKit (absent
    on the GPU image), so otherwise its two model files are loaded from the installed distribution without the
    package ``__init__``: ``models/transformers.py`` needs only torch, and from ``models/unimol.py`` only the
    definitions of the two layers (and their helpers) are executed. Nothing is copied into this repo.
    """
    try:
        from unimol_tools.models.transformers import TransformerEncoderWithPair, softmax_dropout
        from unimol_tools.models.unimol import GaussianLayer, NonLinearHead

        return {"GaussianLayer": GaussianLayer, "NonLinearHead": NonLinearHead, "softmax_dropout": softmax_dropout,
                "TransformerEncoderWithPair": TransformerEncoderWithPair, "loaded": "package import"}
    except Exception as exc:  # ImportError of its heavy dependencies, or whatever their import raises
        first_error = exc
    spec = importlib.util.find_spec("unimol_tools")
    if spec is None or not spec.submodule_search_locations:
        raise AnchorUnavailable(f"unimol-tools is not installed ({first_error})")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    tf_spec = importlib.util.spec_from_file_location("_unimol_tools_transformers", models / "transformers.py")
    tf = importlib.util.module_from_spec(tf_spec)
    sys.modules[tf.__name__] = tf  # named and importable: torch.compile (dynamo) resolves functions by module
    tf_spec.loader.exec_module(tf)
    wanted = {"gaussian", "get_activation_fn", "NonLinearHead", "GaussianLayer"}
    tree = ast.parse((models / "unimol.py").read_text())
    tree.body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in wanted]
    mod = types.ModuleType("_unimol_tools_unimol")  # a named module: torch.jit.script needs a qualified name
    mod.__dict__.update(torch=torch, nn=nn, F=F, __file__=str(models / "unimol.py"))
    sys.modules[mod.__name__] = mod
    exec(compile(tree, str(models / "unimol.py"), "exec"), mod.__dict__)  # noqa: S102 -- unimol-tools' own code
    ns = mod.__dict__
    return {"GaussianLayer": ns["GaussianLayer"], "NonLinearHead": ns["NonLinearHead"],
            "TransformerEncoderWithPair": tf.TransformerEncoderWithPair, "softmax_dropout": tf.softmax_dropout,
            "loaded": f"model files without the package __init__ ({type(first_error).__name__}: {first_error})"}


def unimol_tools_available() -> str | None:
    """None if the unimol-tools anchors can be built here, else the reason (for ``r.skip``)."""
    try:
        _unimol_tools_modules()
    except AnchorUnavailable as exc:
        return str(exc)
    return None


def unimol_tools_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, *,
                           scale: float = 1.0, dropout_p: float = 0.0,
                           training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """K-unicore: the attention sub-op exactly as unimol-tools' ``SelfMultiheadAttention`` runs it with
    ``return_attn=True`` (Uni-Mol's path): head-major copies, q scaled, ``bmm``, in-place ``+= bias``, its eager
    ``softmax_dropout(..., inplace=False)`` (a clone), ``bmm``. q, k, v [B, H, N, D], bias [B, H, N, N] ->
    (out [B, H, N, D], logits [B, H, N, N]). Uni-Core's fused kernels are not built here: the eager path is
    what unimol-tools users run.
    """
    softmax_dropout = _unimol_tools_modules()["softmax_dropout"]
    B, H, N, D = q.shape
    q = q.contiguous().view(B * H, N, D) * scale  # [B*H, N, D]
    k, v = k.contiguous().view(B * H, N, D), v.contiguous().view(B * H, N, D)
    logits = torch.bmm(q, k.transpose(1, 2))  # [B*H, N, N]
    logits += bias.reshape(B * H, N, N)
    attn = softmax_dropout(logits, dropout_p, training, inplace=False)  # [B*H, N, N]
    return torch.bmm(attn, v).view(B, H, N, D), logits.view(B, H, N, N)


class UnimolToolsEncoder(nn.Module):
    """unimol-tools' ``UniMolModel`` forward up to the encoder output, molecule architecture, random weights."""

    def __init__(self, num_types: int = 31, pad_idx: int = 0, layers: int = 15) -> None:
        super().__init__()
        m = _unimol_tools_modules()
        self.loaded = m["loaded"]
        self.num_types, self.padding_idx = num_types, pad_idx
        self.embed_tokens = nn.Embedding(num_types, 512, pad_idx)
        self.encoder = m["TransformerEncoderWithPair"](
            encoder_layers=layers, embed_dim=512, ffn_embed_dim=2048, attention_heads=64, emb_dropout=0.1,
            dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, max_seq_len=512, activation_fn="gelu",
            no_final_head_layer_norm=True)
        self.gbf_proj = m["NonLinearHead"](128, 64, "gelu")
        self.gbf = m["GaussianLayer"](128, num_types * num_types)

    def forward(self, tokens: torch.Tensor, dist: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        """tokens [B, N] int64, dist [B, N, N] float, edge_type [B, N, N] int64 -> atom states [B, N, 512]."""
        padding_mask = tokens.eq(self.padding_idx)
        if not padding_mask.any():
            padding_mask = None
        x = self.embed_tokens(tokens)  # [B, N, 512]
        n = dist.size(-1)
        bias = self.gbf_proj(self.gbf(dist, edge_type))  # [B, N, N, H]
        bias = bias.permute(0, 3, 1, 2).contiguous().view(-1, n, n)  # [B*H, N, N]
        return self.encoder(x, padding_mask=padding_mask, attn_mask=bias)[0]


def unimol_tools_encoder(device: torch.device, dtype: torch.dtype = torch.float32, **kw: Any) -> UnimolToolsEncoder:
    """A-tools in eval mode (its inference default is fp32 without autocast)."""
    return UnimolToolsEncoder(**kw).to(device=device, dtype=dtype).eval()


def unimol_inputs(ns: list[int], device: torch.device, num_types: int = 31, pad_idx: int = 0,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded random molecules with ``ns`` tokens each: (tokens [B, N], dist [B, N, N], edge_type [B, N, N])."""
    from benchmarks.harness import padded_coords

    B, N = len(ns), max(ns)
    tokens = torch.randint(1, num_types, (B, N), generator=generator)  # [B, N]
    tokens[torch.arange(N)[None, :] >= torch.tensor(ns)[:, None]] = pad_idx
    coords = padded_coords(ns, torch.device("cpu"), generator=generator)  # [B, N, 3]
    dist = torch.cdist(coords, coords)  # [B, N, N]
    edge_type = tokens[:, :, None] * num_types + tokens[:, None, :]  # [B, N, N]
    return tokens.to(device), dist.to(device), edge_type.to(device)


# ---- Q-ref: transformers' Blip2QFormerModel --------------------------------------------------------------------
def blip2_qformer(device: torch.device, dtype: torch.dtype = torch.float32, *, encoder_hidden_size: int = 512,
                  attn_implementation: str = "eager", layers: int = 12) -> nn.Module:
    """BERT-base Q-Former with cross-attention every 2nd layer over 512-d Uni-Mol states (3D-MoLM sizes).

    Call as ``model(query_embeds=[B, Q, 768], encoder_hidden_states=[B, N, 512], encoder_attention_mask=[B, N])``.
    """
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    cfg = Blip2QFormerConfig(hidden_size=768, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=3072,
                             cross_attention_frequency=2, encoder_hidden_size=encoder_hidden_size)
    cfg._attn_implementation = attn_implementation
    return Blip2QFormerModel(cfg).to(device=device, dtype=dtype).eval()


# ---- T2-ref / G-hf: transformers Llama + peft LoRA --------------------------------------------------------------
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HF_GENERATE = {"num_beams": 5, "max_new_tokens": 128, "min_new_tokens": 32, "repetition_penalty": 1.2,
               "do_sample": False}
HF_GENERATE_GREEDY = HF_GENERATE | {"num_beams": 1}


def llama_lora(config: Any, device: torch.device, dtype: torch.dtype = torch.bfloat16, *, r: int = 8,
               alpha: int = 32, dropout: float = 0.1, attn_implementation: str = "sdpa") -> nn.Module:
    """``LlamaForCausalLM(config)`` (a ``LlamaConfig`` or its kwargs) with peft LoRA on all 7 projections."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = config if isinstance(config, LlamaConfig) else LlamaConfig(**config)
    cfg._attn_implementation = attn_implementation
    with torch.device(device):  # built on the device in ``dtype`` directly (7B: no fp32 copy on the host)
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


# ---- flash-attn (optional extra) ---------------------------------------------------------------------------------
def flash_attn_available() -> str | None:
    """None if ``flash_attn`` imports (and CUDA is there), else the reason it cannot be an anchor here."""
    if not torch.cuda.is_available():
        return "flash-attn needs a CUDA device"
    try:
        importlib.import_module("flash_attn")
    except ImportError as exc:
        return f"flash-attn is not installed (optional extra `flash`): {exc}"
    return None
