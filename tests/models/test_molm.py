"""The whole model (tiny config): what training and inference call, frozen parts, and backends vs the reference."""

from __future__ import annotations

import pytest
import torch

import molm_fast
from molm_fast.models.config import tiny
from molm_fast.models.llm import encode_training_batch
from molm_fast.ops import use_backend
from tests.utils import assert_close_to_reference, fast_backends_for


def molecules(lengths, n):
    tokens = torch.zeros(len(lengths), n, dtype=torch.long)
    coords = torch.zeros(len(lengths), n, 3)
    for b, k in enumerate(lengths):
        tokens[b, 0], tokens[b, k + 1] = 1, 2
        tokens[b, 1: k + 1] = torch.randint(4, 30, (k,))
        coords[b, 1: k + 1] = torch.randn(k, 3) * 2
    return tokens, coords


def test_stage2_loss_trains_only_qformer_and_lora():
    model = molm_fast.MoLM(tiny()).train()
    assert not model.graph_encoder.training  # Uni-Mol stays in eval mode
    tokens, coords = molecules([5, 11], 16)
    tok = model.llm.tokenizer
    prompts = model.encode_prompts(["CCO", "CN"])  # checks the prompt path builds
    assert prompts["input_ids"].shape[0] == 2
    from molm_fast.models.llm import build_prompt

    batch = encode_training_batch(tok, [build_prompt("CCO"), build_prompt("CN")], ["Ethanol.\n", "Methylamine.\n"],
                                  max_length=model.config.llm.max_length, pad_to_max_length=False)
    loss = model.lm_loss(tokens, coords, **batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("qformer.Qformer.") for n in grads) and "qformer.llm_proj.weight" in grads
    assert any("lora_B" in n for n in grads)
    assert not any(n.startswith("graph_encoder.") for n in grads)
    assert all("lora_" in n for n in grads if n.startswith("llm."))


def test_stage1_api():
    model = molm_fast.MoLM(tiny().stage1()).eval()
    tokens, coords = molecules([3, 9, 6], 16)
    ids = torch.randint(1, 100, (3, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        z, cache = model.query_states(tokens, coords, return_cache=True)
        g = model.graph_features(z)
        t = model.text_features(ids, mask)
        m = model.match_logits(ids, mask, tokens, coords)
        lm = model.caption_loss(ids, mask, cache)
    assert z.shape == (3, 8, 64) and g.shape == (3, 8, 32) and t.shape == (3, 32) and m.shape == (3, 2)
    assert torch.isfinite(lm)


def test_prompt_embeds_splice_in_order():
    model = molm_fast.MoLM(tiny()).eval()
    tokens, coords = molecules([4, 6], 8)
    batch = model.encode_prompts(["CCO", "c1ccccc1"], ["Describe the input molecule.", "What is the LogP?"])
    with torch.no_grad():
        emb = model.prompt_embeds(tokens, coords, batch["input_ids"])
        mol = model.mol_embeds(tokens, coords)
    pos = batch["input_ids"] == model.llm.mol_token_id
    assert torch.equal(emb[pos].view(2, 8, -1), mol)


@pytest.mark.parametrize("backend", fast_backends_for("pair_bias_attention"))
def test_encoder_fast_backend_matches_reference(backend):
    """The model under each fast backend of the encoder ops == the model under ``use_backend('reference')``."""
    model = molm_fast.MoLM(tiny()).eval()
    tokens, coords = molecules([1, 6, 13], 16)
    with torch.no_grad():
        with use_backend("reference"):
            ref = model.query_states(tokens, coords)
        with use_backend(backend):
            out = model.query_states(tokens, coords)
    assert_close_to_reference(out, ref, name=f"query states under {backend}")


@pytest.mark.gpu
def test_cuda_model_matches_cpu_reference():
    """The tiny model on CUDA (automatic backends) == the same weights on CPU under the reference backend, fp32."""
    model = molm_fast.MoLM(tiny()).eval()
    tokens, coords = molecules([1, 6, 13, 30], 32)
    with torch.no_grad():
        with use_backend("reference"):
            ref = model.query_states(tokens, coords)
            ref_states, _ = model.encode_molecules(tokens, coords)
        model.cuda()
        out = model.query_states(tokens.cuda(), coords.cuda())
        states, _ = model.encode_molecules(tokens.cuda(), coords.cuda())
    assert_close_to_reference(states, ref_states, name="Uni-Mol states on CUDA")
    assert_close_to_reference(out, ref, name="query states on CUDA")
