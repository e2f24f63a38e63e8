"""Uni-Mol encoder fast paths against the reference encoder (the same model under backend "reference", padded):
the fused ops (C++), the packed (varlen) forward and the low-rank inference chain, fp32 and bf16, at the real
positions of every molecule; plus the training path (fused backward) against the reference's gradients."""

from __future__ import annotations

import pytest
import torch

from molm_fast.models.config import UniMolConfig
from molm_fast.models.unimol import UniMolEncoder
from molm_fast.ops import use_backend
from tests.models.spread_init import spread_unimol_parameters
from tests.utils import assert_close_to_reference, assert_no_worse_than_lowp_reference, fast_backends_for

CPU_BACKENDS = [b for b in fast_backends_for("pair_bias_attention", "cpu") if b != "triton"]  # interpreter: op tests
CFG = UniMolConfig(num_layers=3, embed_dim=128, ffn_dim=256, num_heads=16)  # head dim 8 as in Uni-Mol


def _model(dtype=torch.float32) -> UniMolEncoder:
    model = spread_unimol_parameters(UniMolEncoder(CFG), embeddings=False)
    return model.eval().to(dtype)


def _molecules(lengths):
    """Padded (tokens [B, N], coords [B, N, 3]) and packed (tokens [T], coords [T, 3], cu_seqlens) batches."""
    B, N = len(lengths), max(lengths)
    tokens = torch.zeros(B, N, dtype=torch.long)
    coords = torch.randn(B, N, 3) * 5  # junk at pads: never reaches the math
    for b, n in enumerate(lengths):
        tokens[b, :n] = torch.cat([torch.tensor([1]), torch.randint(3, 31, (n - 2,)), torch.tensor([2])])
        coords[b, 0] = coords[b, n - 1] = 0
        coords[b, 1:n - 1] = torch.randn(n - 2, 3) * 2.5
    keep = tokens.ne(0)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return tokens, coords, keep, tokens[keep], coords[keep], cu


LENGTHS = [[3, 12, 40, 7], [2], [66, 66, 5]]


@pytest.fixture(scope="module")
def model():
    return _model()


def _reference(model, tokens, coords, keep):
    with use_backend("reference"), torch.no_grad():
        return model(tokens, coords.double().float())[0][keep]  # [T, C] at the real positions


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("lengths", LENGTHS)
def test_fused_padded_packed_and_low_rank_match_the_reference(model, backend, lengths):
    tokens, coords, keep, ptok, pcoords, cu = _molecules(lengths)
    ref = _reference(model, tokens, coords, keep)
    with use_backend(backend), torch.no_grad():
        assert_close_to_reference(model(tokens, coords)[0][keep], ref, name=f"{backend} padded")
        assert_close_to_reference(model.forward_packed(ptok, pcoords, cu, max(lengths)), ref,
                                  name=f"{backend} packed")
        assert_close_to_reference(model.forward_low_rank(tokens, coords)[0][keep], ref, name=f"{backend} low-rank")
        assert_close_to_reference(model.forward_packed(ptok, pcoords, cu, max(lengths), low_rank=True), ref,
                                  name=f"{backend} packed low-rank")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bfloat16_paths_no_worse_than_the_bf16_reference(model, backend):
    """A whole bf16 model is held to tests/utils.py's whole-model rule: at most twice the bf16 reference model's
    own error against the fp32 reference."""
    tokens, coords, keep, ptok, pcoords, cu = _molecules([3, 12, 40, 7])
    ref = _reference(model, tokens, coords, keep).double()
    low = _model(torch.bfloat16)
    low.load_state_dict({k: v.bfloat16() for k, v in model.state_dict().items()})
    with use_backend("reference"), torch.no_grad():
        ref_lowp = low(tokens, coords)[0][keep]
    with use_backend(backend), torch.no_grad():
        for name, out in (("padded", low(tokens, coords)[0][keep]),
                          ("packed", low.forward_packed(ptok, pcoords, cu, 40)),
                          ("packed low-rank", low.forward_packed(ptok, pcoords, cu, 40, low_rank=True))):
            assert_no_worse_than_lowp_reference(out, ref, ref_lowp, name=f"{backend} bf16 {name}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_training_gradients_match_the_reference(model, backend):
    """Fused backward (dropout off so both paths draw nothing) through the whole padded and packed encoder."""
    tokens, coords, keep, ptok, pcoords, cu = _molecules([3, 12, 9])
    params = [p for n, p in model.named_parameters() if "gbf" not in n]

    def grads(fn):
        model.zero_grad()
        out = fn()
        return torch.autograd.grad(out.square().sum(), params)

    with use_backend("reference"):
        ref = grads(lambda: model(tokens, coords)[0][keep])
    with use_backend(backend):
        for name, fn in (("padded", lambda: model(tokens, coords)[0][keep]),
                         ("packed", lambda: model.forward_packed(ptok, pcoords, cu, 12))):
            for (pname, _), g, r in zip([(n, p) for n, p in model.named_parameters() if "gbf" not in n],
                                        grads(fn), ref):
                assert_close_to_reference(g, r, name=f"{backend} {name} grad {pname}")


def test_low_rank_refuses_training_mode(model):
    tokens, coords, *_ = _molecules([5])
    model.train()
    try:
        with pytest.raises(RuntimeError, match="inference"):
            model.forward_low_rank(tokens, coords)
    finally:
        model.eval()
