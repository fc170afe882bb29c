"""Arithmetic the kernels share, rounded as torch rounds it on the CPU (so backends agree with the reference)."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["div_rn"]


@triton.jit
def div_rn(a, b, ACC: tl.constexpr):
    """Correctly rounded a / b, as torch computes it (float32 division is approximate by default)."""
    if ACC == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)
