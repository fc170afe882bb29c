"""The dtypes the ops take and the precision they compute in; shared by the public ops, every backend
and the reference, so it imports nothing but torch."""

from __future__ import annotations

import torch

__all__ = ["FLOAT_DTYPES", "accumulate_dtype"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision an op computes in for tensors of ``dtype``: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
