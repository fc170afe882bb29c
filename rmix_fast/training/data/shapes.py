"""``shapes``: the embedded synthetic dataset, generated from a seed (no files, no network).

Each RGB image holds one small object whose *shape* is the class (10 shapes), at a random position, size,
aspect ratio and orientation (the 8 flips / quarter turns), in a random colour (chosen to contrast with
what it covers, never by class), over a cluttered background: a smooth colour field, soft colour blobs,
thin lines, specks, pixel noise and "decoy" bars in object-like colours and stroke widths (a bar is a part
of several classes but no class by itself). None of the clutter depends on the label.

The object's tight bounding box covers roughly 8-14 % of the image and nothing outside it depends on the
object, so cutting the object away removes the label. That is what makes saliency matter: a mixing method
that pastes a background patch over the object teaches a wrong label. Linear models on raw pixels stay at
chance (~10 %); a small CNN needs localised shape features.

Generation is vectorised over images (Python loops only over the few clutter items per image) and done in
fixed-size chunks, each from its own generator seeded by ``(seed, image_size, chunk index)``: the result
depends only on ``seed`` and ``image_size``, and ``make_shapes(n, seed=s)`` is a prefix of
``make_shapes(m, seed=s)`` for ``n <= m``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from rmix_fast.training.data.base import InMemoryVisionDataset
from rmix_fast.training.seeding import mix_seed

__all__ = ["SHAPES_MEAN", "SHAPES_STD", "SHAPE_CLASSES", "make_shapes", "shapes_dataset"]

SHAPE_CLASSES = ("disc", "ring", "frame", "plus", "x_cross", "triangle", "diamond", "bars", "l_shape", "t_shape")

# Per-channel statistics of the generator's output on the [0, 1] scale (measured on 50000 32x32 images,
# seed 0; the seed does not change them, the image size by ~0.002).
SHAPES_MEAN = (0.4963, 0.4967, 0.4961)
SHAPES_STD = (0.1410, 0.1411, 0.1412)

DEFAULT_SIZES = {"train": 5000, "test": 1000}

_CHUNK_PIXELS = 512 * 32 * 32  # pixels per chunk (512 images at 32x32): bounds the temporaries' memory
_BOX_AREA = (0.085, 0.14)  # nominal box area / image area; the pixel box: mean 11 %, 96 % within 8-14 %
_ASPECT = 1.2  # box aspect ratio (w / h) log-uniform in [1 / _ASPECT, _ASPECT]
_N_BLOBS, _N_LINES = 3, 5  # clutter items per image (each with a random opacity, so some nearly vanish)
_N_OVER = 1  # of the lines, the last _N_OVER are drawn over the object (thin occluders)
_N_DECOYS, _DECOY_P = 3, 0.5  # decoy bars per image, each present with probability _DECOY_P


def _shape_mask(k: int, u: Tensor, v: Tensor) -> Tensor:
    """Mask of class ``SHAPE_CLASSES[k]`` at normalised object coordinates.

    Args:
        k: class index.
        u, v: (m, S, S) horizontal / vertical offsets from the object's centre, scaled so the object's box
            is [-1, 1]^2 (v grows downwards).

    Returns:
        (m, S, S) bool. Fills of the box range from 0.5 (triangle, diamond) to 0.79 (disc), so object areas
        are comparable.
    """
    au, av = u.abs(), v.abs()
    inside = (au <= 1) & (av <= 1)
    name = SHAPE_CLASSES[k]
    if name == "disc":
        return u.square() + v.square() <= 1
    if name == "ring":  # hole diameter: half the width
        r2 = u.square() + v.square()
        return (r2 <= 1) & (r2 >= 0.25)
    if name == "frame":  # hollow square
        return inside & (torch.maximum(au, av) >= 0.5)
    if name == "plus":
        return inside & ((au <= 0.33) | (av <= 0.33))
    if name == "x_cross":  # the plus turned by 45 degrees
        return inside & (((u - v).abs() <= 0.4) | ((u + v).abs() <= 0.4))
    if name == "triangle":  # apex at v = -1, base along v = 1
        return (av <= 1) & (au <= (v + 1) / 2)
    if name == "diamond":
        return au + av <= 1
    if name == "bars":  # two parallel bars with a gap
        return inside & (av >= 0.3)
    if name == "l_shape":
        return inside & ((u <= -0.3) | (v >= 0.3))
    if name == "t_shape":
        return inside & ((v <= -0.3) | (au <= 0.35))
    raise AssertionError(name)


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """(m,) hue in [0, 1), saturation, value -> (m, 3) RGB in [0, 1]."""
    n = torch.tensor([5.0, 3.0, 1.0])
    k = (n + h[:, None] * 6) % 6
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _contrasting_colours(rand, uniform, background: Tensor, candidates: int = 2) -> Tensor:
    """Object / decoy colours: of ``candidates`` random fairly saturated, bright colours (any hue), the one
    farthest (RGB distance) from ``background`` (k, 3), the mean colour of the pixels to be painted.

    Keeps objects visible (a random colour close to the local background would make the label unreadable)
    without tying colour to the class. Returns (k, 3) in [0, 1].
    """
    k = background.shape[0]
    n = k * candidates
    colours = _hsv_to_rgb(rand(n), uniform(0.5, 1.0, n), uniform(0.45, 1.0, n)).view(k, candidates, 3)
    best = (colours - background[:, None]).square().sum(2).argmax(1)
    return colours[torch.arange(k), best]


def _linear_upsample_matrix(k: int, S: int) -> Tensor:
    """(S, k) matrix R with R @ a = 1-d linear upsampling of a (k,) grid to S samples (align_corners=False)."""
    return F.interpolate(torch.eye(k).unsqueeze(0), size=S, mode="linear", align_corners=False)[0].T.contiguous()


def _put_specks(img: Tensor, n_specks: int, side: int, g: torch.Generator) -> None:
    """Paint up to ``n_specks`` squares of ``side`` pixels in random colours into img (m, 3, S, S), in place.

    Each speck is kept with probability 1/2, so the count varies per image. Sparse (scatter over a few
    pixels per image) rather than a dense random field: the dense version drew 4 random numbers per pixel.
    """
    m, _, S, _ = img.shape
    top = torch.randint(0, S - side + 1, (m, n_specks), generator=g)
    left = torch.randint(0, S - side + 1, (m, n_specks), generator=g)
    keep = torch.rand(m, 1, n_specks, generator=g) < 0.5
    colour = torch.rand(m, 3, n_specks, generator=g)
    flat = img.view(m, 3, S * S)
    for dy in range(side):
        for dx in range(side):
            idx = ((top + dy) * S + left + dx).unsqueeze(1).expand(m, 3, n_specks)
            flat.scatter_(2, idx, torch.where(keep, colour, flat.gather(2, idx)))


def _render_chunk(m: int, S: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """m images of side S from generator g -> (uint8 (m, 3, S, S), int64 (m,) labels, int64 (m, 4) boxes,
    bool (m, S, S) object masks)."""

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=g)

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * rand(*shape)

    ys = torch.arange(S, dtype=torch.float32).view(S, 1)  # pixel centres at integers
    xs = torch.arange(S, dtype=torch.float32).view(1, S)

    # 1. Smooth background: a muted per-image colour varied by a 4x4 random grid, bilinearly upsampled
    # (as two small matrix products: much faster than F.interpolate on many tiny images).
    coarse = uniform(0.3, 0.7, m, 3, 1, 1) + uniform(-0.18, 0.18, m, 3, 4, 4)
    up = _linear_upsample_matrix(4, S)
    img = (up @ coarse @ up.T).contiguous()  # (m, 3, S, S)

    # 2. Soft blobs of random colour: blurry edges, so they are distractors, not shapes. A Gaussian is
    # separable, so only the final product is full-size.
    by, bx = rand(m, _N_BLOBS, 1, 1) * S, rand(m, _N_BLOBS, 1, 1) * S
    inv = -0.5 / (S * uniform(0.05, 0.14, m, _N_BLOBS, 1, 1)).square()
    alpha = uniform(0.0, 0.75, m, _N_BLOBS, 1, 1)
    colour = rand(m, _N_BLOBS, 3, 1, 1)
    weight = (alpha * torch.exp(inv * (ys - by).square())) * torch.exp(inv * (xs - bx).square())  # (m, nb, S, S)
    for j in range(_N_BLOBS):
        img.lerp_(colour[:, j], weight[:, j : j + 1])

    # 3. Thin anti-aliased line segments of random colour, much thinner than any object's strokes (the last
    # _N_OVER are drawn after the object, in step 7).
    ly, lx = rand(m, _N_LINES, 1, 1) * S, rand(m, _N_LINES, 1, 1) * S
    theta = rand(m, _N_LINES, 1, 1) * math.pi
    dy, dx = torch.sin(theta), torch.cos(theta)
    length = S * uniform(0.25, 0.85, m, _N_LINES, 1, 1)
    half_width = uniform(0.3, 0.65, m, _N_LINES, 1, 1) + 0.5
    alpha = uniform(0.3, 1.0, m, _N_LINES, 1, 1)
    colour = rand(m, _N_LINES, 3, 1, 1)
    along = (ys - ly) * dy + (xs - lx) * dx  # (m, nl, S, S): coordinate along the segment's direction
    across = (xs - lx) * dy - (ys - ly) * dx  # signed distance from the segment's line
    beyond = along - along.clamp(min=0).clamp_(max=length)  # how far past either end
    dist = across.square_().add_(beyond.square_()).sqrt_()
    weight = dist.neg_().add_(half_width).clamp_(0, 1).mul_(alpha)  # ~coverage of a pixel by the stroke
    for j in range(_N_LINES - _N_OVER):
        img.lerp_(colour[:, j], weight[:, j : j + 1])

    # 4. Specks: single pixels and 2x2 squares of random colours.
    _put_specks(img, 2 * round(0.015 * S * S), 1, g)
    _put_specks(img, 2 * round(0.003 * S * S), 2, g)

    # 5. Decoys: solid bars in object colours, as thick as the objects' strokes. A single bar is no class,
    # but it is a part of several (plus, l_shape, t_shape, bars), so only the whole shape identifies the
    # class and colour does not tell the object from clutter.
    half_len = S * uniform(0.07, 0.15, m, _N_DECOYS, 1, 1)
    half_thick = S * uniform(0.04, 0.055, m, _N_DECOYS, 1, 1)
    vertical = rand(m, _N_DECOYS, 1, 1) < 0.5
    half_h, half_w = torch.where(vertical, half_len, half_thick), torch.where(vertical, half_thick, half_len)
    dcy, dcx = rand(m, _N_DECOYS, 1, 1) * S, rand(m, _N_DECOYS, 1, 1) * S
    decoy = ((ys - dcy).abs() <= half_h) & ((xs - dcx).abs() <= half_w)  # (m, nd, S, S)
    decoy &= rand(m, _N_DECOYS, 1, 1) < _DECOY_P
    under = torch.einsum("mchw,mdhw->mdc", img, decoy.float()) / decoy.sum((2, 3)).clamp(min=1)[..., None]
    rgb = _contrasting_colours(rand, uniform, under.view(-1, 3)).view(m, _N_DECOYS, 3, 1, 1)
    opacity = uniform(0.7, 1.0, m, _N_DECOYS, 1, 1, 1)
    for j in range(_N_DECOYS):
        img = torch.where(decoy[:, j : j + 1], torch.lerp(img, rgb[:, j], opacity[:, j]), img)

    # 6. The object. Labels: a shuffled near-equal split of the chunk (random phase), so classes stay balanced.
    n_cls = len(SHAPE_CLASSES)
    labels = ((torch.arange(m) + torch.randint(n_cls, (), generator=g)) % n_cls)[torch.randperm(m, generator=g)]
    area = uniform(*_BOX_AREA, m) * S * S
    aspect = torch.exp(uniform(-math.log(_ASPECT), math.log(_ASPECT), m))
    hy = (area / aspect).sqrt() / 2  # half extents of the box, pixels
    hx = (area * aspect).sqrt() / 2
    cy = hy + rand(m) * (S - 1 - 2 * hy)  # every object pixel centre lies in [0, S - 1]
    cx = hx + rand(m) * (S - 1 - 2 * hx)
    # Random flips / quarter turns (about the box centre), so orientation is not a cue.
    u = (xs - cx.view(m, 1, 1)) / hx.view(m, 1, 1) * torch.where(rand(m) < 0.5, -1.0, 1.0).view(m, 1, 1)  # (m, 1, S)
    v = (ys - cy.view(m, 1, 1)) / hy.view(m, 1, 1) * torch.where(rand(m) < 0.5, -1.0, 1.0).view(m, 1, 1)  # (m, S, 1)
    swap = (rand(m) < 0.5).view(m, 1, 1)
    u, v = torch.where(swap, v, u), torch.where(swap, u, v)  # (m, S, S) each
    obj = torch.empty(m, S, S, dtype=torch.bool)
    for k in range(n_cls):  # each image's mask is computed for its own class only
        sel = (labels == k).nonzero().squeeze(1)
        obj[sel] = _shape_mask(k, u[sel], v[sel])
    # Colour: independent of the label, contrasting with what it covers.
    under = torch.einsum("mchw,mhw->mc", img, obj.float()) / obj.sum((1, 2)).clamp(min=1)[:, None]
    rgb = _contrasting_colours(rand, uniform, under).view(m, 3, 1, 1)
    opacity = uniform(0.7, 1.0, m).view(m, 1, 1, 1)
    img = torch.where(obj.unsqueeze(1), torch.lerp(img, rgb, opacity), img)

    # 7. Thin lines over the object: occluders that break its outline a little, never enough to hide it.
    for j in range(_N_LINES - _N_OVER, _N_LINES):
        img.lerp_(colour[:, j], weight[:, j : j + 1])

    # 8. Per-image contrast (about mid grey, not the image mean, which the object would shift) and brightness,
    # then luminance noise, all in place.
    contrast = uniform(0.55, 1.0, m, 1, 1, 1)
    img.sub_(0.5).mul_(contrast).add_(0.5 + uniform(-0.08, 0.08, m, 1, 1, 1))
    img.addcmul_(uniform(0.02, 0.07, m, 1, 1, 1), torch.randn(m, 1, S, S, generator=g))
    images = img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    # Tight box of the mask, half-open: first / one-past-last occupied row and column.
    def extent(occupied: Tensor) -> tuple[Tensor, Tensor]:  # (m, S) bool -> first, one past last
        first = occupied.to(torch.uint8).argmax(dim=1)
        return first, S - occupied.flip(1).to(torch.uint8).argmax(dim=1)

    (y0, y1), (x0, x1) = extent(obj.any(dim=2)), extent(obj.any(dim=1))
    boxes = torch.stack([y0, y1, x0, x1], dim=1).to(torch.int64)
    return images, labels, boxes, obj


@overload
def make_shapes(
    n: int, *, seed: int, image_size: int = 32, return_masks: Literal[False] = False
) -> tuple[Tensor, Tensor, Tensor]: ...


@overload
def make_shapes(
    n: int, *, seed: int, image_size: int = 32, return_masks: Literal[True]
) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...


def make_shapes(
    n: int, *, seed: int, image_size: int = 32, return_masks: bool = False
) -> tuple[Tensor, Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """Generate ``n`` shapes images deterministically from ``seed``.

    Args:
        n: number of images (>= 0).
        seed: any int; the same (seed, image_size) gives the same images on any machine (up to rare 1-level
            rounding differences between CPU math libraries).
        image_size: side S in pixels (>= 16).
        return_masks: also return each image's object mask. The images, labels and boxes are the same
            either way (the mask is drawn for every image regardless; this only keeps it).

    Returns:
        ``images`` (n, 3, S, S) uint8; ``labels`` (n,) int64 in 0..9 (``SHAPE_CLASSES``); ``boxes`` (n, 4)
        int64 rows ``[y0, y1, x0, x1)``: the tight half-open box of the object's pixels; with
        ``return_masks`` also ``masks`` (n, S, S) bool: the pixels painted with the object (the box is the
        mask's tight box). The thin lines drawn over the object afterwards (occluders a pixel or two wide)
        are not taken out of the mask: they hide too little of the shape to change its class.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
    S = image_size
    images = torch.empty(n, 3, S, S, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    boxes = torch.empty(n, 4, dtype=torch.int64)
    masks = torch.empty(n if return_masks else 0, S, S, dtype=torch.bool)
    outputs = (images, labels, boxes, masks) if return_masks else (images, labels, boxes)
    chunk_size = max(8, _CHUNK_PIXELS // (S * S))  # a function of S only, never of n
    with _one_thread():
        for k, start in enumerate(range(0, n, chunk_size)):
            # A whole chunk is always rendered (and the tail dropped) so its content does not depend on n.
            g = torch.Generator().manual_seed(mix_seed(seed, S, k))
            chunk = _render_chunk(chunk_size, S, g)
            stop = min(start + chunk_size, n)
            for dst, src in zip(outputs, chunk[: len(outputs)], strict=True):
                dst[start:stop] = src[: stop - start]
    return outputs


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block, then restore the thread count.

    Rendering is ~150 mid-sized elementwise ops per chunk; each multi-threaded op ends in a barrier, and on a
    machine whose cores are busy with other work a descheduled worker stalls every barrier (measured on 2
    shared cores: 2 threads 2-5x slower than 1). One thread gives a steady ~0.25 ms per 32x32 image.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def shapes_dataset(
    split: str, *, size: int | None = None, image_size: int = 32, seed: int = 0, with_masks: bool = False
) -> InMemoryVisionDataset:
    """One split of ``shapes``: ``size`` images (default 5000 train / 1000 test) of side ``image_size``;
    with ``with_masks`` the dataset's ``masks`` holds each image's (S, S) bool object mask (else None).

    Train and test come from disjoint seed streams (``2 * seed`` and ``2 * seed + 1``), so they never share
    images, and every (seed, split) pair has its own stream.
    """
    if split not in DEFAULT_SIZES:
        raise ValueError(f"split must be one of {tuple(DEFAULT_SIZES)}, got {split!r}")
    n = DEFAULT_SIZES[split] if size is None else size
    generated = make_shapes(n, seed=2 * seed + (split == "test"), image_size=image_size, return_masks=with_masks)
    images, labels, boxes = generated[:3]
    return InMemoryVisionDataset(
        images,
        labels,
        name="shapes",
        split=split,
        classes=list(SHAPE_CLASSES),
        mean=SHAPES_MEAN,
        std=SHAPES_STD,
        boxes=boxes,
        masks=generated[3] if with_masks else None,
        train_augment="crop_flip",
    )
