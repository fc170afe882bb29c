"""Pictures of an R-Mix batch: originals, partners, saliency, which cells were mixed how, and the result.

Pillow only (no matplotlib), so the package keeps its small dependency set.

>>> mixed, lam_eff, mask = rmix_fast.rmix(x, grad, perm=p.perm, lam=p.lam, q=p.q, grid=p.grid, return_mask=True)
>>> save_mix_grid("mix.png", x, p.perm, rmix_fast.saliency_grid(grad, p.grid), mask, mixed, lam_eff)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from rmix_fast.ops._checks import describe
from rmix_fast.ops._region_codes import BLEND, OWN, PARTNER
from rmix_fast.reference import regions_from_mask

__all__ = ["BLENDED", "OWN_KEPT", "PARTNER_KEPT", "REGION_COLORS", "mix_regions", "save_mix_grid"]

# Codes returned by ``mix_regions``.
BLENDED = BLEND  # both samples agree (both top or both not): lam*A + (1-lam)*B
OWN_KEPT = OWN  # only A is top: A is copied
PARTNER_KEPT = PARTNER  # only B is top: B is copied

REGION_COLORS: dict[int, tuple[int, int, int]] = {
    BLENDED: (66, 120, 230),
    OWN_KEPT: (250, 205, 40),
    PARTNER_KEPT: (150, 60, 200),
}

# Anchors of an inferno-like colour map: dark = low saliency, bright = high (reads well in greyscale too).
_HEAT_ANCHORS = torch.tensor(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=torch.float32
)

_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)
_PAD = 8

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


# ----------------------------------------------------------------------------------------------
# validation helpers


def _tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")
    return value


def _float_tensor(name: str, value: object) -> Tensor:
    t = _tensor(name, value)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got dtype {t.dtype}")
    return t


def _int_tensor(name: str, value: object) -> Tensor:
    t = _tensor(name, value)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    return t


def _check_perm(perm: object, batch: int) -> Tensor:
    perm = _int_tensor("perm", perm)
    if perm.shape != (batch,):
        raise ValueError(f"perm must have shape ({batch},) to match the batch, got {tuple(perm.shape)}")
    perm = perm.detach().to("cpu", torch.int64)
    if not torch.equal(perm.sort().values, torch.arange(batch)):
        raise ValueError(f"perm must be a permutation of 0..{batch - 1}, got {perm.tolist()}")
    return perm


def _check_mask(mask: object) -> Tensor:
    mask = _tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.dim() != 3 or mask.shape[1] != mask.shape[2] or mask.shape[1] < 1:
        raise ValueError(f"mask must have shape (B, p, p), got {tuple(mask.shape)}")
    return mask.detach().cpu()


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _channel_stats(name: str, value: object, channels: int, default: float) -> Tensor:
    """mean/std as a (C, 1, 1) float32 tensor; accepts None, a number, a sequence or a tensor of 1 or C values."""
    if value is None:
        return torch.full((channels, 1, 1), default)
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor, got {describe(value)}")
    try:
        t = torch.as_tensor(value, dtype=torch.float32).detach().cpu().flatten()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor, got {describe(value)}") from None
    if t.numel() not in (1, channels):
        raise ValueError(f"{name} must hold 1 or {channels} values (one per channel), got {t.numel()}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t.expand(channels).reshape(channels, 1, 1).clone()


def _check_labels(labels: object, class_names: object, batch: int) -> tuple[list[int] | None, list[str] | None]:
    if labels is None:
        if class_names is not None:
            raise ValueError("class_names was given without labels; pass labels to name the classes")
        return None, None
    if isinstance(labels, Tensor):
        labels_t = _int_tensor("labels", labels)
        if labels_t.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},) to match the batch, got {tuple(labels_t.shape)}")
        label_list = [int(v) for v in labels_t.detach().cpu().tolist()]
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        if len(labels) != batch or any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
            raise ValueError(f"labels must be {batch} ints (one per sample), got {labels!r:.80}")
        label_list = list(labels)
    else:
        raise TypeError(f"labels must be an integer tensor or a sequence of ints, got {describe(labels)}")
    if class_names is None:
        return label_list, None
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(f"class_names must be a sequence of str, got {describe(class_names)}")
    names = [str(n) for n in class_names]
    bad = [v for v in label_list if not 0 <= v < len(names)]
    if bad:
        raise ValueError(f"labels must index class_names (0..{len(names) - 1}), got {bad}")
    return label_list, names


# ----------------------------------------------------------------------------------------------
# tensor -> picture helpers


def _check_saliency_and_mask(saliency: object, mask: object, B: int, H: int, W: int) -> tuple[Tensor, Tensor, int]:
    saliency = _float_tensor("saliency", saliency)
    if saliency.dim() != 3 or saliency.shape[0] != B or saliency.shape[1] != saliency.shape[2]:
        raise ValueError(f"saliency must have shape ({B}, p, p), got {tuple(saliency.shape)}")
    p = saliency.shape[1]
    if p < 1 or H % p or W % p:
        raise ValueError(f"saliency's grid p={p} must divide the image size H={H}, W={W}")
    mask_cpu = _check_mask(mask)
    if mask_cpu.shape != saliency.shape:
        raise ValueError(f"mask must have saliency's shape {tuple(saliency.shape)}, got {tuple(mask_cpu.shape)}")
    return saliency, mask_cpu, p


def mix_regions(mask: Tensor, perm: Tensor) -> Tensor:
    """How each cell of each mixed image was made: (B, p, p) int8 with ``BLENDED`` (0) where the
    sample and its partner agree (both top or both not), ``OWN_KEPT`` (1) where only the sample is
    top, ``PARTNER_KEPT`` (2) where only the partner ``perm[b]`` is top. On ``mask``'s device.
    """
    mask = _tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.dim() != 3:
        raise ValueError(f"mask must have shape (B, p, p), got {tuple(mask.shape)}")
    _check_perm(perm, mask.shape[0])
    return regions_from_mask(mask, perm.to(mask.device, torch.int64))


def _to_rgb_uint8(img: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(C, H, W) float image (normalised or in [0, 1]) -> (H, W, 3) uint8."""
    img = img.detach().to("cpu", torch.float32) * std + mean
    img = torch.nan_to_num(img, nan=0.0).clamp(0.0, 1.0)
    if img.shape[0] == 1:  # greyscale: same value in R, G and B
        img = img.expand(3, -1, -1)
    return (img * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def _heat(values: Tensor) -> Tensor:
    """(p, p) values in [0, 1] -> (p, p, 3) uint8 by piecewise-linear interpolation of the colour map."""
    pos = values.clamp(0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    lo = pos.floor().long().clamp(max=len(_HEAT_ANCHORS) - 2)
    frac = (pos - lo).unsqueeze(-1)
    rgb = _HEAT_ANCHORS[lo] * (1 - frac) + _HEAT_ANCHORS[lo + 1] * frac
    return rgb.round().to(torch.uint8)


def _picture(rgb: Tensor, size: tuple[int, int]) -> Image.Image:
    """(h, w, 3) uint8 -> PIL image resized (nearest: keeps pixels and cells crisp) to ``size`` = (W, H)."""
    return Image.fromarray(rgb.numpy()).resize(size, Image.Resampling.NEAREST)


def _cell_box(i: int, j: int, p: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of cell (row i, column j) in an image of ``size`` = (W, H)."""
    w, h = size
    return (j * w // p, i * h // p, (j + 1) * w // p - 1, (i + 1) * h // p - 1)


def _draw_cell_lines(image: Image.Image, p: int, color: tuple[int, int, int]) -> None:
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for k in range(1, p):
        draw.line([(k * w // p, 0), (k * w // p, h - 1)], fill=color)
        draw.line([(0, k * h // p), (w - 1, k * h // p)], fill=color)


def _load_font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # no FreeType, or Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(font: Font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return math.ceil(right - left)


def _wrap_terms(text: str, font: Font, width: int) -> list[str]:
    """Split "a + b" over two lines when it is wider than ``width`` (captions stay inside their column)."""
    if _text_width(font, text) <= width or " + " not in text:
        return [text]
    head, tail = text.split(" + ", 1)
    return [head + " +", tail]


# ----------------------------------------------------------------------------------------------
# the picture


@dataclass
class _Row:
    title: list[str]
    images: list[Image.Image]
    captions: list[list[str]]


def save_mix_grid(
    path: str | os.PathLike[str],
    x: Tensor,
    perm: Tensor,
    saliency: Tensor | None,
    mask: Tensor | None,
    mixed: Tensor,
    lam_eff: Tensor,
    *,
    labels: Tensor | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | Tensor | float | None = None,
    std: Sequence[float] | Tensor | float | None = None,
    scale: int = 4,
    max_samples: int = 8,
    title: str | None = None,
) -> Path:
    """Write one PNG that explains an R-Mix batch, one column per sample (the first ``max_samples``).

    Rows: the sample A = ``x[b]``; its partner B = ``x[perm[b]]``; A's cell saliency as a heat map
    (its "top" cells boxed); the mix regions (blue: blended, yellow: A kept, purple: B kept, see
    ``mix_regions``); the mixed image, captioned ``lam_eff·A + (1-lam_eff)·B`` (with class names
    when ``labels`` are given). A legend sits at the bottom. Without ``saliency`` and ``mask`` (Mixup,
    CutMix, or no mixing) the picture has the sample, partner and mixed rows only.

    Args:
        path: where to write the PNG (parent folders are created).
        x: (B, C, H, W) float images, C = 1 or 3, in [0, 1] or normalised (see ``mean``/``std``).
        perm: (B,) integer permutation: sample b was mixed with ``perm[b]``.
        saliency: (B, p, p) float cell saliency, e.g. ``rmix_fast.saliency_grid(grad, p)``, or None.
        mask: (B, p, p) bool "top" mask returned by ``rmix(..., return_mask=True)``; None with ``saliency``.
        mixed: the mixed images, x's shape.
        lam_eff: (B,) weight of each sample's own label, as returned by ``rmix``.
        labels: optional (B,) class indices; with ``class_names`` the captions name the classes.
        class_names: optional names indexed by ``labels``.
        mean, std: per-channel normalisation to undo (``img * std + mean``) before display.
        scale: integer nearest-neighbour upscaling, so 32x32 images are legible.
        max_samples: at most this many columns.
        title: the heading (default: "R-Mix on a pxp grid (n samples)", or "Mixed samples (n)").

    Returns:
        The path written, as a ``pathlib.Path``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {describe(path)}")
    x = _float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    if B == 0 or H == 0 or W == 0:
        raise ValueError(f"x must hold at least one non-empty image, got shape {tuple(x.shape)}")
    if C not in (1, 3):
        raise ValueError(f"x must have 1 or 3 channels, got C={C}")
    mixed = _float_tensor("mixed", mixed)
    if mixed.shape != x.shape:
        raise ValueError(f"mixed must have x's shape {tuple(x.shape)}, got {tuple(mixed.shape)}")
    perm_cpu = _check_perm(perm, B)
    if (saliency is None) != (mask is None):
        raise ValueError("saliency and mask must be given together (R-Mix) or both be None")
    with_mask = saliency is not None
    if with_mask:
        saliency, mask_cpu, p = _check_saliency_and_mask(saliency, mask, B, H, W)
    lam_eff = _float_tensor("lam_eff", lam_eff)
    if lam_eff.shape != (B,):
        raise ValueError(f"lam_eff must have shape ({B},) to match the batch, got {tuple(lam_eff.shape)}")
    label_list, names = _check_labels(labels, class_names, B)
    mean_t = _channel_stats("mean", mean, C, 0.0)
    std_t = _channel_stats("std", std, C, 1.0)
    scale = _check_positive_int("scale", scale)
    max_samples = _check_positive_int("max_samples", max_samples)

    n = min(B, max_samples)
    size = (W * scale, H * scale)
    font = _load_font(12)
    line_h = font.getbbox("Ag")[3] + 3
    x_cpu = x.detach().cpu()
    mixed_cpu = mixed.detach().cpu()
    if with_mask:
        sal = torch.nan_to_num(saliency.detach().to("cpu", torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
        sal = sal.clamp_min(0)
        regions = mix_regions(mask_cpu, perm_cpu)
    palette = torch.tensor([REGION_COLORS[k] for k in (BLENDED, OWN_KEPT, PARTNER_KEPT)], dtype=torch.uint8)
    lam_list = [float(v) for v in lam_eff.detach().to("cpu", torch.float64).tolist()]

    def who(letter: str, idx: int) -> str:
        name = f" {names[label_list[idx]]}" if names is not None and label_list is not None else ""
        label = f" (class {label_list[idx]})" if names is None and label_list is not None else ""
        return f"{letter} = #{idx}{name}{label}"

    sample_row, partner_row, mixed_row = (
        _Row(["A: sample"], [], []),
        _Row(["B: partner"], [], []),
        _Row(["mixed"], [], []),
    )
    saliency_row, region_row = _Row(["saliency of A", "(top cells boxed)"], [], []), _Row(["mix regions"], [], [])
    rows = [sample_row, partner_row, *([saliency_row, region_row] if with_mask else []), mixed_row]
    for b in range(n):
        partner = int(perm_cpu[b])
        sample_row.images.append(_picture(_to_rgb_uint8(x_cpu[b], mean_t, std_t), size))
        sample_row.captions.append(_wrap_terms(who("A", b), font, size[0]))
        partner_row.images.append(_picture(_to_rgb_uint8(x_cpu[partner], mean_t, std_t), size))
        itself = " (itself)" if partner == b else ""
        partner_row.captions.append(_wrap_terms(who("B", partner) + itself, font, size[0]))

        if with_mask:
            # Scale by the sample's own maximum: the picture shows where saliency is, not its magnitude.
            peak = float(sal[b].max())
            heat = _picture(_heat(sal[b] / peak if peak > 0 else torch.zeros_like(sal[b])), size)
            _draw_cell_lines(heat, p, (110, 110, 110))
            draw = ImageDraw.Draw(heat)
            for i, j in mask_cpu[b].nonzero().tolist():
                draw.rectangle(_cell_box(i, j, p, size), outline=(0, 230, 255), width=max(1, scale // 2))
            saliency_row.images.append(heat)
            saliency_row.captions.append([f"{int(mask_cpu[b].sum())} of {p * p} cells top"])

            region_img = _picture(palette[regions[b].long()], size)
            _draw_cell_lines(region_img, p, (255, 255, 255))
            region_row.images.append(region_img)
            counts = [int((regions[b] == k).sum()) for k in (BLENDED, OWN_KEPT, PARTNER_KEPT)]
            region_row.captions.append([f"mix {counts[0]} | A {counts[1]} | B {counts[2]}"])

        mixed_row.images.append(_picture(_to_rgb_uint8(mixed_cpu[b], mean_t, std_t), size))
        lam_b = lam_list[b]
        caption = [f"{lam_b:.2f}·A + {1 - lam_b:.2f}·B"]
        if names is not None and label_list is not None:
            caption += _wrap_terms(
                f"{lam_b:.2f}·{names[label_list[b]]} + {1 - lam_b:.2f}·{names[label_list[partner]]}", font, size[0]
            )
        mixed_row.captions.append(caption)

    # Layout: a title line, then each row (image plus its caption strip), then the legend.
    title_w = max(_text_width(font, line) for row in rows for line in row.title)
    left = _PAD + title_w + _PAD
    col_w = size[0] + _PAD
    shown = f"first {n} of {B}" if n < B else f"{n}"
    default_heading = f"R-Mix on a {p}x{p} grid ({shown} samples)" if with_mask else f"Mixed samples ({shown})"
    heading = title if title is not None else default_heading
    legend = _legend_items(font) if with_mask else []
    # Wide enough for the columns, and for the heading and each legend entry when there are few columns.
    canvas_w = max(left + n * col_w, 2 * _PAD + max([_text_width(font, heading), *(it.width for it in legend)]))
    legend_rows = _flow(legend, canvas_w - 2 * _PAD)
    heights = [size[1] + 2 + max(len(c) for c in row.captions) * line_h + _PAD for row in rows]
    top = _PAD + line_h + _PAD
    canvas_h = top + sum(heights) + len(legend_rows) * (line_h + 6) + _PAD
    canvas = Image.new("RGB", (canvas_w, canvas_h), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    draw.text((_PAD, _PAD), heading, fill=_INK, font=font)
    y = top
    for row, height in zip(rows, heights, strict=True):
        block_h = len(row.title) * line_h
        for k, line in enumerate(row.title):
            draw.text((_PAD, y + (size[1] - block_h) // 2 + k * line_h), line, fill=_INK, font=font)
        for b in range(n):
            x0 = left + b * col_w
            canvas.paste(row.images[b], (x0, y))
            for k, line in enumerate(row.captions[b]):
                tx = x0 + max(0, (size[0] - _text_width(font, line)) // 2)
                draw.text((tx, y + size[1] + 2 + k * line_h), line, fill=_INK, font=font)
        y += height

    for items in legend_rows:
        x0 = _PAD
        for item in items:
            item.draw(draw, font, x0, y, line_h)
            x0 += item.width + 2 * _PAD
        y += line_h + 6

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out


@dataclass
class _LegendItem:
    """A swatch (flat colour, or the heat gradient when ``color`` is None) followed by a label."""

    color: tuple[int, int, int] | None
    label: str
    width: int

    def draw(self, draw: ImageDraw.ImageDraw, font: Font, x0: int, y0: int, line_h: int) -> None:
        swatch_w = 36 if self.color is None else line_h
        if self.color is None:
            ramp = _heat(torch.linspace(0, 1, swatch_w))
            for k in range(swatch_w):
                draw.line([(x0 + k, y0), (x0 + k, y0 + line_h - 2)], fill=tuple(ramp[k].tolist()))
        else:
            draw.rectangle((x0, y0, x0 + swatch_w - 1, y0 + line_h - 2), fill=self.color, outline=_INK)
        draw.text((x0 + swatch_w + 4, y0), self.label, fill=_INK, font=font)


def _legend_items(font: Font) -> list[_LegendItem]:
    line_h = font.getbbox("Ag")[3] + 3
    specs: list[tuple[tuple[int, int, int] | None, str]] = [
        (REGION_COLORS[BLENDED], "blended: lam·A + (1-lam)·B (A, B agree)"),
        (REGION_COLORS[OWN_KEPT], "A kept (only A top)"),
        (REGION_COLORS[PARTNER_KEPT], "B kept (only B top)"),
        (None, "saliency: low to high"),
    ]
    return [
        _LegendItem(color, label, (36 if color is None else line_h) + 4 + _text_width(font, label))
        for color, label in specs
    ]


def _flow(items: list[_LegendItem], width: int) -> list[list[_LegendItem]]:
    """Greedy line breaking: legend items left to right, a new line when the next would overflow."""
    lines: list[list[_LegendItem]] = [[]]
    used = 0
    for item in items:
        if lines[-1] and used + item.width > width:
            lines.append([])
            used = 0
        lines[-1].append(item)
        used += item.width + 2 * _PAD
    return lines
