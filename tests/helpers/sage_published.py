"""SAGE as its public code computes it, for the tests: ``bench/baselines/sage_paper.py`` (one transcription of
``utils_SAGE.sage`` serves the benchmark and the tests; it runs in x's dtype, float64 here), and the map from
the authors' candidate coordinates to the (dy, dx) shifts ``rmix_fast.sage`` takes."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from baselines.sage_paper import blur as torchvision_blur  # noqa: E402
from baselines.sage_paper import paper_sage as published_sage  # noqa: E402

__all__ = ["coord_to_offsets", "published_sage", "torchvision_blur"]


def coord_to_offsets(coord: Tensor, w: int) -> Tensor:
    """(2, K) authors' ``coord`` columns (c0, c1) in [1, 2W - 1] -> (K, 2) int64 shifts: dy = W - c0,
    dx = W - c1 (their theta translates by (W - c1, W - c0) pixels in (x, y))."""
    return torch.stack([w - coord[0], w - coord[1]], dim=1).to(torch.int64)
