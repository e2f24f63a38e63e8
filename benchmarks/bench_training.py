"""Training steps (performance.md §9.2 T1, T2): one full optimizer step, reference layout vs molm_fast's.

T1 (stage 1, MTC + MTM(3x) + MTG, Uni-Mol frozen), one step on B pairs:
  ``reference``  text padded to ``max_length`` (256 in the paper; on CPU 128, the tiny Q-Former's position
                 limit), ops under ``use_backend("reference")``, Uni-Mol run every step;
  ``molm_fast``  text padded to the batch's longest, the fastest ops, Uni-Mol outputs cached (exact in eval mode).
T2 (stage 2, LoRA), one step on B samples:
  ``reference``  upstream layout: left padding to ``max_length`` (320 paper), HF sdpa attention;
  ``molm_fast``  the same samples packed into one row, per-sample attention (torch's FlashAttention varlen on
                 CUDA), Liger-Kernel's fused RMSNorm/RoPE/SwiGLU/linear-CE on CUDA when installed.
Units: pairs / samples and REAL tokens (never pads). CPU (``--quick`` or not): the ``tiny`` model on ChEBI-20 with
the committed conformers. CUDA: paper dimensions with random weights (Uni-Mol 15x512, Q-Former 12x768, Llama-2-7B
shapes in bf16); T2's sequences are synthetic with the Llama-2 lengths of performance.md §8.6 (prompt 102 tokens,
descriptions p50 ~98), since no Llama tokenizer can be loaded offline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
from pathlib import Path

import torch

from benchmarks import harness as h

ROOT = Path(__file__).resolve().parents[1]
CHEBI = ROOT / ".." / "shared" / "data" / "chebi20" / "molt5" / "validation.txt"
MOLECULES = ROOT / "tests" / "training" / "data" / "chebi20_conformers.npz"
LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)


def _stepper(step, params, backend: str | None):
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05)

    def run(batch):
        from molm_fast.ops import use_backend

        ctx = use_backend(backend) if backend else contextlib.nullcontext()
        with ctx, torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_available()):
            out = step(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def _pairs(B: int):
    from molm_fast.training.data import load_pairs

    data = load_pairs(CHEBI, molecules=MOLECULES)
    return data, list(range(B))


def bench_stage1(r: h.Run) -> None:
    from molm_fast.training.config import training_config
    from molm_fast.training.loop import to_device
    from molm_fast.training.stage1 import PairCollate, Stage1Step, stage1_model
    from molm_fast.training.text import build_wordpiece_tokenizer

    B = 64 if r.is_cuda else 32
    data, idx = _pairs(B)
    tok = build_wordpiece_tokenizer(data.texts)
    cfg = training_config("paper" if r.is_cuda else "tiny", 1, text_max_length=256 if r.is_cuda else 128,  # T1: 256
                          model="paper" if r.is_cuda else "tiny")
    torch.manual_seed(0)
    molm = None if r.is_cuda else stage1_model(cfg, tok)
    if r.is_cuda:
        from molm_fast.models import MoLM, paper

        mcfg = paper().stage1()
        mcfg.qformer = dataclasses.replace(mcfg.qformer, dec_token_id=tok.bos_token_id)
        molm = MoLM(mcfg)
    molm.to(r.device)
    ref_batch = to_device(PairCollate(data, tok, dataclasses.replace(cfg, text_padding="max_length"))(idx), r.device)
    fast_batch = to_device(PairCollate(data, tok, dataclasses.replace(cfg, text_padding="longest"))(idx), r.device)
    ref_step = Stage1Step(molm, pad_token_id=tok.pad_token_id).train()
    fast_step = Stage1Step(molm, pad_token_id=tok.pad_token_id, cache_encoder=True).train()
    params = [p for p in molm.parameters() if p.requires_grad]
    real = int(fast_batch["attention_mask"].sum())
    case = h.Case("train_stage1", {"B": B, "L_ref": ref_batch["input_ids"].shape[1],
                                   "L_fast": fast_batch["input_ids"].shape[1]}, "bfloat16" if r.is_cuda else "float32",
                  "chebi20", units={"pairs": B, "real_text_tokens": real}, flops=None, bytes=None, pass_="train_step",
                  headline=True)
    fast = _stepper(fast_step, params, None)
    ref = _stepper(ref_step, params, "reference")
    r.compare(case, {"reference": lambda _: ref(ref_batch), "molm_fast": lambda _: fast(fast_batch)}, [(0,)],
              iters=h.MIN_ITERS)


def _synthetic_sequences(tokenizer, B: int, gen: torch.Generator):
    """Llama-2-like lengths (performance.md §8.6): prompt 102 tokens incl. 8 <mol>, description ~ lognormal."""
    mol, bos = tokenizer.convert_tokens_to_ids("<mol>"), tokenizer.bos_token_id
    rows, labels = [], []
    for _ in range(B):
        n = int(torch.empty(1).log_normal_(4.6, 0.45, generator=gen).clamp(10, 600))
        p = torch.randint(3, 31000, (93,), generator=gen).tolist() + [mol] * 8
        t = torch.randint(3, 31000, (n,), generator=gen).tolist()
        while len(p) + len(t) + 2 > 320:
            (p if len(p) > len(t) else t).pop()
        rows.append([bos, *p, bos, *t])
        labels.append([-100] * (len(p) + 1) + [bos, *t])
    return rows, labels


def bench_stage2(r: h.Run) -> None:
    from molm_fast.models import MoLM, get_config
    from molm_fast.training.config import training_config
    from molm_fast.training.loop import to_device
    from molm_fast.training.packing import pack_sequences, pad_sequences
    from molm_fast.training.stage2 import SequenceCollate, Stage2Step, prepare_llm

    B = 16 if r.is_cuda else 8
    torch.manual_seed(0)
    mcfg = get_config("paper" if r.is_cuda else "tiny")
    if r.is_cuda:
        mcfg.llm = dataclasses.replace(mcfg.llm, llama=dict(LLAMA2_7B), path=None)
    molm = MoLM(mcfg).to(r.device)
    cfg = training_config("paper" if r.is_cuda else "tiny", 2, packing=True, liger=True)
    prepare_llm(molm, cfg)  # per-sample packed attention; Liger on CUDA when installed
    liger = r.is_cuda and importlib.util.find_spec("liger_kernel") is not None
    step = Stage2Step(molm).train()
    params = [p for p in molm.parameters() if p.requires_grad]
    tok = molm.llm.tokenizer
    if r.is_cuda:
        data, idx = _pairs(B)
        rows, labels = _synthetic_sequences(tok, B, torch.Generator().manual_seed(0))
        mol = data.store.batch(idx)
        packed = pack_sequences(rows, labels)
        padded = pad_sequences(rows, labels, pad_id=tok.pad_token_id, max_length=320)
        fast_batch = {"mol": mol, **{k: packed[k] for k in ("input_ids", "position_ids", "labels", "cu_seqlens",
                                                             "max_seqlen", "stats")}}
        ref_batch = {"mol": mol, **padded}
    else:
        data, idx = _pairs(B)
        fast_batch = SequenceCollate(data, tok, dataclasses.replace(cfg, packing=True))(idx)
        ref_batch = SequenceCollate(data, tok, dataclasses.replace(cfg, packing=False, text_padding="max_length"))(idx)
    fast_batch, ref_batch = to_device(fast_batch, r.device), to_device(ref_batch, r.device)
    real = fast_batch["stats"]["real_tokens"]
    case = h.Case("train_stage2", {"B": B, "L_ref": ref_batch["input_ids"].shape[1], "T_packed": real,
                                   "liger": liger}, "bfloat16" if r.is_cuda else "float32",
                  "synthetic_llama2_lengths" if r.is_cuda else "chebi20",
                  units={"samples": B, "real_tokens": real}, flops=None, bytes=None, pass_="train_step",
                  headline=True)
    ref, fast = _stepper(step, params, None), _stepper(step, params, None)
    r.compare(case, {"reference": lambda _: ref(ref_batch), "molm_fast": lambda _: fast(fast_batch)}, [(0,)],
              iters=h.MIN_ITERS,
              notes=f"real-token fraction reference {real / ref_batch['input_ids'].numel():.3f}, packed 1.000")


def run(r: h.Run) -> None:
    bench_stage1(r)
    bench_stage2(r)


if __name__ == "__main__":
    h.main(run)
