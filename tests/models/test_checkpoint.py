"""Checkpoints: synthetic files in the released layouts (names/shapes written out from spec §5.2, random bf16
values) through the converter, the save/load round trip, mismatch reports, and weights_only unpickling."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import pytest
import torch

from molm_fast import MoLM
from molm_fast.models.checkpoint import (
    convert_lightning_checkpoint,
    load_into,
    load_unimol,
    read_lightning_checkpoint,
    read_pickle,
)
from molm_fast.models.config import MoLMConfig, paper, tiny
from molm_fast.models.qformer import QFormer
from molm_fast.models.unimol import UniMolEncoder


def qformer_keys(q, *, stage1: bool, llm_dim: int | None) -> dict[str, tuple[int, ...]]:
    """The 3D-MoLM Q-Former state dict (prefix stripped), spec §5.2, for QFormerConfig ``q``."""
    C, E, F, V = q.hidden_size, q.encoder_width, q.intermediate_size, q.vocab_size
    keys = {"query_tokens": (1, q.num_query_tokens, C), "ln_graph.weight": (E,), "ln_graph.bias": (E,),
            "Qformer.bert.embeddings.LayerNorm.weight": (C,), "Qformer.bert.embeddings.LayerNorm.bias": (C,)}

    def linear(name, d_out, d_in, ln=False):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (d_out, d_in), (d_out,)

    def norm(name):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (C,), (C,)

    for i in range(q.num_layers):
        p = f"Qformer.bert.encoder.layer.{i}"
        ffns = ["_query"] + ([""] if stage1 else [])
        for part, kv in [("attention", C)] + ([("crossattention", E)] if i % q.cross_attention_freq == 0 else []):
            linear(f"{p}.{part}.self.query", C, C)
            linear(f"{p}.{part}.self.key", C, kv)
            linear(f"{p}.{part}.self.value", C, kv)
            linear(f"{p}.{part}.output.dense", C, C)
            norm(f"{p}.{part}.output.LayerNorm")
        for s in ffns:
            linear(f"{p}.intermediate{s}.dense", F, C)
            linear(f"{p}.output{s}.dense", C, F)
            norm(f"{p}.output{s}.LayerNorm")
    if stage1:
        keys["Qformer.bert.embeddings.word_embeddings.weight"] = (V, C)
        keys["Qformer.bert.embeddings.position_embeddings.weight"] = (q.max_position_embeddings, C)
        linear("Qformer.cls.predictions.transform.dense", C, C)
        norm("Qformer.cls.predictions.transform.LayerNorm")
        keys["Qformer.cls.predictions.bias"] = (V,)
        keys["Qformer.cls.predictions.decoder.weight"] = (V, C)
        keys["Qformer.cls.predictions.decoder.bias"] = (V,)
        linear("graph_proj", q.embed_dim, C)
        linear("text_proj", q.embed_dim, C)
        linear("gtm_head", 2, C)
    if llm_dim is not None:
        linear("llm_proj", llm_dim, C)
    return keys


def lora_keys(layers: int, C: int, F: int, r: int = 8) -> dict[str, tuple[int, ...]]:
    keys = {}
    for j in range(layers):
        for t in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            block = "mlp" if t in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            d_in, d_out = (F, C) if t == "down_proj" else (C, F) if t in ("gate_proj", "up_proj") else (C, C)
            stem = f"llm_model.base_model.model.model.layers.{j}.{block}.{t}"
            keys[f"{stem}.lora_A.default.weight"], keys[f"{stem}.lora_B.default.weight"] = (r, d_in), (d_out, r)
    return keys


def write_ckpt(path, keys: dict, prefix: str) -> dict[str, torch.Tensor]:
    sd = {f"{prefix}{k}": torch.randn(shape).to(torch.bfloat16) for k, shape in keys.items()}
    torch.save({"state_dict": sd, "epoch": 9, "global_step": 1234, "pytorch-lightning_version": "2.0.7",
                "hyper_parameters": argparse.Namespace(lora_r=8, lora_alpha=32, mode="ft")}, path)
    return sd


def write_unimol(path, cfg) -> dict[str, torch.Tensor]:
    enc = UniMolEncoder(cfg)
    sd = {k: torch.randn_like(v) for k, v in enc.state_dict().items()}
    extra = {"lm_head.dense.weight": torch.randn(cfg.embed_dim, cfg.embed_dim),
             "encoder.final_head_layer_norm.weight": torch.randn(cfg.num_heads),
             "dist_head.dense.weight": torch.randn(cfg.num_heads, cfg.num_heads)}
    torch.save({"model": {**sd, **extra}, "args": None}, path)
    return sd


def test_paper_qformer_layout_matches_spec():
    for stage1, cfg in ((False, paper().qformer), (True, paper().stage1().qformer)):
        with torch.device("meta"):
            q = QFormer(cfg)
        ours = {k: tuple(v.shape) for k, v in q.state_dict().items()}
        assert ours == qformer_keys(cfg, stage1=stage1, llm_dim=cfg.llm_dim)


def test_stage2_checkpoint_converts(tmp_path):
    cfg = tiny()
    keys = {**qformer_keys(cfg.qformer, stage1=False, llm_dim=64), **lora_keys(2, 64, 128)}
    sd = write_ckpt(tmp_path / "stage2.ckpt", keys, "blip2opt.")
    uni = write_unimol(tmp_path / "mol_pre_no_h_220816.pt", cfg.unimol)
    model, report = convert_lightning_checkpoint(tmp_path / "stage2.ckpt", config=cfg,
                                                 unimol_path=tmp_path / "mol_pre_no_h_220816.pt",
                                                 out_dir=tmp_path / "converted")
    assert report.unexpected == []
    assert report.missing == [k for k in report.missing if k.startswith("llm.") and "lora_" not in k]  # base LLM
    own = model.state_dict()
    for k, v in sd.items():
        k = k.removeprefix("blip2opt.")
        k = f"llm.{k}" if k.startswith("llm_model.") else f"qformer.{k}"
        assert torch.equal(own[k], v.float()), k  # bf16 -> fp32 is exact
    for k, v in uni.items():
        assert torch.equal(own[f"graph_encoder.{k}"], v), k
    again = MoLM.from_pretrained(tmp_path / "converted")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in own.items())


def test_stage1_checkpoint_converts_and_into_stage2_reports(tmp_path):
    cfg = tiny()
    keys = qformer_keys(cfg.stage1().qformer, stage1=True, llm_dim=None)
    write_ckpt(tmp_path / "stage1.ckpt", keys, "blip2qformer.")
    s1, report = convert_lightning_checkpoint(tmp_path / "stage1.ckpt", config=cfg.stage1())
    assert report.unexpected == []
    assert report.missing and all(k.startswith("graph_encoder.") for k in report.missing)  # no Uni-Mol file given
    bert = s1.qformer.Qformer
    assert bert.cls.predictions.decoder.weight is bert.bert.embeddings.word_embeddings.weight  # still tied
    # a stage-1 file into a stage-2 model (what stage 2's init does with strict=False): every drop is reported
    _, report = convert_lightning_checkpoint(tmp_path / "stage1.ckpt", config=cfg)
    assert "qformer.Qformer.bert.embeddings.word_embeddings.weight" in report.unexpected
    assert "qformer.gtm_head.weight" in report.unexpected
    assert "qformer.llm_proj.weight" in report.missing
    assert any("lora_A" in k for k in report.missing)


def test_round_trip_bit_exact(tmp_path):
    for cfg in (tiny(), tiny().stage1()):
        model = MoLM(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.save_pretrained(tmp_path / "m")
        again = MoLM.from_pretrained(tmp_path / "m")
        assert MoLMConfig.from_dict(json.loads((tmp_path / "m" / "config.json").read_text())) == cfg
        a, b = model.state_dict(), again.state_dict()
        assert a.keys() == b.keys()
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        assert bad == []


def test_shape_mismatch_refused_naming_every_key():
    q = QFormer(tiny().qformer)
    sd = q.state_dict()
    sd["ln_graph.weight"] = torch.zeros(7)
    sd["llm_proj.weight"] = torch.zeros(3, 64)
    with pytest.raises(ValueError) as err:
        load_into(q, sd, what="test")
    msg = str(err.value)
    assert "ln_graph.weight: checkpoint [7] vs model [64]" in msg
    assert "llm_proj.weight: checkpoint [3, 64] vs model [64, 64]" in msg


def test_missing_and_unexpected_reported():
    q = QFormer(tiny().qformer)
    sd = q.state_dict()
    del sd["query_tokens"]
    sd["not_a_key"] = torch.zeros(1)
    report = load_into(q, sd)
    assert report.missing == ["query_tokens"] and report.unexpected == ["not_a_key"]
    assert "query_tokens" in str(report)
    with pytest.raises(ValueError, match="not_a_key"):
        load_into(q, sd, strict=True)


def test_unimol_file_reports_unused_heads(tmp_path):
    cfg = tiny().unimol
    write_unimol(tmp_path / "u.pt", cfg)
    report = load_unimol(UniMolEncoder(cfg), tmp_path / "u.pt")
    assert report.missing == []
    assert sorted(report.unexpected) == ["dist_head.dense.weight", "encoder.final_head_layer_norm.weight",
                                         "lm_head.dense.weight"]
    small = dataclasses.replace(cfg, num_layers=cfg.num_layers + 1)
    with pytest.raises(ValueError, match="missing"):
        load_unimol(UniMolEncoder(small), tmp_path / "u.pt")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickles_are_read_weights_only(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"state_dict": {"blip2opt.query_tokens": torch.zeros(1)}, "x": _Payload(str(marker))},
               tmp_path / "evil.ckpt")
    with pytest.raises(Exception):  # noqa: B017  (torch's UnpicklingError or the stand-in refusing the call)
        read_pickle(tmp_path / "evil.ckpt")
    with pytest.raises(Exception):  # noqa: B017
        read_lightning_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists(), "unpickling ran code"
    ok = tmp_path / "ok.ckpt"
    write_ckpt(ok, {"query_tokens": (1, 8, 64)}, "blip2opt.")
    raw = read_lightning_checkpoint(ok)
    assert raw["hyper_parameters"]["lora_r"] == 8 and raw["state_dict"]["blip2opt.query_tokens"].dtype == torch.bfloat16
