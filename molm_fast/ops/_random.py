"""Philox4x32-10 in plain PyTorch, bit-identical to Triton's ``tl.rand(seed, offset)`` (and to csrc/common.h).

Dropout in molm_fast's fused ops draws u = philox_uniform(seed, flat index of the element) and keeps the element
when u >= p, so every backend (reference, C++, Triton, CUDA) makes the same mask from the same seed, and a backward
regenerates it instead of storing it. uint32 arithmetic is emulated in int64 (products split into 16-bit halves).
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_UNIFORM_SCALE = torch.tensor(4.6566127342e-10, dtype=torch.float32)  # 2^-31, as Triton's uint_to_uniform_float


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a * b for a constant a < 2^32 and int64 b in [0, 2^32)."""
    x = a * (b >> 16)  # < 2^48
    y = a * (b & 0xFFFF)  # < 2^48
    return (x + (y >> 16)) >> 16, (((x & 0xFFFF) << 16) + y) & _M32


def philox_uniform(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """U[0, 1) float32 for each int64 offset: Triton's ``tl.rand(seed, offsets)`` (Philox4x32, 10 rounds)."""
    offsets = offsets.to(torch.int64)
    c0, c1 = offsets & _M32, (offsets >> 32) & _M32
    c2 = torch.zeros_like(offsets)
    c3 = torch.zeros_like(offsets)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    x = torch.where(c0 >= 2**31, c0 - 2**32, c0)  # as int32
    x = torch.where(x < 0, ~x, x)
    return x.to(torch.float32) * _UNIFORM_SCALE.to(offsets.device)


def dropout_keep(seed: int, numel: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Keep mask (bool, [numel]) of elements 0..numel-1 for dropout probability p."""
    offsets = torch.arange(numel, dtype=torch.int64, device=device)
    return philox_uniform(seed, offsets) >= torch.tensor(p, dtype=torch.float32)
