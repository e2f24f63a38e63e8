"""low_rank_pair_attention: the exact low-rank form of Uni-Mol's logit chain against the chain itself (padded and
packed, pad keys, rows with no key), every backend, bf16, opcheck, and that it refuses to be trained through."""

from __future__ import annotations

import pytest
import torch

from molm_fast.ops import (
    low_rank_pair_attention,
    low_rank_pair_attention_reference,
    pair_bias_attention_reference,
    use_backend,
)
from tests.utils import assert_close_to_reference, backends_for

OP = "low_rank_pair_attention"
BACKENDS = backends_for(OP, "cpu")
SCALE = 8**-0.5


def _chain(qs, ks, vs, bias0, cu=None):
    """The reference chain: bias_{l+1} = logits_l, computed in float64. Returns each layer's out."""
    bias, outs = bias0.double(), []
    for q, k, v in zip(qs, ks, vs):
        out, bias = pair_bias_attention_reference(q.double(), k.double(), v.double(), bias, scale=SCALE,
                                                  cu_seqlens=cu)
        outs.append(out)
    return outs


def _low_rank(backend, qs, ks, vs, bias0, cu=None, max_seqlen=None):
    """Each layer through the op, with q_cat / k_cat slices of one preallocated buffer (as the encoder does)."""
    L, D = len(qs), qs[0].shape[-1]
    qbuf = qs[0].new_empty(*qs[0].shape[:-1], L * D)
    kbuf = torch.empty_like(qbuf)
    outs = []
    for l, (q, k, v) in enumerate(zip(qs, ks, vs)):
        qbuf[..., l * D:(l + 1) * D] = q * SCALE
        kbuf[..., l * D:(l + 1) * D] = k
        with use_backend(**{OP: backend}):
            outs.append(low_rank_pair_attention(qbuf[..., :(l + 1) * D], kbuf[..., :(l + 1) * D], v, bias0,
                                                cu_seqlens=cu, max_seqlen=max_seqlen))
    return outs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,N", [(1, 1), (3, 7), (16, 9), (2, 31), (1, 130)])
def test_padded_matches_the_chain(backend, B, N):
    if backend == "triton" and (N > 31 or B > 3):
        pytest.skip("the Triton interpreter is too slow here; larger shapes run in the gpu tests")
    H, D, L = 4, 8, 4
    qs, ks, vs = ([torch.randn(B, N, H, D).transpose(1, 2) for _ in range(L)] for _ in range(3))
    bias0 = torch.randn(B, H, N, N) * 2
    if N > 2:
        bias0[..., N - 2:] = float("-inf")
        bias0[0, 1 % H, 0, :] = float("-inf")
    for l, (out, ref) in enumerate(zip(_low_rank(backend, qs, ks, vs, bias0), _chain(qs, ks, vs, bias0))):
        assert_close_to_reference(out, ref, name=f"{backend} layer {l}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_matches_the_chain(backend):
    lens, H, D, L = [5, 1, 31, 8], 4, 8, 3
    if backend == "triton":
        lens = [5, 1, 9]
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    qs, ks, vs = ([torch.randn(T, H, D) for _ in range(L)] for _ in range(3))
    bias0 = torch.randn(H * sum(n * n for n in lens))
    outs = _low_rank(backend, qs, ks, vs, bias0, cu, max(lens))
    for l, (out, ref) in enumerate(zip(outs, _chain(qs, ks, vs, bias0, cu))):
        assert_close_to_reference(out, ref, name=f"{backend} packed layer {l}")


# the reference computes in bf16 (upstream's numerics); the Triton interpreter does not emulate bf16 dots
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in ("reference", "triton")])
def test_bfloat16_within_tolerance_of_the_fp32_chain(backend):
    B, N, H, D, L = 3, 31, 8, 8, 6
    qs, ks, vs = ([torch.randn(B, N, H, D).transpose(1, 2) for _ in range(L)] for _ in range(3))
    bias0 = torch.randn(B, H, N, N)
    low = [t.bfloat16() for t in qs], [t.bfloat16() for t in ks], [t.bfloat16() for t in vs]
    outs = _low_rank(backend, *low, bias0.bfloat16())
    for l, (out, ref) in enumerate(zip(outs, _chain(*low, bias0.bfloat16()))):  # the chain on the same bf16 inputs
        assert_close_to_reference(out, ref, name=f"{backend} bf16 layer {l}", dtype=torch.bfloat16)


def test_inference_only_and_bad_arguments():
    q, k, v = (torch.randn(2, 4, 5, 16), torch.randn(2, 4, 5, 16), torch.randn(2, 4, 5, 8))
    bias0 = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match="inference only"):
        low_rank_pair_attention(q.requires_grad_(), k, v, bias0)
    with pytest.raises(ValueError, match="k_cat must match q_cat"):
        low_rank_pair_attention(q.detach(), k[..., :8], v, bias0)
    with pytest.raises(ValueError, match="bias must be"):
        low_rank_pair_attention(q.detach(), k, v, bias0[..., :4])


def test_opcheck_and_reference():
    q, k, v = (torch.randn(2, 4, 5, 16), torch.randn(2, 4, 5, 16), torch.randn(2, 4, 5, 8))
    bias0 = torch.randn(2, 4, 5, 5)
    torch.library.opcheck(torch.ops.molm_fast.low_rank_pair_attention.default, (q, k, v, bias0, None, 5),
                          test_utils=("test_schema", "test_faketensor"))
    ref = torch.softmax(q @ k.transpose(-1, -2) + bias0, -1) @ v
    assert_close_to_reference(low_rank_pair_attention_reference(q, k, v, bias0), ref)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_the_chain(backend, dtype):
    if backend not in backends_for(OP, "cuda"):
        pytest.skip(f"{backend} is not available for {OP} on this machine")
    B, N, H, D, L = 16, 64, 64, 8, 15
    qs, ks, vs = ([torch.randn(B, N, H, D, device="cuda").transpose(1, 2) for _ in range(L)] for _ in range(3))
    bias0 = torch.randn(B, H, N, N, device="cuda")
    bias0[..., N - 6:] = float("-inf")
    low = [t.to(dtype) for t in qs], [t.to(dtype) for t in ks], [t.to(dtype) for t in vs]
    outs = _low_rank(backend, *low, bias0.to(dtype))
    for l, (out, ref) in enumerate(zip(outs, _chain(*low, bias0.to(dtype)))):
        assert_close_to_reference(out, ref.float(), name=f"{backend} cuda layer {l}", dtype=dtype)
