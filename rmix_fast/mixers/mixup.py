"""Mixup (Zhang et al. 2018): every pixel ``lam*x + (1-lam)*x[perm]``, lam ~ Beta(alpha, alpha)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rmix_fast.mixers.base import RegionMixer
from rmix_fast.ops import BLEND

__all__ = ["Mixup"]


class Mixup(RegionMixer):
    """Mixup: one ``BLEND`` cell covering the image."""

    def draw_regions(self, lam: Tensor, height: int, width: int, device: torch.device) -> tuple[Tensor, dict[str, Any]]:
        return torch.full((lam.shape[0], 1, 1), BLEND, dtype=torch.int8, device=device), {}
