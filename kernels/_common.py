"""Shared Triton helpers: block-size choice and (for dropout) Philox-based keep masks."""

from __future__ import annotations

import triton
import triton.language as tl


def next_power_of_2(n: int, minimum: int = 16) -> int:
    return max(minimum, triton.next_power_of_2(max(int(n), 1)))


@triton.jit
def dropout_keep(seed, offset, p):
    """Philox keep mask for elements at ``offset``: True with probability 1 - p; the same (seed, offset)
    gives the same mask, so backward regenerates it instead of storing it."""
    return tl.rand(seed, offset) >= p
