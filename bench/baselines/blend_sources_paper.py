"""The baseline of ``bench_blend_sources.py``: AdAutoMix's multi-source mix as the published code writes it
(Qin et al., ICLR 2024), separate PyTorch ops with every intermediate materialised:

* the (B, N, h, w) logits upsampled with ``F.interpolate`` (bilinear, ``align_corners=False``) to full
  resolution: a (B, N, H, W) tensor;
* a softmax over the N sources: a second (B, N, H, W) tensor, the masks;
* ``sum_i mask[:, i:i+1] * x[index[i]]``: per source a gathered copy of the batch, a (B, C, H, W) product,
  then the running sum.

It computes in x's dtype throughout (the published code's way: no float32 accumulation for bf16 inputs), so
it equals ``rmix_fast.reference.blend_sources_forward`` exactly only in float32 / float64.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["paper_blend_sources"]


def paper_blend_sources(x: Tensor, index: Tensor, logits: Tensor, scale: int) -> Tensor:
    """(B, C, H, W) images, (N, B) source rows, (B, N, h, w) logits -> the (B, C, H, W) mix."""
    up = F.interpolate(logits.to(x.dtype), scale_factor=scale, mode="bilinear", align_corners=False)
    masks = up.softmax(dim=1)
    mixed = masks[:, 0:1] * x[index[0]]
    for i in range(1, index.shape[0]):  # the sources summed in order, as the reference does
        mixed = mixed + masks[:, i : i + 1] * x[index[i]]
    return mixed
