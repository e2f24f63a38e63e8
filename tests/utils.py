"""The tolerance table and the one parity assertion every test uses.

Tolerances (never set per test, never loosened to pass):
  float32:  max|out - ref| <= 1e-5 * max|ref|
  bfloat16: max|out - ref| <= 1e-2 * max|ref|, ref in fp32 (the message also shows PyTorch's own bf16 error)
  float16:  max|out - ref| <= 1e-3 * max|ref|, ref in fp32
  float64:  gradcheck on the CPU paths (tests call torch.autograd.gradcheck directly)
  fp32 sums that cancel (a parameter's gradient summed over pairs, e.g. one edge type's bias at one atom): their
            fp32 error relative to max|ref| has no bound -- PyTorch's own fp32 autograd misses 1e-5 on ~1.3% of
            random draws of gaussian_pair_bias at B = N = 1 -- so the bound is max(1e-5 * max|ref|, 3 x the largest
            error of the fp32 reference run in 4 equivalent summation orders) (``rounding=``; 0 failures in 1,000
            draws where plain 1e-5 fails 2%)
  whole models in bf16 (many bf16 linears and LayerNorms: the reference model run in bf16 is itself ~1-1.5% off its
            fp32 self): max|out - ref| <= 2 x the bf16 reference model's own max error -- flash-attention's yardstick
            (assert_no_worse_than_lowp_reference)
A NaN or inf where the reference is finite always fails; infinities must match the reference's exactly.
"""

from __future__ import annotations

import os
import random

import torch

RUN_SEED = int(os.environ.get("MOLM_FAST_TEST_SEED", random.SystemRandom().randrange(2**31)))
CURRENT_SEED = RUN_SEED

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def assert_close_to_reference(out: torch.Tensor, ref: torch.Tensor, *, name: str = "output",
                              dtype: torch.dtype | None = None, ref_lowp: torch.Tensor | None = None,
                              rounding: list[torch.Tensor] | None = None) -> None:
    """Assert ``out`` matches ``ref`` within the tolerance of ``dtype`` (default: out.dtype).

    ``ref`` should be computed in fp32 (or fp64) for low-precision ``out``; ``ref_lowp`` (the reference run in
    the low precision) is only reported, as flash-attention's yardstick. ``rounding``: for fp32 sums that cancel
    (see the table), the fp32 reference in 4 summation orders; the bound becomes max(tol, 3 x their largest error).
    """
    dtype = dtype or out.dtype
    where = f"[{name}: shape {list(out.shape)}, dtype {dtype}, seed {CURRENT_SEED} (run {RUN_SEED})]"
    assert out.shape == ref.shape, f"{where} shape {list(out.shape)} != reference {list(ref.shape)}"
    o, r = out.detach().double().cpu(), ref.detach().double().cpu()
    ref_finite = torch.isfinite(r)
    bad = ~torch.isfinite(o) & ref_finite
    assert not bad.any(), f"{where} {int(bad.sum())} non-finite values where the reference is finite, first at " \
                          f"{tuple(bad.nonzero()[0].tolist())}"
    inf_mismatch = ~ref_finite & (o != r) & ~(torch.isnan(o) & torch.isnan(r))
    assert not inf_mismatch.any(), f"{where} {int(inf_mismatch.sum())} non-finite reference values not matched, " \
                                   f"first at {tuple(inf_mismatch.nonzero()[0].tolist())}"
    if not ref_finite.any():
        return
    err = (o - r).abs().where(ref_finite, 0.0)
    scale = r.abs().where(ref_finite, 0.0).max().item()
    tol = TOLERANCE[dtype] * max(scale, 1e-30)
    if rounding is not None:
        assert dtype == torch.float32 and len(rounding) >= 4, f"{where} rounding= needs fp32 and >= 4 orders"
        own = max((x.detach().double().cpu() - r).abs().where(ref_finite, 0.0).max().item() for x in rounding)
        tol = max(tol, 3 * own)
    max_err = err.max().item()
    if max_err <= tol:
        return
    idx = tuple(torch.nonzero(err == max_err)[0].tolist())
    n_bad = int((err > tol).sum())
    extra = ""
    if ref_lowp is not None:
        lowp_err = (ref_lowp.double().cpu() - r).abs().max().item()
        extra = f"; the reference's own {ref_lowp.dtype} error is {lowp_err:.3e}"
    if rounding is not None:
        extra += f"; bound {tol:.3e} (3 x the fp32 reference's own error over {len(rounding)} summation orders)"
    raise AssertionError(f"{where} max|out-ref| = {max_err:.3e} > {TOLERANCE[dtype]:g} * max|ref| ({scale:.3e}) "
                         f"at {idx}: out {o[idx].item():.6g} vs ref {r[idx].item():.6g}; {n_bad} elements over{extra}")


def backends_for(op: str, device: str = "cpu") -> list[str]:
    """Every backend of ``op`` that can run on ``device`` here (the reference included)."""
    import molm_fast.ops  # noqa: F401  registers the ops
    from molm_fast.ops import _backend

    dev = torch.device(device)
    return [b for b in _backend.implemented(op) if _backend.unavailable_reason(b, dev) is None]


def fast_backends_for(op: str, device: str = "cpu") -> list[str]:
    return [b for b in backends_for(op, device) if b != "reference"]


def assert_no_worse_than_lowp_reference(out: torch.Tensor, ref: torch.Tensor, ref_lowp: torch.Tensor, *,
                                        name: str = "output") -> None:
    """Whole-model low-precision parity: ``out``'s max error against the fp32/fp64 ``ref`` is at most twice that of
    ``ref_lowp`` (the reference model run in the same low precision)."""
    where = f"[{name}: shape {list(out.shape)}, dtype {out.dtype}, seed {CURRENT_SEED} (run {RUN_SEED})]"
    assert out.shape == ref.shape == ref_lowp.shape, f"{where} shapes {list(out.shape)}, {list(ref.shape)}, " \
                                                     f"{list(ref_lowp.shape)} differ"
    assert torch.isfinite(out).all(), f"{where} non-finite values"
    r = ref.detach().double().cpu()
    own = (ref_lowp.detach().double().cpu() - r).abs().max().item()
    err = (out.detach().double().cpu() - r).abs().max().item()
    assert err <= 2 * own, f"{where} max error {err:.3e} > 2 x the low-precision reference's own {own:.3e}"
