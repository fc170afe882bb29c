"""CutMix (Yun et al. 2019): a box of the partner pasted over each image."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rmix_fast.mixers.base import RegionMixer
from rmix_fast.ops import OWN, PARTNER
from rmix_fast.sampling import to_device

__all__ = ["CutMix"]


class CutMix(RegionMixer):
    """CutMix: a box of area ~(1 - lam) of the image, centred uniformly at random and clipped to the image
    (timm's box sampling), is taken from the partner. lam is corrected to the pasted area: ``lam_eff`` is
    the exact fraction of own pixels. One box per batch, or one per sample with ``per_sample_lam``."""

    def draw_regions(self, lam: Tensor, height: int, width: int, device: torch.device) -> tuple[Tensor, dict[str, Any]]:
        B, H, W = lam.shape[0], height, width
        n_boxes = B if self.per_sample_lam else 1
        cut = torch.sqrt(1.0 - lam[:n_boxes].double())
        cut_h, cut_w = (H * cut).long(), (W * cut).long()
        cy = torch.randint(H, (n_boxes,), generator=self.generator)
        cx = torch.randint(W, (n_boxes,), generator=self.generator)
        y0, y1 = (cy - cut_h // 2).clamp(0, H), (cy + cut_h // 2).clamp(0, H)
        x0, x1 = (cx - cut_w // 2).clamp(0, W), (cx + cut_w // 2).clamp(0, W)
        edges = torch.stack([y0, y1, x0, x1], dim=1)  # (n_boxes, 4)
        box = edges.expand(B, 4)
        # The coarsest code map whose cell edges include every box edge: fewer bytes than one code per pixel.
        # The boxes are drawn on the CPU, so reading their edges costs no device sync.
        step_h = math.gcd(H, *y0.tolist(), *y1.tolist())
        step_w = math.gcd(W, *x0.tolist(), *x1.tolist())
        rows = torch.arange(0, H, step_h).view(1, -1, 1)
        cols = torch.arange(0, W, step_w).view(1, 1, -1)
        inside = (rows >= box[:, 0, None, None]) & (rows < box[:, 1, None, None])
        inside = inside & (cols >= box[:, 2, None, None]) & (cols < box[:, 3, None, None])
        regions = torch.where(inside, PARTNER, OWN).to(torch.int8)
        # only the boxes drawn travel; the device broadcasts them to the batch
        return to_device(regions, device), {"box": to_device(edges, device).expand(B, 4)}
