"""Stage modules on random tiny models: the encoder cache is exact, the stage-1 step's losses are the §2.3 ones."""

from __future__ import annotations

import numpy as np
import torch

from molm_fast.data import collate_reference
from molm_fast.training import losses
from molm_fast.training.stage1 import Stage1Step
from tests.utils import assert_close_to_reference


def _molecules(n: int, gen: np.random.Generator):
    mols = []
    for _ in range(n):
        k = int(gen.integers(1, 12))
        tokens = np.concatenate([[1], gen.integers(4, 30, k), [2]])
        coords = np.concatenate([[[0, 0, 0]], gen.normal(size=(k, 3)), [[0, 0, 0]]]).astype(np.float32)
        mols.append((tokens, coords))
    return mols


def _stage1_model():
    from molm_fast.models import MoLM, get_config

    return MoLM(get_config("tiny").stage1()).eval()


def test_encoder_cache_is_exact_across_batch_widths():
    gen = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    mols = _molecules(7, gen)
    model = _stage1_model()
    plain = Stage1Step(model, pad_token_id=0)
    cached = Stage1Step(model, pad_token_id=0, cache_encoder=True)
    for idx in ([0, 1, 2, 3], [2, 3, 4, 5, 6], [6], [0, 6], [1, 2, 3, 4, 5, 6, 0]):  # new widths, no-pad rows
        batch = collate_reference([mols[i] for i in idx], idx)
        ref_states, ref_mask = plain.encode(batch)
        states, mask = cached.encode(batch)
        assert (mask is None) == (ref_mask is None) and (mask is None or torch.equal(mask, ref_mask))
        assert_close_to_reference(states, ref_states, name=f"cached Uni-Mol states for molecules {idx}")


def test_stage1_forward_is_the_sum_of_the_three_losses():
    gen = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    B, L = 4, 9
    model = _stage1_model()
    step = Stage1Step(model, pad_token_id=0)
    mols = _molecules(B, gen)
    ids = torch.randint(5, 100, (B, L))
    ids[:, 0] = 2
    att = torch.ones(B, L, dtype=torch.long)
    att[0, 6:] = 0
    ids[0, 6:] = 0
    batch = {"mol": collate_reference(mols, list(range(B))), "input_ids": ids, "attention_mask": att}
    torch.manual_seed(3)
    out = step(batch)
    assert_close_to_reference(out["loss"], out["mtc"] + out["mtm"] + out["mtg"], name="stage-1 total")
    # MTC recomputed from the model's own features (eval mode: no dropout, deterministic)
    g, t = step.embed(batch["mol"], ids, att)
    assert_close_to_reference(out["mtc"], losses.mtc_loss(g, t)[0], name="MTC")
    assert out["stats"] == {"molecules": B, "real_tokens": int(att.sum()), "token_slots": B * L}
