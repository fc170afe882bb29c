"""What every Triton launcher shares: whether the kernels are interpreted, the memory layout a kernel
walks, the compile options, the device guard, and ``Launch``, one kernel call as data. Importing it
requires triton.

A launcher first builds a ``Launch`` (kernel, grid, runtime arguments, compile-time constants) from the
tensors, then runs it. ``tests/helpers/sm90_build.py`` builds the same ``Launch`` from CPU tensors and
compiles it for sm_90 the way the JIT would specialise it, so the PTX it reads is the PTX a GPU runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import triton.language as tl
from torch import Tensor

# Kernels are decorated at import; the interpreter is chosen then, not per call.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

LAYOUT_NCHW = 0
LAYOUT_NHWC = 1
LAYOUT_STRIDED = 2

TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}

# No FP contraction: a*b + c stays a rounded multiply and a rounded add, as in the reference and the C++
# kernels, so the blend is bit-identical across backends (Triton fuses into FMA by default).
COMPILE_OPTIONS: dict[str, Any] = {"enable_fp_fusion": False}

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Launch:
    """One kernel call: ``kernel[grid](*args, **constexprs, **options)``."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=lambda: dict(COMPILE_OPTIONS))

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.constexprs, **self.options)


def layout_of(src: Tensor, dst: Tensor) -> int:
    """LAYOUT_NCHW / LAYOUT_NHWC when both tensors are dense in that order, else LAYOUT_STRIDED."""
    if src.is_contiguous() and dst.is_contiguous():
        return LAYOUT_NCHW
    cl = torch.channels_last
    if src.is_contiguous(memory_format=cl) and dst.is_contiguous(memory_format=cl):
        return LAYOUT_NHWC
    return LAYOUT_STRIDED


def sample_span(tensors: Sequence[Tensor]) -> int:
    """The largest element offset, within one sample, that any of ``tensors`` (B, C, H, W) reaches, plus one:
    a kernel may compute in-sample offsets in 32 bits only while this stays <= 2**31 - 1. The sample's own
    base (``b * stride_b``) is always 64-bit."""
    return max(1 + sum((n - 1) * abs(s) for n, s in zip(t.shape[1:], t.stride()[1:], strict=True)) for t in tensors)


def needs_wide_offsets(tensors: Sequence[Tensor]) -> bool:
    return sample_span(tensors) > INT32_MAX


def device_guard(t: Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def as_index(t: Tensor) -> Tensor:
    """A (B,) index tensor the kernels read at unit stride: int32/int64 kept, other integers widened."""
    t = t if t.dtype in (torch.int32, torch.int64) else t.to(torch.int64)
    return t.contiguous()


def as_levels(t: Tensor) -> Tensor:
    """A (B,) lam / q tensor the kernels read at unit stride (a 0-d value expanded to (B,) has stride 0)."""
    return t.contiguous()
