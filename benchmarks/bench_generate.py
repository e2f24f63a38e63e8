"""Generation from prompt embeddings: molm_fast's fast path against Hugging Face ``generate`` (G1, G2).

Goals (performance.md §9.2, H100, paper-shaped Llama-2-7B with random weights, bf16): greedy >= 5x HF generate at
B = 16 and >= 50% of the decode roofline at B = 256; beam 5 >= 3x HF generate. Shapes (§9.3): a ~102-token prompt
(8 soft <mol> tokens among them), 128 new tokens with ``min_new_tokens = max_new_tokens`` (ignore-EOS: every
provider decodes the same number of tokens, the roofline comparison), greedy B in {1, 16, 64, 256}, beam 5 B in
{1, 16, 64}. On GPU each case is ONE timed call after a warm-up (a call takes seconds); the CPU runs the ``tiny``
LLM (2 layers, hidden 64, fp32) with 32 new tokens, timed as a median. Useful units: new tokens, molecules.
Providers: ``reference`` = HF ``generate`` (``hf_generate`` semantics, the ratio's denominator) and
``molm_fast`` (left padding, prompt KV shared by the beams, static cache; CUDA graphs via torch.compile on GPU).
Decode bytes per step (the roofline): all weights once + the KV cache read.
"""

from __future__ import annotations

import torch

from benchmarks import harness as h
from molm_fast.inference.generate import GenerationSettings, generate, generate_reference

OP = "generate"
PROMPT = 102
LLAMA2_7B = dict(vocab_size=32002, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 bos_token_id=2, eos_token_id=2, pad_token_id=32000, tie_word_embeddings=False)
TINY = dict(LLAMA2_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512)


def _lm(cfg: dict, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        lm = LlamaForCausalLM(LlamaConfig(**cfg)).to(dtype)
    return lm.eval()


def flops(cfg: dict, B: int, T: int, beams: int) -> float:
    """2 * parameters per generated token per sequence (attention over the context ignored) + the prefill."""
    d, f, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    params = n * (4 * d * d + 3 * d * f) + d * v
    return 2.0 * params * (B * beams * T + B * PROMPT)


def bytes_moved(cfg: dict, B: int, T: int, beams: int, itemsize: int) -> float:
    """Per decode step: every weight once + the KV cache of every sequence (mean context PROMPT + T/2)."""
    d, f, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    weights = (n * (4 * d * d + 3 * d * f) + 2 * d * v) * itemsize
    kv = 2 * n * d * itemsize * (PROMPT + T / 2) * B * beams
    return float(T * (weights + kv))


def _inputs(B: int, C: int, device: torch.device, dtype: torch.dtype):
    """Left-padded prompt embeddings [B, PROMPT, C] with real lengths PROMPT-7 .. PROMPT (the template's range)."""
    lengths = PROMPT - torch.randint(0, 8, (B,))
    mask = (torch.arange(PROMPT)[None] >= (PROMPT - lengths)[:, None]).long().to(device)  # [B, L]
    return torch.randn(B, PROMPT, C, device=device, dtype=dtype) * 0.02, mask


def run(r: h.Run) -> None:
    cuda = r.is_cuda
    cfg, dtype = (LLAMA2_7B, torch.bfloat16) if cuda else (TINY, torch.float32)
    T = 128 if cuda else (16 if r.quick else 32)
    lm = _lm(cfg, r.device, dtype)
    greedy_bs = (1, 16, 64, 256) if cuda else ((1, 16) if r.quick else (1, 16, 64))
    beam_bs = (1, 16, 64) if cuda else ((4,) if r.quick else (1, 16))
    cases = [(B, 1) for B in greedy_bs] + [(B, 5) for B in beam_bs]
    for B, beams in cases:
        s = GenerationSettings(max_new_tokens=T, min_new_tokens=T, num_beams=beams)
        case = h.Case(OP, shapes={"B": B, "L": PROMPT, "T": T, "beams": beams, "llm": "llama2-7b" if cuda else "tiny"},
                      dtype=str(dtype).replace("torch.", ""), size_mix="uniform",
                      units={"new_tokens": B * T, "molecules": B}, flops=flops(cfg, B, T, beams),
                      bytes=bytes_moved(cfg, B, T, beams, torch.finfo(dtype).bits // 8),
                      headline=(cuda and (B, beams) in ((16, 1), (256, 1), (64, 5))) or (not cuda and B == 16))
        providers = {"reference": lambda e, m, s=s, lm=lm: generate_reference(lm, e, m, s),
                     "molm_fast": lambda e, m, s=s, lm=lm: generate(lm, e, m, s, compile=cuda)}
        if cuda:  # seconds per call: warm up (compiles the decode step), then one timed call each
            emb, mask = _inputs(B, cfg["hidden_size"], r.device, dtype)
            for name, fn in providers.items():
                try:
                    fn(emb, mask)
                except Exception as exc:  # e.g. out of memory for HF beam search at B = 64
                    r.skip(case, name, f"{type(exc).__name__}: {exc}"[:300])
                    continue
                r.once(case, name, lambda fn=fn, emb=emb, mask=mask: fn(emb, mask))
        else:
            inputs = [_inputs(B, cfg["hidden_size"], r.device, dtype) for _ in range(2)]
            r.compare(case, providers, inputs, warmup=1, iters=5 if r.quick else 10)
    del lm
    if cuda:
        torch.cuda.empty_cache()


if __name__ == "__main__":
    h.main(run)
