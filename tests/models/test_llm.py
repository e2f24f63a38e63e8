"""LLM side: <mol> splice vs the base model, LoRA naming and scaling, tokenizer changes, prompts, training pairs,
and the Appendix-A Llama tokenisation vector (when a Llama tokenizer is available locally)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from molm_fast.models.config import TINY_LLAMA, LLMConfig, paper, tiny
from molm_fast.models.llm import (
    MoLMLLM,
    build_prompt,
    encode_prompts,
    encode_training_batch,
    setup_tokenizer,
)
from tests.utils import assert_close_to_reference

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def llm():
    return MoLMLLM(tiny().llm).eval()


def manual_splice(llm: MoLMLLM, ids: torch.Tensor, mol: torch.Tensor) -> torch.Tensor:
    emb = llm.llm_model.get_input_embeddings()(ids).clone()
    for b in range(ids.shape[0]):
        pos = (ids[b] == llm.mol_token_id).nonzero().flatten()
        emb[b, pos] = mol[b]
    return emb


def test_splice_logits_equal_base_model_fed_same_embeds(llm):
    batch = encode_prompts(llm.tokenizer, [build_prompt("CCO"), build_prompt("c1ccccc1O", "What is it?")])
    mol = torch.randn(2, 8, 64)
    with torch.no_grad():
        out = llm(batch["input_ids"], batch["attention_mask"], mol).logits
        embeds = manual_splice(llm, batch["input_ids"], mol)
        with llm.llm_model.disable_adapter():  # LoRA B starts at 0: the adapted model is the base model
            base = llm.llm_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    valid = batch["attention_mask"].bool()
    assert_close_to_reference(out[valid], base[valid], name="spliced logits")
    assert torch.equal(llm.embed(batch["input_ids"], mol), embeds)


def test_lora_names_shapes_and_scaling():
    llm = MoLMLLM(tiny().llm).eval()  # its own: the LoRA weights get randomised below
    lora = {k: v for k, v in llm.state_dict().items() if "lora_" in k}
    L, C, F, r = TINY_LLAMA["num_hidden_layers"], 64, TINY_LLAMA["intermediate_size"], 8
    expected = {}
    for j in range(L):
        for t in TARGETS:
            block = "mlp" if t in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            d_in, d_out = (F, C) if t == "down_proj" else (C, F) if t in ("gate_proj", "up_proj") else (C, C)
            key = f"llm_model.base_model.model.model.layers.{j}.{block}.{t}"
            expected[f"{key}.lora_A.default.weight"] = (r, d_in)
            expected[f"{key}.lora_B.default.weight"] = (d_out, r)
    assert {k: tuple(v.shape) for k, v in lora.items()} == expected
    assert all(p.requires_grad == ("lora_" in n) for n, p in llm.named_parameters())

    # effective weight W + (alpha / r) B A = W + 4 B A (spec §5.2)
    with torch.no_grad():
        for v in lora.values():
            v.normal_(0, 0.1)
    merged = LlamaForCausalLM(LlamaConfig(**{"vocab_size": len(llm.tokenizer), **TINY_LLAMA})).eval()
    sd = {}
    for k, v in llm.llm_model.get_base_model().state_dict().items():
        if "lora_" in k:
            continue
        k2 = k.replace(".base_layer", "")
        if ".base_layer.weight" in k:
            stem = k.replace(".base_layer.weight", "")
            A = llm.llm_model.get_base_model().get_submodule(stem).lora_A["default"].weight
            B = llm.llm_model.get_base_model().get_submodule(stem).lora_B["default"].weight
            v = v + 4.0 * B @ A
        sd[k2] = v
    merged.load_state_dict(sd)
    ids = torch.randint(0, len(llm.tokenizer), (2, 9))
    with torch.no_grad():
        assert_close_to_reference(llm.llm_model(input_ids=ids).logits, merged(input_ids=ids).logits,
                                  name="LoRA logits vs merged W + 4BA")


def test_tokenizer_changes(llm):
    tok = llm.tokenizer
    base = llm.base_vocab_size
    assert (tok.pad_token, tok.pad_token_id, tok.mol_token_id) == ("[PAD]", base, base + 1)
    assert tok.bos_token == tok.eos_token == tok.unk_token == "</s>"
    assert tok.bos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("</s>")
    n = len(tok)
    assert llm.llm_model.get_input_embeddings().weight.shape[0] == n == base + 2
    assert llm.llm_model.get_output_embeddings().weight.shape[0] == n


def test_prompt_templates():
    smiles = "C" * 120
    p = build_prompt(smiles)
    assert p == ("Below is an instruction that describes a task, paired with an input molecule. Write a response that "
                 "appropriately completes the request.\nInstruction: Describe the input molecule.\nInput molecule: "
                 + "C" * 96 + " <mol><mol><mol><mol><mol><mol><mol><mol>.\nResponse: ")
    long = "x" * 80
    assert f"Instruction: {'x' * 64}\n" in build_prompt("CC", long, task="Description")
    assert f"Instruction: {long}\n" in build_prompt("CC", long, task="HOMO")


def test_training_pairs_layout_labels_and_eos(llm):
    tok = llm.tokenizer
    prompts = [build_prompt("CCO"), build_prompt("CN")]
    targets = ["It is ethanol.\n", "Methylamine."]
    out = encode_training_batch(tok, prompts, targets, max_length=384, pad_to_max_length=True)
    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    assert ids.shape == (2, 384)
    for b in range(2):
        p = tok(prompts[b], add_special_tokens=False)["input_ids"]
        t = tok(targets[b], add_special_tokens=False)["input_ids"]
        seq = [tok.bos_token_id] + p + [tok.bos_token_id] + t  # </s> prompt </s> target, no EOS
        assert ids[b, -len(seq):].tolist() == seq
        assert (ids[b, : 384 - len(seq)] == tok.pad_token_id).all() and mask[b].sum() == len(seq)  # left padding
        assert labels[b, -(len(t) + 1):].tolist() == [tok.bos_token_id] + t
        assert (labels[b, : 384 - len(t) - 1] == -100).all()
    eos = encode_training_batch(tok, prompts, targets, max_length=384, pad_to_max_length=False, append_eos=True)
    assert eos["input_ids"][:, -1].tolist() == [tok.eos_token_id] * 2
    assert eos["input_ids"].shape[1] == max(int(m.sum()) for m in mask) + 1  # padded to the longest
    short = encode_training_batch(tok, prompts, ["y" * 500] * 2, max_length=300)
    assert short["input_ids"].shape == (2, 300) and bool(short["attention_mask"].all())


def test_splice_count_errors(llm):
    batch = encode_prompts(llm.tokenizer, [build_prompt("CCO")])
    with pytest.raises(ValueError, match="exactly Q = 4"):
        llm.embed(batch["input_ids"], torch.randn(1, 4, 64))
    with pytest.raises(ValueError, match="mol_embeds must be"):
        llm.embed(batch["input_ids"], torch.randn(2, 8, 64))
    with pytest.raises(ValueError, match="padding_side"):
        encode_prompts(llm.tokenizer, ["x"], padding_side="middle")


def test_paper_lora_count_on_meta():
    """19,988,480 LoRA parameters on Llama-2-7B (spec §1.4), counted on the meta device."""
    cfg = dataclasses.replace(paper().llm, llama=dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                                      num_hidden_layers=32, num_attention_heads=32))
    with torch.device("meta"):
        llm = MoLMLLM(cfg)
    assert sum(p.numel() for n, p in llm.named_parameters() if "lora_" in n) == 19_988_480


APPENDIX_A = [2, 13866, 338, 385, 15278, 393, 16612, 263, 3414, 29892, 3300, 2859, 411, 385, 1881, 13206, 29883, 1297,
              29889, 14350, 263, 2933, 393, 7128, 2486, 1614, 2167, 278, 2009, 29889, 13, 3379, 4080, 29901, 306, 817,
              304, 1073, 278, 4522, 29925, 310, 445, 13206, 29883, 1297, 29892, 1033, 366, 3113, 3867, 372, 29973, 960,
              17999, 29892, 3867, 385, 12678, 29889, 2538, 2818, 411, 278, 16259, 995, 871, 29889, 13, 4290, 13206,
              29883, 1297, 29901, 19178, 29898, 29922, 29949, 29897, 20166, 29898, 4174, 29898, 29922, 29949, 9601,
              29949, 29899, 2314, 29907, 29961, 29940, 29974, 850, 29907, 5033, 29907, 29897, 29907, 29871, 32001,
              32001, 32001, 32001, 32001, 32001, 32001, 32001, 869, 13, 5103, 29901, 29871]


def test_appendix_a_llama_tokenisation():
    path = os.environ.get("MOLM_FAST_LLAMA_TOKENIZER")
    if not path or not Path(path).is_dir():
        pytest.skip("no Llama-2 tokenizer here: set MOLM_FAST_LLAMA_TOKENIZER to a local llama-2-7b-hf directory "
                    "(no download at test time)")
    from transformers import AutoTokenizer

    tok = setup_tokenizer(AutoTokenizer.from_pretrained(path, use_fast=False, legacy=True), LLMConfig())
    instruction = ("I need to know the LogP of this molecule, could you please provide it? If uncertain, provide an "
                   "estimate. Respond with the numerical value only.")
    prompt = build_prompt("CC(=O)OC(CC(=O)[O-])C[N+](C)(C)C", instruction)
    assert encode_prompts(tok, [prompt])["input_ids"][0].tolist() == APPENDIX_A
