"""Uni-Mol encoder: parity with unimol-tools' pure-PyTorch Uni-Mol, shapes, pads, parameter count, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from molm_fast.data.featurize import featurize_reference
from molm_fast.models.config import UniMolConfig, paper
from molm_fast.models.unimol import UniMolEncoder
from tests.models.spread_init import spread_unimol_parameters
from tests.models.unimol_tools_model import build_unimol_tools_model
from tests.utils import assert_close_to_reference

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def molecule_tensors(mol) -> tuple[torch.Tensor, torch.Tensor]:
    """3D-MoLM featurisation of one RDKit conformer (spec §1.2, ``molm_fast.data.featurize_reference``)."""
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    tokens, coords = featurize_reference(symbols, mol.GetConformer().GetPositions())
    return torch.from_numpy(tokens), torch.from_numpy(coords).double()


def real_molecules() -> list[tuple[torch.Tensor, torch.Tensor]]:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mols = [Chem.MolFromMolFile(str(DATA / "3d-molm" / "Conformer3D_COMPOUND_CID_1.sdf"), removeHs=False),
            Chem.MolFromMolFile(str(DATA / "conformers" / "3d-molt5_example_CID101399.sdf"), removeHs=False)]
    for smi in ("CC(=O)OC1=CC=CC=C1C(=O)O", "OC(=O)C[N+](C)(C)C", "ClC1=CC(Br)=CC=C1"):
        m = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(m, randomSeed=int(torch.randint(0, 2**30, ())))
        mols.append(m)
    return [molecule_tensors(m) for m in mols]


def collate(mols, pad_to_multiple: int = 8):
    """Right-pad to a multiple of 8. Returns (tokens, coords with random junk at pads, dist, edge) like upstream."""
    n = max(len(t) for t, _ in mols)
    n = -(-n // pad_to_multiple) * pad_to_multiple
    B = len(mols)
    tokens = torch.zeros(B, n, dtype=torch.long)
    coords = torch.randn(B, n, 3, dtype=torch.float64) * 5  # pads never reach the math
    dist = torch.zeros(B, n, n)
    edge = torch.zeros(B, n, n, dtype=torch.long)
    for b, (t, c) in enumerate(mols):
        k = len(t)
        tokens[b, :k], coords[b, :k] = t, c
        dist[b, :k, :k] = torch.cdist(c, c).float()  # scipy distance_matrix in fp64, cast to fp32
        edge[b, :k, :k] = t[:, None] * 31 + t[None, :]
    return tokens, coords.float(), dist, edge


def random_molecules(lengths):
    out = []
    for n in lengths:
        atoms = torch.randint(3, 31, (n,))
        pos = torch.randn(n, 3, dtype=torch.float64) * 2.5
        pos -= pos.mean(0)
        z = torch.zeros(1, 3, dtype=torch.float64)
        out.append((torch.cat([torch.tensor([1]), atoms, torch.tensor([2])]), torch.cat([z, pos, z])))
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = build_unimol_tools_model(tmp_path_factory.mktemp("unimol_tools"))
    spread_unimol_parameters(ref)
    ours = UniMolEncoder().eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [], missing
    assert unexpected and all(k.startswith("classification_head.") for k in unexpected), unexpected
    return ours, ref


def run_reference(ref, tokens, dist, edge):
    """unimol_tools' own forward; its encoder's outputs (encoder_rep, pair logits) are captured by a hook."""
    seen = {}
    handle = ref.encoder.register_forward_hook(lambda m, i, o: seen.update(rep=o[0], pair=o[1]))
    try:
        ref(tokens, dist, torch.zeros(*tokens.shape, 3), edge, return_repr=True)
    finally:
        handle.remove()
    return seen["rep"], seen["pair"]


def check_parity(ours, ref, mols):
    tokens, coords, dist, edge = collate(mols)
    with torch.no_grad():
        rep, pad_mask, pair = ours(tokens, coords, return_pair=True)
        ref_rep, ref_pair = run_reference(ref, tokens, dist, edge)
    assert_close_to_reference(rep, ref_rep, name="atom states (incl. pad rows)")
    assert_close_to_reference(pair, ref_pair.masked_fill(ref_pair == float("-inf"), 0.0), name="pair repr")
    expected_mask = tokens.eq(0)
    if expected_mask.any():
        assert torch.equal(pad_mask, expected_mask)
    else:
        assert pad_mask is None
    return rep, pad_mask


def test_parity_real_molecules(pair):
    ours, ref = pair
    mols = real_molecules()
    check_parity(ours, ref, mols)
    for m in mols[:3]:  # one molecule alone: length not a multiple of 8 gets pads; regime of single inference
        check_parity(ours, ref, [m])


@pytest.mark.parametrize("lengths", [[1], [6], [1, 13, 6], [4, 30, 9, 17], [14]])
def test_parity_random_shapes(pair, lengths):
    ours, ref = pair
    rep, pad_mask = check_parity(ours, ref, random_molecules(lengths))
    if pad_mask is not None:  # every pad row of a molecule holds one vector (spec §1.2): identical in exact
        for b in range(rep.shape[0]):  # arithmetic; a BLAS may round rows in different tiles differently (AVX2 MKL)
            rows = rep[b][pad_mask[b]]
            if len(rows) > 1:
                assert_close_to_reference(rows, rows[:1].expand_as(rows), name=f"pad rows of molecule {b}")


def test_no_pad_anywhere_returns_none(pair):
    ours, ref = pair
    _, pad_mask = check_parity(ours, ref, random_molecules([6, 6]))  # 8 tokens each: nothing padded
    assert pad_mask is None


def test_paper_parameter_count_on_meta():
    with torch.device("meta"):
        enc = UniMolEncoder()
    assert enc.config == paper().unimol
    assert sum(p.numel() for p in enc.parameters()) == 47_330_626
    keys = set(enc.state_dict())
    assert {"embed_tokens.weight", "gbf.means.weight", "gbf_proj.linear2.bias", "encoder.emb_layer_norm.weight",
            "encoder.layers.14.self_attn.in_proj.weight", "encoder.final_layer_norm.bias"} <= keys
    assert enc.encoder.layers[0].self_attn.in_proj.weight.shape == (1536, 512)


def test_tiny_encoder_pads_and_dtypes():
    cfg = UniMolConfig(num_layers=2, embed_dim=64, ffn_dim=128, num_heads=8)
    enc = UniMolEncoder(cfg).eval()
    tokens, coords, _, _ = collate(random_molecules([3, 9]))
    with torch.no_grad():
        rep, mask = enc(tokens, coords)
        rep_moved, _ = enc(tokens, coords + torch.where(tokens.eq(0)[..., None], 7.0, 0.0))
    assert rep.shape == (*tokens.shape, 64) and mask.dtype == torch.bool
    assert torch.equal(rep, rep_moved), "pad coordinates must not change any output"
    assert torch.isfinite(rep).all()


def test_bad_inputs_raise():
    enc = UniMolEncoder(UniMolConfig(num_layers=1, embed_dim=16, ffn_dim=32, num_heads=2))
    with pytest.raises(ValueError, match="tokens must be"):
        enc(torch.zeros(3, dtype=torch.long), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="coords must be"):
        enc(torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="num_heads"):
        UniMolConfig(embed_dim=10, num_heads=3)
