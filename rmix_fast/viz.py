"""Pictures of a mixed batch, for any method: the samples, their partners, the method's saliency when it
has one, which cells were mixed how (the blend engine's region codes ``BLEND``, ``OWN``, ``PARTNER``), and
the result.

Pillow only (no matplotlib), so the package keeps its small dependency set.

R-Mix: its regions come from its top mask, its saliency is the cell saliency it thresholded.

>>> p = rmix_fast.sample_rmix_params(x.shape[0], grids=(4,))
>>> mixed, lam_eff, mask = rmix_fast.rmix(x, grad, perm=p.perm, lam=p.lam, q=p.q, grid=p.grid, return_mask=True)
>>> save_mix_grid(
...     "rmix.png", x, p.perm, mixed, lam_eff,
...     regions=rmix_fast.regions_from_mask(mask, p.perm), saliency=rmix_fast.saliency_grid(grad, p.grid), top=mask,
... )

CutMix (or Mixup, or any mixer that draws a code map): the map it drew.

>>> cutmix = rmix_fast.CutMix(num_classes=10)
>>> mixed, targets = cutmix(x, y)
>>> p = cutmix.last_params
>>> save_mix_grid("cutmix.png", x, p.perm, mixed, p.lam_eff, regions=p.regions, labels=y)

From any mixer after a mixed batch (``p = mixer.last_params``, ``p.applied``): ``regions=p.region_map()``,
``saliency=mixer.saliency_map(grad, p)`` and ``top=p.mask`` (None where the method has none).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from rmix_fast.ops import BLEND, OWN, PARTNER
from rmix_fast.ops._checks import (
    check_cell_map,
    check_float_tensor,
    check_image,
    check_perm,
    check_positive_int,
    check_regions,
    check_same_device,
    describe,
    is_integer_tensor,
    permutation_checks,
    region_code_check,
    run_content_checks,
    unit_interval_check,
)

__all__ = ["REGION_COLORS", "save_mix_grid"]

# Colour of each region code in the "mix regions" row and the legend.
REGION_COLORS: dict[int, tuple[int, int, int]] = {
    BLEND: (66, 120, 230),  # blue: lam * A + (1 - lam) * B
    OWN: (250, 205, 40),  # yellow: A kept
    PARTNER: (150, 60, 200),  # purple: B kept
}
_REGION_NAMES = {BLEND: "mix", OWN: "A", PARTNER: "B"}

# Anchors of an inferno-like colour map: dark = low saliency, bright = high (reads well in greyscale too).
_HEAT_ANCHORS = torch.tensor(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=torch.float32
)

_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)
_TOP_COLOR = (0, 230, 255)  # outline of the top cells on the heat map
_PAD = 8
_MIN_CELL_PX = 8  # cell lines and per-cell boxes only where a drawn cell is at least this many pixels
_MAX_COUNTED_CELLS = 64  # region captions count cells on grids of 2..64 cells, else give area shares

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


# ----------------------------------------------------------------------------------------------
# validation


def _check_images(x: object, mixed: object) -> tuple[Tensor, Tensor]:
    x = check_image("x", x)
    B, C, H, W = x.shape
    if B == 0 or H == 0 or W == 0:
        raise ValueError(f"x must hold at least one non-empty image, got shape {tuple(x.shape)}")
    if C not in (1, 3):
        raise ValueError(f"x must have 1 or 3 channels, got C={C}")
    mixed = check_float_tensor("mixed", mixed)
    if mixed.shape != x.shape:
        raise ValueError(f"mixed must have x's shape {tuple(x.shape)}, got {tuple(mixed.shape)}")
    check_same_device("mixed", mixed, x.device)
    return x, mixed


def _check_lam_eff(lam_eff: object, x: Tensor) -> Tensor:
    lam_eff = check_float_tensor("lam_eff", lam_eff)
    B = x.shape[0]
    if lam_eff.shape != (B,):
        raise ValueError(f"lam_eff must have shape ({B},) to match the batch, got {tuple(lam_eff.shape)}")
    check_same_device("lam_eff", lam_eff, x.device)
    return lam_eff


def _check_saliency(saliency: object, top: object, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    if saliency is None:
        if top is not None:
            raise ValueError("top was given without saliency; pass the saliency its cells were picked from")
        return None, None
    saliency = check_float_tensor("saliency", saliency)
    check_cell_map("saliency", saliency, x)
    if top is None:
        return saliency, None
    if not isinstance(top, Tensor):
        raise TypeError(f"top must be a bool torch.Tensor or None, got {describe(top)}")
    if top.dtype != torch.bool:
        raise TypeError(f"top must be a bool tensor, got dtype {top.dtype}")
    if top.shape != saliency.shape:
        raise ValueError(f"top must have saliency's shape {tuple(saliency.shape)}, got {tuple(top.shape)}")
    check_same_device("top", top, x.device)
    return saliency, top


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


def _check_label_list(labels: object, batch: int) -> list[int]:
    if isinstance(labels, Tensor):
        if not is_integer_tensor(labels):
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},) to match the batch, got {tuple(labels.shape)}")
        return [int(v) for v in labels.detach().cpu().tolist()]
    if isinstance(labels, Sequence) and not isinstance(labels, str):
        if len(labels) != batch or any(isinstance(v, bool) or not isinstance(v, int) for v in labels):
            raise ValueError(f"labels must be {batch} ints (one per sample), got {labels!r:.80}")
        return list(labels)
    raise TypeError(f"labels must be an integer tensor or a sequence of ints, got {describe(labels)}")


def _check_labels(labels: object, class_names: object, batch: int) -> tuple[list[int] | None, list[str] | None]:
    if labels is None:
        if class_names is not None:
            raise ValueError("class_names was given without labels; pass labels to name the classes")
        return None, None
    label_list = _check_label_list(labels, batch)
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
# the validated batch, on the host


@dataclass(frozen=True)
class _Batch:
    """What the picture shows, on the host, cut to its ``n`` columns (partners gathered)."""

    batch: int  # B, the whole batch
    sample: Tensor  # (n, C, H, W)
    partner: Tensor  # (n, C, H, W): x[perm[b]]
    mixed: Tensor  # (n, C, H, W)
    perm: list[int]  # (n,)
    lam_eff: list[float]  # (n,)
    regions: Tensor | None  # (n, gh, gw) int64
    saliency: Tensor | None  # (n, h, w) float32, non-finite values as 0
    top: Tensor | None  # (n, h, w) bool
    labels: list[int] | None  # (B,)
    names: list[str] | None

    @property
    def n(self) -> int:
        return len(self.perm)

    def who(self, letter: str, idx: int) -> str:
        """The caption naming a column's image: "A = #3 cat", "A = #3 (class 5)" or "A = #3"."""
        if self.labels is None:
            return f"{letter} = #{idx}"
        if self.names is None:
            return f"{letter} = #{idx} (class {self.labels[idx]})"
        return f"{letter} = #{idx} {self.names[self.labels[idx]]}"


def _host(t: Tensor | None, n: int, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t[:n].detach().to("cpu", dtype)


def _gather(
    x: Tensor,
    perm: Tensor,
    mixed: Tensor,
    lam_eff: Tensor,
    maps: tuple[Tensor | None, Tensor | None, Tensor | None],
    labels: tuple[list[int] | None, list[str] | None],
    n: int,
) -> _Batch:
    """The first ``n`` columns on the host; ``maps`` = (regions, saliency, top)."""
    regions, saliency, top = maps
    partners = perm[:n].long()
    sal = _host(saliency, n, torch.float32)
    return _Batch(
        batch=x.shape[0],
        sample=_host(x, n, torch.float32),
        partner=x.index_select(0, partners).detach().to("cpu", torch.float32),
        mixed=_host(mixed, n, torch.float32),
        perm=partners.tolist(),
        lam_eff=lam_eff[:n].detach().to("cpu", torch.float64).tolist(),
        regions=_host(regions, n, torch.int64),
        saliency=None if sal is None else torch.nan_to_num(sal, nan=0.0, posinf=0.0, neginf=0.0),
        top=_host(top, n, torch.bool),
        labels=labels[0],
        names=labels[1],
    )


# ----------------------------------------------------------------------------------------------
# tensors -> pictures


def _to_rgb_uint8(img: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(C, H, W) float image (normalised or in [0, 1]) -> (H, W, 3) uint8."""
    img = img * std + mean
    img = torch.nan_to_num(img, nan=0.0).clamp(0.0, 1.0)
    if img.shape[0] == 1:  # greyscale: same value in R, G and B
        img = img.expand(3, -1, -1)
    return (img * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def _heat(values: Tensor) -> Tensor:
    """(...) values in [0, 1] -> (..., 3) uint8 by piecewise-linear interpolation of the colour map."""
    pos = values.clamp(0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    lo = pos.floor().long().clamp(max=len(_HEAT_ANCHORS) - 2)
    frac = (pos - lo).unsqueeze(-1)
    rgb = _HEAT_ANCHORS[lo] * (1 - frac) + _HEAT_ANCHORS[lo + 1] * frac
    return rgb.round().to(torch.uint8)


def _upscale(t: Tensor, size: tuple[int, int]) -> Tensor:
    """(h, w, ...) -> (H', W', ...) by repeating each entry; ``size`` = (W', H') is a multiple of (w, h)."""
    return t.repeat_interleave(size[1] // t.shape[0], 0).repeat_interleave(size[0] // t.shape[1], 1)


def _picture(rgb: Tensor, size: tuple[int, int]) -> Image.Image:
    """(h, w, 3) uint8 -> PIL image of ``size`` = (W', H'), each entry a crisp block. Through bytes, not
    numpy: the library does not depend on numpy; nearest resizing by a whole factor repeats each entry."""
    h, w = rgb.shape[:2]
    image = Image.frombytes("RGB", (w, h), bytes(rgb.contiguous().flatten().tolist()))
    return image.resize(size, Image.Resampling.NEAREST)


def _coarse(grid: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether a (gh, gw) grid drawn at ``size`` has cells large enough to outline one by one."""
    return min(size[1] // grid[0], size[0] // grid[1]) >= _MIN_CELL_PX


def _cell_box(i: int, j: int, grid: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of cell (row i, column j) of a (gh, gw) grid drawn at ``size`` = (W, H)."""
    (gh, gw), (w, h) = grid, size
    return (j * w // gw, i * h // gh, (j + 1) * w // gw - 1, (i + 1) * h // gh - 1)


def _draw_cell_lines(image: Image.Image, grid: tuple[int, int], color: tuple[int, int, int]) -> None:
    draw = ImageDraw.Draw(image)
    (gh, gw), (w, h) = grid, image.size
    for k in range(1, gw):
        draw.line([(k * w // gw, 0), (k * w // gw, h - 1)], fill=color)
    for k in range(1, gh):
        draw.line([(0, k * h // gh), (w - 1, k * h // gh)], fill=color)


def _outline(inside: Tensor, width: int) -> Tensor:
    """(H, W) bool -> the pixels of ``inside`` within ``width`` of its border (the image edge included)."""
    outside = (~inside).to(torch.float32)[None, None]
    outside = F.pad(outside, (width, width, width, width), value=1.0)
    near = F.max_pool2d(outside, 2 * width + 1, stride=1)[0, 0] > 0
    return inside & near


def _saliency_picture(sal: Tensor, top: Tensor | None, size: tuple[int, int], scale: int) -> Image.Image:
    """One sample's heat map, scaled to its own maximum (where saliency is, not its magnitude); its top
    cells boxed one by one on a coarse grid, the top area outlined on a fine one."""
    peak = float(sal.max())
    rgb = _heat(sal / peak if peak > 0 else torch.zeros_like(sal))
    grid = (sal.shape[0], sal.shape[1])
    coarse = _coarse(grid, size)
    width = max(1, scale // 2)
    if top is not None and not coarse:
        rgb = _upscale(rgb, size)
        rgb[_outline(_upscale(top, size), width)] = torch.tensor(_TOP_COLOR, dtype=torch.uint8)
    image = _picture(rgb, size)
    if coarse:
        _draw_cell_lines(image, grid, (110, 110, 110))
        if top is not None:
            draw = ImageDraw.Draw(image)
            for i, j in top.nonzero().tolist():
                draw.rectangle(_cell_box(i, j, grid, size), outline=_TOP_COLOR, width=width)
    return image


def _region_picture(codes: Tensor, size: tuple[int, int]) -> Image.Image:
    palette = torch.zeros(max(REGION_COLORS) + 1, 3, dtype=torch.uint8)
    for code, color in REGION_COLORS.items():
        palette[code] = torch.tensor(color, dtype=torch.uint8)
    image = _picture(palette[codes], size)
    grid = (codes.shape[0], codes.shape[1])
    if _coarse(grid, size):
        _draw_cell_lines(image, grid, (255, 255, 255))
    return image


def _region_caption(codes: Tensor) -> str:
    """Cells of each code on a grid of 2..64 cells ("mix 10 | A 3 | B 3"), else their area shares
    ("mix 75% | B 25%"); codes absent from the map are left out."""
    cells = codes.numel()
    parts = []
    for code, name in _REGION_NAMES.items():
        count = int((codes == code).sum())
        if count == 0:
            continue
        if 1 < cells <= _MAX_COUNTED_CELLS:
            parts.append(f"{name} {count}")
        else:
            share = 100 * count / cells
            parts.append(f"{name} {round(share)}%" if share >= 0.5 else f"{name} <1%")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------
# the rows


@dataclass
class _Row:
    title: list[str]
    images: list[Image.Image]
    captions: list[list[str]]


@dataclass(frozen=True)
class _Style:
    size: tuple[int, int]  # (W, H) of one drawn image
    scale: int
    font: Font
    mean: Tensor  # (C, 1, 1)
    std: Tensor  # (C, 1, 1)


def _wrap_terms(text: str, font: Font, width: int) -> list[str]:
    """Split "a + b" over two lines when it is wider than ``width`` (captions stay inside their column)."""
    if _text_width(font, text) <= width or " + " not in text:
        return [text]
    head, tail = text.split(" + ", 1)
    return [head + " +", tail]


def _image_rows(batch: _Batch, style: _Style) -> list[_Row]:
    """The sample row A and the partner row B."""
    sample, partner = _Row(["A: sample"], [], []), _Row(["B: partner"], [], [])
    for b, p in enumerate(batch.perm):
        sample.images.append(_picture(_to_rgb_uint8(batch.sample[b], style.mean, style.std), style.size))
        sample.captions.append(_wrap_terms(batch.who("A", b), style.font, style.size[0]))
        partner.images.append(_picture(_to_rgb_uint8(batch.partner[b], style.mean, style.std), style.size))
        itself = " (itself)" if p == b else ""
        partner.captions.append(_wrap_terms(batch.who("B", p) + itself, style.font, style.size[0]))
    return [sample, partner]


def _saliency_row(sal: Tensor, top: Tensor | None, style: _Style) -> _Row:
    row = _Row(["saliency of A", *(["(top cells boxed)"] if top is not None else [])], [], [])
    cells = sal.shape[1] * sal.shape[2]
    for b in range(sal.shape[0]):
        row.images.append(_saliency_picture(sal[b], None if top is None else top[b], style.size, style.scale))
        if top is not None:
            row.captions.append([f"{int(top[b].sum())} of {cells} cells top"])
        else:
            row.captions.append([f"peak {float(sal[b].max()):.3g}"])
    return row


def _region_row(regions: Tensor, style: _Style) -> _Row:
    row = _Row(["mix regions"], [], [])
    for codes in regions:
        row.images.append(_region_picture(codes, style.size))
        row.captions.append([_region_caption(codes)])
    return row


def _mixed_row(batch: _Batch, style: _Style) -> _Row:
    row = _Row(["mixed"], [], [])
    for b, (p, lam) in enumerate(zip(batch.perm, batch.lam_eff, strict=True)):
        row.images.append(_picture(_to_rgb_uint8(batch.mixed[b], style.mean, style.std), style.size))
        caption = [f"{lam:.2f}·A + {1 - lam:.2f}·B"]
        if batch.names is not None and batch.labels is not None:
            names = f"{lam:.2f}·{batch.names[batch.labels[b]]} + {1 - lam:.2f}·{batch.names[batch.labels[p]]}"
            caption += _wrap_terms(names, style.font, style.size[0])
        row.captions.append(caption)
    return row


def _rows(batch: _Batch, style: _Style) -> list[_Row]:
    """Sample, partner, [saliency], [regions], mixed."""
    rows = _image_rows(batch, style)
    if batch.saliency is not None:
        rows.append(_saliency_row(batch.saliency, batch.top, style))
    if batch.regions is not None:
        rows.append(_region_row(batch.regions, style))
    return [*rows, _mixed_row(batch, style)]


# ----------------------------------------------------------------------------------------------
# the legend


@dataclass(frozen=True)
class _LegendItem:
    """A swatch followed by a label: a flat colour, the heat gradient, or an outlined box."""

    kind: str  # "color", "heat" or "box"
    color: tuple[int, int, int]
    label: str

    def swatch_width(self, line_h: int) -> int:
        return 36 if self.kind == "heat" else line_h

    def width(self, font: Font, line_h: int) -> int:
        return self.swatch_width(line_h) + 4 + _text_width(font, self.label)

    def draw(self, draw: ImageDraw.ImageDraw, font: Font, x0: int, y0: int, line_h: int) -> None:
        swatch_w = self.swatch_width(line_h)
        box = (x0, y0, x0 + swatch_w - 1, y0 + line_h - 2)
        if self.kind == "heat":
            ramp = _heat(torch.linspace(0, 1, swatch_w))
            for k in range(swatch_w):
                draw.line([(x0 + k, y0), (x0 + k, y0 + line_h - 2)], fill=tuple(ramp[k].tolist()))
        elif self.kind == "box":
            draw.rectangle(box, fill=tuple(_HEAT_ANCHORS[1].int().tolist()), outline=self.color, width=2)
        else:
            draw.rectangle(box, fill=self.color, outline=_INK)
        draw.text((x0 + swatch_w + 4, y0), self.label, fill=_INK, font=font)


def _legend_items(batch: _Batch) -> list[_LegendItem]:
    """Entries for the rows drawn: the region codes' colours, the heat scale, the top-cell box."""
    items = []
    if batch.regions is not None:
        items += [
            _LegendItem("color", REGION_COLORS[BLEND], "mix: lam·A + (1-lam)·B"),
            _LegendItem("color", REGION_COLORS[OWN], "A kept"),
            _LegendItem("color", REGION_COLORS[PARTNER], "B kept"),
        ]
    if batch.saliency is not None:
        items.append(_LegendItem("heat", _INK, "saliency of A: low to high (per sample)"))
    if batch.top is not None:
        items.append(_LegendItem("box", _TOP_COLOR, "top cells"))
    return items


def _flow(items: list[_LegendItem], font: Font, line_h: int, width: int) -> list[list[_LegendItem]]:
    """Greedy line breaking: legend items left to right, a new line when the next would overflow."""
    lines: list[list[_LegendItem]] = [[]]
    used = 0
    for item in items:
        if lines[-1] and used + item.width(font, line_h) > width:
            lines.append([])
            used = 0
        lines[-1].append(item)
        used += item.width(font, line_h) + 2 * _PAD
    return lines if items else []


# ----------------------------------------------------------------------------------------------
# layout


def _load_font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # no FreeType, or Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(font: Font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return math.ceil(right - left)


def _line_height(font: Font) -> int:
    return font.getbbox("Ag")[3] + 3


def _heading(batch: _Batch) -> str:
    """The default title: "Mixed samples (8), regions on a 4x4 grid", or "Mixed samples (first 8 of 64)"."""
    shown = f"first {batch.n} of {batch.batch}" if batch.n < batch.batch else f"{batch.n}"
    heading = f"Mixed samples ({shown})"
    if batch.regions is not None:
        heading += f", regions on a {batch.regions.shape[1]}x{batch.regions.shape[2]} grid"
    return heading


def _row_height(row: _Row, style: _Style) -> int:
    """The image, the caption lines under it and a gap."""
    return style.size[1] + 2 + max(len(c) for c in row.captions) * _line_height(style.font) + _PAD


def _draw_rows(canvas: Image.Image, rows: list[_Row], style: _Style, left: int, col_w: int, top: int) -> int:
    """Each row: its title at the left, then per column the image and its caption lines; returns the y below."""
    draw = ImageDraw.Draw(canvas)
    line_h, (img_w, img_h) = _line_height(style.font), style.size
    y = top
    for row in rows:
        block_h = len(row.title) * line_h
        for k, line in enumerate(row.title):
            draw.text((_PAD, y + (img_h - block_h) // 2 + k * line_h), line, fill=_INK, font=style.font)
        for b, (image, caption) in enumerate(zip(row.images, row.captions, strict=True)):
            x0 = left + b * col_w
            canvas.paste(image, (x0 + (col_w - _PAD - img_w) // 2, y))
            for k, line in enumerate(caption):
                tx = x0 + max(0, (col_w - _PAD - _text_width(style.font, line)) // 2)
                draw.text((tx, y + img_h + 2 + k * line_h), line, fill=_INK, font=style.font)
        y += _row_height(row, style)
    return y


def _render(rows: list[_Row], heading: str, legend: list[_LegendItem], style: _Style) -> Image.Image:
    """The heading, the rows (one column per sample, titles at the left), then the legend."""
    font, line_h = style.font, _line_height(style.font)
    left = 2 * _PAD + max(_text_width(font, line) for row in rows for line in row.title)
    widest = max(_text_width(font, line) for row in rows for caption in row.captions for line in caption)
    col_w = max(style.size[0], widest) + _PAD
    n = len(rows[0].images)
    # Wide enough for the columns, and for the heading and each legend entry when there are few columns.
    text_w = max([_text_width(font, heading), *(item.width(font, line_h) for item in legend)])
    canvas_w = max(left + n * col_w, 2 * _PAD + text_w)
    legend_rows = _flow(legend, font, line_h, canvas_w - 2 * _PAD)
    rows_h = sum(_row_height(row, style) for row in rows)
    top = _PAD + line_h + _PAD
    canvas = Image.new("RGB", (canvas_w, top + rows_h + len(legend_rows) * (line_h + 6) + _PAD), _BACKGROUND)
    ImageDraw.Draw(canvas).text((_PAD, _PAD), heading, fill=_INK, font=font)
    y = _draw_rows(canvas, rows, style, left, col_w, top)
    draw = ImageDraw.Draw(canvas)
    for items in legend_rows:
        x0 = _PAD
        for item in items:
            item.draw(draw, font, x0, y, line_h)
            x0 += item.width(font, line_h) + 2 * _PAD
        y += line_h + 6
    return canvas


# ----------------------------------------------------------------------------------------------
# the entry point


def save_mix_grid(
    path: str | os.PathLike[str],
    x: Tensor,
    perm: Tensor,
    mixed: Tensor,
    lam_eff: Tensor,
    *,
    regions: Tensor | None = None,
    saliency: Tensor | None = None,
    top: Tensor | None = None,
    labels: Tensor | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | Tensor | float | None = None,
    std: Sequence[float] | Tensor | float | None = None,
    scale: int = 4,
    max_samples: int = 8,
    title: str | None = None,
) -> Path:
    """Write one PNG that explains a mixed batch of any method, one column per sample (the first ``max_samples``).

    Rows: the sample A = ``x[b]``; its partner B = ``x[perm[b]]``; with ``saliency``, A's saliency as a
    heat map (``top`` cells boxed); with ``regions``, how each cell of the mix was made (blue: blended,
    yellow: A kept, purple: B kept; ``REGION_COLORS``), captioned with the cells of each code on a grid of
    2..64 cells and with their area shares otherwise; the mixed image, captioned ``lam_eff·A +
    (1-lam_eff)·B`` (with class names when ``labels`` and ``class_names`` are given). A legend for the
    rows drawn sits at the bottom. Cell lines are drawn where cells are large enough to read.

    Args:
        path: where to write the PNG (parent folders are created).
        x: (B, C, H, W) float images, C = 1 or 3, in [0, 1] or normalised (see ``mean``/``std``).
        perm: (B,) integer permutation of 0..B-1: sample b was mixed with ``perm[b]``.
        mixed: the mixed images, x's shape.
        lam_eff: (B,) float weight in [0, 1] of each sample's own label (``rmix``'s, ``blend_regions``'s,
            or ``mixer.last_params.lam_eff``).
        regions: optional (B, gh, gw) integer region codes ``BLEND``/``OWN``/``PARTNER``, gh dividing H and
            gw dividing W: ``regions_from_mask(mask, perm)`` for R-Mix, ``mixer.last_params.regions`` for
            Mixup (1x1) and CutMix (its box on the coarsest grid that holds it).
        saliency: optional (B, h, w) float saliency, h dividing H and w dividing W: a cell grid such as
            ``rmix_fast.saliency_grid(grad, p)``, or one value per pixel. Each sample is scaled to its max.
        top: optional (B, h, w) bool, saliency's shape: the cells to box (R-Mix's top mask). Needs ``saliency``.
        labels: optional (B,) class indices; with ``class_names`` the captions name the classes.
        class_names: optional names indexed by ``labels``.
        mean, std: per-channel normalisation to undo (``img * std + mean``) before display.
        scale: integer nearest-neighbour upscaling, so 32x32 images are legible.
        max_samples: at most this many columns.
        title: the heading (default: "Mixed samples (n)", plus ", regions on a ghxgw grid" with ``regions``).

    Every tensor is on x's device. Raises TypeError/ValueError naming the argument for bad input.

    Returns:
        The path written, as a ``pathlib.Path``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {describe(path)}")
    x, mixed = _check_images(x, mixed)
    B, C = x.shape[:2]
    check_perm(perm, B, x.device)
    lam_eff = _check_lam_eff(lam_eff, x)
    if regions is not None:
        check_regions(regions, x)
    saliency, top = _check_saliency(saliency, top, x)
    named = _check_labels(labels, class_names, B)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {describe(title)}")
    scale = check_positive_int("scale", scale)
    style = _Style(
        size=(x.shape[3] * scale, x.shape[2] * scale),
        scale=scale,
        font=_load_font(12),
        mean=_channel_stats("mean", mean, C, 0.0),
        std=_channel_stats("std", std, C, 1.0),
    )
    n = min(B, check_positive_int("max_samples", max_samples))
    checks = [*permutation_checks(perm), unit_interval_check("lam_eff", lam_eff)]
    run_content_checks([*checks, *([region_code_check(regions)] if regions is not None else [])])

    batch = _gather(x, perm, mixed, lam_eff, (regions, saliency, top), named, n)
    canvas = _render(_rows(batch, style), title if title is not None else _heading(batch), _legend_items(batch), style)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out
