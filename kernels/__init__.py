"""Triton kernels of molm_fast, one fused op per file; installed as ``molm_fast.kernels``.

Files hold kernels and their launchers only: no dispatch, no autograd, no torch.library (molm_fast/ops does that).
"""
