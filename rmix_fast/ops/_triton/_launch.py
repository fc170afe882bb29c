"""What every Triton launcher shares: whether the kernels are interpreted, the memory layout a kernel
walks, the device guard, and the Triton dtypes of the accumulate types. Importing it requires triton."""

from __future__ import annotations

import contextlib
import os

import torch
import triton.language as tl
from torch import Tensor

# Kernels are decorated at import; the interpreter is chosen then, not per call.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

LAYOUT_NCHW = 0
LAYOUT_NHWC = 1
LAYOUT_STRIDED = 2

TL_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}


def layout_of(src: Tensor, dst: Tensor) -> int:
    """LAYOUT_NCHW / LAYOUT_NHWC when both tensors are dense in that order, else LAYOUT_STRIDED."""
    if src.is_contiguous() and dst.is_contiguous():
        return LAYOUT_NCHW
    cl = torch.channels_last
    if src.is_contiguous(memory_format=cl) and dst.is_contiguous(memory_format=cl):
        return LAYOUT_NHWC
    return LAYOUT_STRIDED


def device_guard(t: Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def index_tensor(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.int32, torch.int64) else t.to(torch.int64)
