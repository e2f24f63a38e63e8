"""Uni-Mol molecular encoder (spec 3d-molm.md §1.2), on ``molm_fast.ops``.

Follows dptech-corp/Uni-Mol ``unimol/models/unimol.py`` + ``transformer_encoder_with_pair.py`` and
Uni-Core's ``SelfMultiheadAttention``: attribute names are the checkpoint keys of ``mol_pre_no_h_220816.pt['model']``
(``embed_tokens``, ``gbf.*``, ``gbf_proj.*``, ``encoder.emb_layer_norm``, ``encoder.layers.N.self_attn.in_proj``, ...,
``encoder.final_layer_norm``), so that file loads with ``load_state_dict`` (``checkpoint.load_unimol`` reports its
unused heads). The upstream quirks kept on purpose:
  - layer-0 bias = gbf_proj(Gaussian(mul[e]*d + bias[e])) with pi = 3.14159 and |std| + 1e-5 in fp32, distance and
    edge type 0 for every pair touching a pad, -inf on pad KEY columns once (``ops.gaussian_pair_bias``);
  - every layer's pre-softmax logits (q scaled first, plus the incoming bias) are the next layer's bias
    (``ops.pair_bias_attention`` returns them);
  - pad rows are zeroed once after the embedding LayerNorm and never masked again, so every pad position of a molecule
    ends up holding one identical "pad readout" vector, which the upstream Q-Former mask reads (§1.3);
  - ``encoder.final_layer_norm`` on the atom states; no ``final_head_layer_norm``.
Dropouts follow ``self.training`` like upstream; 3D-MoLM keeps this module in eval mode (``MoLM`` enforces it).
Layers take ``**attn_kwargs`` that go straight to the attention op, so a packed (``cu_seqlens``) forward only needs
a different entry point; projections are ``nn.Linear`` modules (``Linear``: through ``ops.linear``, which in eval also
runs fc1's GELU and both residual adds in the GEMM's epilogue: one fused AMX GEMM each in CPU bf16 inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molm_fast import ops
from molm_fast.models.config import UniMolConfig


class GaussianLayer(nn.Module):
    """Parameters of the Gaussian basis (``gbf.*``); the math lives in ``ops.gaussian_pair_bias``."""

    def __init__(self, num_kernels: int, num_edge_types: int) -> None:
        super().__init__()
        self.means = nn.Embedding(1, num_kernels)  # [1, K]
        self.stds = nn.Embedding(1, num_kernels)  # [1, K]
        self.mul = nn.Embedding(num_edge_types, 1)  # [num_types**2, 1]
        self.bias = nn.Embedding(num_edge_types, 1)
        nn.init.uniform_(self.means.weight, 0, 3)
        nn.init.uniform_(self.stds.weight, 0, 3)
        nn.init.constant_(self.mul.weight, 1)
        nn.init.constant_(self.bias.weight, 0)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same checkpoint keys) through ``ops.linear``: ``residual + act(x W^T + b)``,
    on the CPU in bf16 inference one AMX (or oneDNN) GEMM with the epilogue fused; ``F.linear`` everywhere else."""

    def forward(self, x: torch.Tensor, *, activation: str | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias, activation=activation, residual=residual)


class NonLinearHead(nn.Module):
    """``gbf_proj``: Linear(K, K) -> exact GELU -> Linear(K, H)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(in_dim, in_dim)
        self.linear2 = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(x)))


class SelfMultiheadAttention(nn.Module):
    """Uni-Core self-attention with a per-head additive pair bias; returns (out, pre-softmax logits)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.in_proj = Linear(embed_dim, 3 * embed_dim)  # rows q | k | v
        self.out_proj = Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None = None,
                **attn_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, N, C] (padded) or [T, C] (packed, with cu_seqlens in attn_kwargs); residual (like x) is added to
        # the output in out_proj's epilogue
        qkv = self.in_proj(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # [B, N, 3, H, D]
        q, k, v = qkv.unbind(-3)  # each [B, N, H, D]
        packed = x.dim() == 2
        if not packed:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, D] views
        out, logits = ops.pair_bias_attention(q, k, v, bias, scale=self.scaling,
                                          dropout_p=self.dropout if self.training else 0.0, **attn_kwargs)
        if not packed:
            out = out.transpose(1, 2)  # [B, N, H, D]
        return self.out_proj(out.flatten(-2), residual=residual), logits  # [B, N, C], logits like bias


class TransformerEncoderLayer(nn.Module):
    """Pre-LN layer: x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x))))."""

    def __init__(self, cfg: UniMolConfig) -> None:
        super().__init__()
        self.dropout = cfg.dropout
        self.activation_dropout = cfg.activation_dropout
        self.self_attn = SelfMultiheadAttention(cfg.embed_dim, cfg.num_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.fc1 = Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = Linear(cfg.ffn_dim, cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, **attn_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:  # a dropout between each projection and its residual add
            h, logits = self.self_attn(self.self_attn_layer_norm(x), bias, **attn_kwargs)
            x = x + F.dropout(h, self.dropout, True)
            h = F.dropout(F.gelu(self.fc1(self.final_layer_norm(x))), self.activation_dropout, True)
            return x + F.dropout(self.fc2(h), self.dropout, True), logits  # the logits are the next layer's bias
        x, logits = self.self_attn(self.self_attn_layer_norm(x), bias, residual=x, **attn_kwargs)
        return self.feed_forward(x), logits

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eval: x + fc2(gelu(fc1(LN(x)))), the GELU and the add in the projections' epilogues (``ops.linear``)."""
        return self.fc2(self.fc1(self.final_layer_norm(x), activation="gelu"), residual=x)


class TransformerEncoderWithPair(nn.Module):
    """``encoder.*``: embedding LN, the layer stack chaining the pair bias, final LN on the atom states."""

    def __init__(self, cfg: UniMolConfig) -> None:
        super().__init__()
        self.emb_dropout = cfg.emb_dropout
        self.emb_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(TransformerEncoderLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, emb: torch.Tensor, bias: torch.Tensor, padding_mask: torch.Tensor | None,
                **attn_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.dropout(self.emb_layer_norm(emb), self.emb_dropout, self.training)
        if padding_mask is not None:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))  # zero pad rows once (upstream)
        for layer in self.layers:
            x, bias = layer(x, bias, **attn_kwargs)
        return self.final_layer_norm(x), bias

    def forward_low_rank(self, emb: torch.Tensor, bias0: torch.Tensor, padding_mask: torch.Tensor | None,
                         **attn_kwargs) -> torch.Tensor:
        """Inference: the same layers with the logit chain in its exact low-rank form, logits_l = bias0 +
        [q_0 s, .., q_l s] [k_0, .., k_l]^T (performance.md §2.9, ``ops.low_rank_pair_attention``), so no
        per-layer pair tensor is written; the scaled queries and keys go into one [.., H, layers * D] buffer.
        Returns the atom states only (the final pair representation is never formed)."""
        if self.training:
            raise RuntimeError("TransformerEncoderWithPair.forward_low_rank is for inference: call .eval() first")
        x = self.emb_layer_norm(emb)
        if padding_mask is not None:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        packed, qk = x.dim() == 2, None
        for l, layer in enumerate(self.layers):
            attn = layer.self_attn
            D = attn.head_dim
            qkv = attn.in_proj(layer.self_attn_layer_norm(x)).unflatten(-1, (3, attn.num_heads, D))
            q, k, v = qkv.unbind(-3)  # each [B, N, H, D] or [T, H, D]
            if qk is None:
                qk = q.new_empty(2, *q.shape[:-1], len(self.layers) * D)  # [2, B, N, H, layers*D] (or [2, T, ..])
            qk[0, ..., l * D:(l + 1) * D] = q * attn.scaling  # q scaled in its dtype, as the chain does
            qk[1, ..., l * D:(l + 1) * D] = k
            q_cat, k_cat = qk[0, ..., :(l + 1) * D], qk[1, ..., :(l + 1) * D]
            if not packed:
                q_cat, k_cat, v = (t.transpose(1, 2) for t in (q_cat, k_cat, v))  # [B, H, N, *] views
            out = ops.low_rank_pair_attention(q_cat, k_cat, v, bias0, **attn_kwargs)
            if not packed:
                out = out.transpose(1, 2)  # [B, N, H, D]
            x = layer.feed_forward(attn.out_proj(out.flatten(-2), residual=x))  # eval: every dropout is off
        return self.final_layer_norm(x)


class UniMolEncoder(nn.Module):
    """Uni-Mol encoder. ``UniMolEncoder()`` is the paper-sized one (47,330,626 parameters).

    forward(tokens [B, N] int64, coords [B, N, 3] float, return_pair=False) ->
      (atom states [B, N, C] after ``encoder.final_layer_norm``, padding mask [B, N] bool True = pad, or None when
       no position of the batch is a pad, as upstream) [+ pair representation [B, N, N, H] when ``return_pair``:
       the last layer's logits with -inf -> 0, as Uni-Mol's ``encoder_pair_rep``].
    Distances and edge types are computed inside (``ops.gaussian_pair_bias``) from coordinates with
    [CLS]/[SEP] at the origin and pads anywhere (they never reach the math).
    """

    def __init__(self, config: UniMolConfig | None = None) -> None:
        super().__init__()
        cfg = config or UniMolConfig()
        self.config = cfg
        self.padding_idx = cfg.pad_idx
        self.embed_tokens = nn.Embedding(cfg.num_types, cfg.embed_dim, padding_idx=cfg.pad_idx)
        self.encoder = TransformerEncoderWithPair(cfg)
        self.gbf_proj = NonLinearHead(cfg.num_kernels, cfg.num_heads)
        self.gbf = GaussianLayer(cfg.num_kernels, cfg.num_types * cfg.num_types)

    def pair_bias(self, coords: torch.Tensor, tokens: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        """Layer-0 bias [B, H, N, N] (or packed) in the parameters' dtype, -inf on pad key columns."""
        g, p = self.gbf, self.gbf_proj
        return ops.gaussian_pair_bias(coords, tokens, g.mul.weight, g.bias.weight, g.means.weight, g.stds.weight,
                                  p.linear1.weight, p.linear1.bias, p.linear2.weight, p.linear2.bias,
                                  num_types=self.config.num_types, pad_idx=self.padding_idx, **attn_kwargs)

    def forward_packed(self, tokens: torch.Tensor, coords: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                       *, low_rank: bool = False) -> torch.Tensor:
        """Packed (varlen) forward: tokens [T] int64 and coords [T, 3] of B molecules back to back, cu_seqlens
        [B + 1] int32, no pads -> atom states [T, C]. Equals ``forward`` on the same molecules padded, at their
        real positions (pads never reach real rows: their keys are -inf), without any padded work.
        ``low_rank`` (inference) runs the layers through ``TransformerEncoderWithPair.forward_low_rank``."""
        if tokens.dim() != 1 or coords.shape != (tokens.shape[0], 3):
            raise ValueError(f"UniMolEncoder.forward_packed: tokens must be [T] and coords [T, 3], got "
                             f"{list(tokens.shape)} and {list(coords.shape)}")
        kw = {"cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen}
        tokens = tokens.long()
        x = self.embed_tokens(tokens)  # [T, C]
        bias = self.pair_bias(coords, tokens, **kw)  # packed [H * sum n_b^2]
        if low_rank:
            return self.encoder.forward_low_rank(x, bias, None, **kw)
        return self.encoder(x, bias, None, **kw)[0]

    def forward_low_rank(self, tokens: torch.Tensor, coords: torch.Tensor):
        """``forward`` at inference through the low-rank logit chain -> (atom states [B, N, C], padding mask)."""
        if tokens.dim() != 2 or coords.shape != (*tokens.shape, 3):
            raise ValueError(f"UniMolEncoder.forward_low_rank: tokens must be [B, N] and coords [B, N, 3], got "
                             f"{list(tokens.shape)} and {list(coords.shape)}")
        tokens = tokens.long()
        padding_mask = tokens.eq(self.padding_idx)
        if not padding_mask.any():
            padding_mask = None
        x = self.encoder.forward_low_rank(self.embed_tokens(tokens), self.pair_bias(coords, tokens), padding_mask)
        return x, padding_mask

    def forward(self, tokens: torch.Tensor, coords: torch.Tensor, return_pair: bool = False):
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"UniMolEncoder: tokens must be [B, N] int64, got {list(tokens.shape)} {tokens.dtype}")
        if coords.shape != (*tokens.shape, 3):
            raise ValueError(f"UniMolEncoder: coords must be [B, N, 3] = {[*tokens.shape, 3]}, "
                             f"got {list(coords.shape)}")
        tokens = tokens.long()
        padding_mask = tokens.eq(self.padding_idx)  # [B, N] True = pad
        if not padding_mask.any():
            padding_mask = None
        x = self.embed_tokens(tokens)  # [B, N, C]
        bias = self.pair_bias(coords, tokens)  # [B, H, N, N]
        x, logits = self.encoder(x, bias, padding_mask)
        if not return_pair:
            return x, padding_mask
        pair = logits.permute(0, 2, 3, 1)  # [B, N, N, H]
        return x, padding_mask, pair.masked_fill(pair == float("-inf"), 0.0)
