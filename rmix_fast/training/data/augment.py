"""Image augmentations without torchvision.

* :func:`crop_flip`: the CIFAR recipe (random crop with zero padding, then a random horizontal flip) on a
  whole batch at once, on any device. The random draws are made on the CPU, so one seed gives the same
  augmentation on CPU and GPU.
* :func:`random_resized_crop` / :func:`center_crop_resize`: the ImageNet train / eval recipe on one PIL image
  (used by :class:`rmix_fast.training.data.imagefolder.ImageFolderDataset`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from rmix_fast.sampling import to_device

__all__ = ["center_crop_resize", "crop_flip", "random_resized_crop"]

Size = int | tuple[int, int]


def crop_flip(x: Tensor, *, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Random crop with zero padding, then a random horizontal flip (p = 0.5), per sample, for a whole batch.

    Equivalent to torchvision's ``RandomCrop((H, W), padding=padding)`` followed by ``RandomHorizontalFlip()``
    applied to every sample independently, but vectorised: two gathers for the batch, no Python loop.

    Random draws (in this order, on the CPU, from ``generator`` or the global CPU generator):
    ``torch.randint(0, 2 * padding + 1, (B, 2))`` for the (row, column) offsets into the padded image, then
    ``torch.randint(0, 2, (B,))`` for the flips. The same generator state therefore gives the same
    augmentation on every device.

    Args:
        x: (B, C, H, W) batch, any dtype (uint8 or float), any device, any memory format.
        padding: zero padding on each side before cropping back to (H, W); 0 gives flips only.
        generator: a CPU ``torch.Generator`` (None: the global CPU generator).

    Returns:
        (B, C, H, W) tensor with x's dtype, device and memory format (a new tensor; x is not modified).
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {type(x).__name__} of shape {getattr(x, 'shape', '?')}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    if generator is not None and generator.device.type != "cpu":
        # A CUDA generator would give device-dependent draws, defeating "same seed, same augmentation".
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    B, C, H, W = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (B, 2), generator=generator)
    flips = torch.randint(0, 2, (B,), generator=generator).bool()

    # Source pixel of output (i, j) in the padded image: row i + dy, column (flip ? W - 1 - j : j) + dx
    # (crop first, then flip the crop, as torchvision's RandomCrop -> RandomHorizontalFlip does).
    cols = torch.arange(W).expand(B, W)
    cols = torch.where(flips[:, None], W - 1 - cols, cols) + offsets[:, 1:2]  # (B, W)
    rows = torch.arange(H) + offsets[:, 0:1]  # (B, H)
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    Wp = padded.shape[3]
    # Two gathers (rows, then columns) with broadcast (stride-0) indices: ~2x faster on CPU than one
    # advanced-indexing gather of all three index dims.
    # the indices go over without blocking: the step never waits for the device here
    picked_rows = padded.gather(2, to_device(rows, dev).view(B, 1, H, 1).expand(B, C, H, Wp))
    out = picked_rows.gather(3, to_device(cols, dev).view(B, 1, 1, W).expand(B, C, H, W))
    if out.stride() != x.stride():  # e.g. channels_last input: hand back the caller's layout
        out = torch.empty_like(x).copy_(out)
    return out


def _pair(size: Size, name: str = "size") -> tuple[int, int]:
    """int or (h, w) -> (h, w), both >= 1."""
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    elif isinstance(size, tuple | list) and len(size) == 2 and all(isinstance(s, int) for s in size):
        h, w = size
    else:
        raise ValueError(f"{name} must be an int or an (h, w) pair of ints, got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be >= 1, got {size!r}")
    return h, w


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def random_resized_crop(
    img: Image.Image,
    size: Size,
    generator: torch.Generator | None = None,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """The standard ImageNet training crop (as torchvision's ``RandomResizedCrop``), on a PIL image.

    Picks a region covering a fraction ``U(scale)`` of the image area with aspect ratio (w / h) log-uniform
    in ``ratio``; up to 10 tries for one that fits, else the largest centred region with aspect in
    ``ratio``. The region is resized (bilinear, antialiased) to ``size``.

    Args:
        img: PIL image of any mode and size (W, H).
        size: output side (int) or (h, w).
        generator: CPU ``torch.Generator`` for all draws (None: the global one).
        scale: range of the region's area as a fraction of the image area.
        ratio: range of the region's aspect ratio w / h.

    Returns:
        PIL image of size (w, h) = ``size`` (PIL order), same mode as ``img``.
    """
    out_h, out_w = _pair(size)
    W, H = img.size
    area = W * H
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * _uniform(generator, scale[0], scale[1])
        aspect = math.exp(_uniform(generator, log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= W and 0 < h <= H:
            top = int(torch.randint(0, H - h + 1, (), generator=generator))
            left = int(torch.randint(0, W - w + 1, (), generator=generator))
            break
    else:
        # Fallback: the whole image, trimmed to the nearest allowed aspect ratio, centred.
        in_ratio = W / H
        if in_ratio < min(ratio):
            w, h = W, round(W / min(ratio))
        elif in_ratio > max(ratio):
            w, h = round(H * max(ratio)), H
        else:
            w, h = W, H
        top, left = (H - h) // 2, (W - w) // 2
    return img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def center_crop_resize(img: Image.Image, size: Size, *, crop_fraction: float = 7 / 8) -> Image.Image:
    """The standard ImageNet evaluation transform: resize the shorter side to ``size / crop_fraction``
    (256 for 224), then take the centred ``size`` crop.

    Done as one resample of the matching source region (the same geometry as resize-then-crop, without
    resizing the parts that are cropped away).

    Args:
        img: PIL image of any mode and size (W, H).
        size: output side (int) or (h, w); the resize uses the shorter of the two.
        crop_fraction: output side / resized shorter side.

    Returns:
        PIL image of size (w, h) = ``size`` (PIL order), same mode as ``img``.
    """
    out_h, out_w = _pair(size)
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    W, H = img.size
    resized_short = round(min(out_h, out_w) / crop_fraction)
    s = resized_short / min(W, H)  # resize factor
    # The output window, mapped back to source pixels (continuous coordinates, centred).
    src_w, src_h = min(out_w / s, W), min(out_h / s, H)
    left, top = (W - src_w) / 2, (H - src_h) / 2
    return img.resize((out_w, out_h), Image.Resampling.BILINEAR, box=(left, top, left + src_w, top + src_h))
