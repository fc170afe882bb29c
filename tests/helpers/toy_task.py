"""A 4-class toy task for tests that train: one saturated shape on a muted, noisy background, and a tiny
CNN that learns it in about a hundred steps. Easier and cheaper than ``rmix_fast.training.data``'s ``shapes`` (10
classes, clutter), so a test can see a loss fall within seconds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CLASS_NAMES", "ToyCNN", "make_toy_images"]

CLASS_NAMES = ("square", "disc", "cross", "triangle")


def make_toy_images(n: int, generator: torch.Generator, size: int = 32) -> tuple[Tensor, Tensor]:
    """``n`` synthetic RGB images of one small shape each, on a cluttered, noisy background.

    The class is carried only by the object's shape (0 square, 1 disc, 2 cross, 3 triangle), so a
    classifier's input gradient should concentrate on the object, which fills a few percent of the
    image: exactly the situation saliency-guided mixing is built for.

    * background: a smooth, muted colour field (a bilinearly upsampled 4x4 random grid), pixel noise,
      and a few small grey specks as clutter;
    * object: a saturated random colour, radius 12-19% of ``size``, at a random position fully inside
      the image.

    Args:
        n: number of images.
        generator: the only source of randomness (the same generator state gives the same images).
        size: side length in pixels (>= 16).

    Returns:
        ``images``: (n, 3, size, size) float32 in [0, 1]; ``labels``: (n,) int64 in 0..3.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an int >= 16, got {size!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    g = generator

    # Background: low-contrast colour blobs around mid grey, so the object's colour stands out.
    coarse = 0.5 + 0.15 * (torch.rand(n, 3, 4, 4, generator=g) * 2 - 1)
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = images + 0.06 * torch.randn(n, 3, size, size, generator=g)
    # Clutter: 2x2 grey specks, too small and colourless to pass for an object.
    speck = torch.rand(n, 1, size // 2, size // 2, generator=g) < 0.03
    speck = speck.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    shade = torch.rand(n, 1, 1, 1, generator=g)
    images = torch.where(speck, shade.expand(n, 3, 1, 1), images)

    labels = torch.randint(len(CLASS_NAMES), (n,), generator=g)
    r = size * (0.12 + 0.07 * torch.rand(n, 1, 1, generator=g))
    margin = r + 1
    cx = margin + (size - 1 - 2 * margin) * torch.rand(n, 1, 1, generator=g)
    cy = margin + (size - 1 - 2 * margin) * torch.rand(n, 1, 1, generator=g)
    coords = torch.arange(size, dtype=torch.float32)
    dx = coords.view(1, 1, size) - cx  # (n, 1, size): column offset from the centre
    dy = coords.view(1, size, 1) - cy  # (n, size, 1): row offset from the centre
    adx, ady = dx.abs(), dy.abs()
    shapes = torch.stack(
        [
            (adx <= 0.8 * r) & (ady <= 0.8 * r),  # square (a bit smaller: same area as the disc, roughly)
            dx.square() + dy.square() <= r.square(),  # disc
            ((adx <= 0.3 * r) & (ady <= r)) | ((ady <= 0.3 * r) & (adx <= r)),  # cross
            (dy >= -r) & (dy <= r) & (adx <= (dy + r) / 2),  # triangle, apex up, base 2r wide
        ],
        dim=1,
    )  # (n, 4, size, size)
    obj = shapes[torch.arange(n), labels].unsqueeze(1)  # (n, 1, size, size)

    # Saturated colour: one channel high, one low, one random, in a random order.
    levels = torch.stack(
        [0.85 + 0.15 * torch.rand(n, generator=g), 0.1 * torch.rand(n, generator=g), torch.rand(n, generator=g)], dim=1
    )
    order = torch.argsort(torch.rand(n, 3, generator=g), dim=1)
    color = levels.gather(1, order).view(n, 3, 1, 1)
    images = torch.where(obj, color.expand(n, 3, size, size), images)
    return images.clamp(0.0, 1.0).contiguous(), labels


class ToyCNN(nn.Module):
    """Four 3x3 conv blocks and a global max pool. The max pool makes the decision (and so the input
    gradient) depend on where the object is, not on the background average; batch norm makes 150
    steps enough to learn the shapes from any seed."""

    def __init__(self, classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        widths = (3, 12, 24, 48, 48)
        strides = (1, 2, 2, 1)
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides, strict=True):
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride, bias=False)  # no bias: batch norm adds one
            layers += [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).amax(dim=(2, 3)))
