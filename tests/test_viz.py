"""The picture writer ``rmix_fast.viz.save_mix_grid`` draws any method's mix from its region codes (plus
saliency when the method has one) and validates its arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rmix_fast
from rmix_fast import BLEND, OWN, PARTNER, viz


def _rmix_batch(B: int = 4, C: int = 3, size: int = 16, grid: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small real R-Mix batch (reference backend): its regions from its top mask, its cell saliency."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, size, size, generator=g)
    grad = torch.randn(B, C, size, size, generator=g)
    params = rmix_fast.sample_rmix_params(B, grids=(grid,), generator=g)
    mixed, lam_eff, mask = rmix_fast.rmix(
        x, grad, perm=params.perm, lam=params.lam, q=params.q, grid=grid, backend="reference", return_mask=True
    )
    return {
        "x": x,
        "perm": params.perm,
        "mixed": mixed,
        "lam_eff": lam_eff,
        "regions": rmix_fast.regions_from_mask(mask, params.perm),
        "saliency": rmix_fast.saliency_grid(grad, grid),
        "top": mask,
    }


def _region_batch(regions: torch.Tensor, H: int, W: int, lam: float = 0.3) -> dict[str, torch.Tensor]:
    """A batch mixed by the blend engine from a hand-made code map (Mixup-, CutMix-like), partners reversed."""
    B = regions.shape[0]
    x = torch.full((B, 3, H, W), 0.5)  # flat grey: no image pixel can take a region colour
    perm = torch.arange(B).flip(0)
    mixed, lam_eff = rmix_fast.blend_regions(x, perm=perm, lam=lam, regions=regions, backend="reference")
    return {"x": x, "perm": perm, "mixed": mixed, "lam_eff": lam_eff, "regions": regions}


def _save(path: Path, batch: dict[str, torch.Tensor], **kwargs: object) -> Path:
    b = batch
    maps = {k: b[k] for k in ("regions", "saliency", "top") if k in b}
    return viz.save_mix_grid(path, b["x"], b["perm"], b["mixed"], b["lam_eff"], **{**maps, **kwargs})


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _region_images(path: Path, width: int, height: int) -> list[np.ndarray]:
    """The drawn region maps of a picture, left to right: the blocks of region colours at least one image
    wide (the legend's swatches are smaller), each cut out as an (height, width, 3) array."""
    rgb = _rgb(path)
    coloured = np.zeros(rgb.shape[:2], dtype=bool)
    for color in viz.REGION_COLORS.values():
        coloured |= (rgb == color).all(-1)
    rows = np.flatnonzero(coloured.sum(1) >= width)
    y0 = int(rows.min())
    assert rows.max() - y0 + 1 == height, "one band of region maps, one image high"
    cols = np.flatnonzero(coloured[y0 : y0 + height].any(0))
    starts = [int(c) for k, c in enumerate(cols) if k == 0 or c - cols[k - 1] > 2]  # white cell lines are 1 px
    return [rgb[y0 : y0 + height, s : s + width] for s in starts]


def _cell_centre_colours(image: np.ndarray, gh: int, gw: int) -> list[list[tuple[int, ...]]]:
    h, w = image.shape[:2]
    centre = [[((2 * i + 1) * h // (2 * gh), (2 * j + 1) * w // (2 * gw)) for j in range(gw)] for i in range(gh)]
    return [[tuple(image[y, x]) for y, x in row] for row in centre]


def test_rows_follow_the_maps_given(tmp_path: Path) -> None:
    b = _rmix_batch()
    plain = {k: b[k] for k in ("x", "perm", "mixed", "lam_eff")}
    heights = [
        _rgb(_save(tmp_path / f"{k}.png", batch)).shape[0]
        for k, batch in enumerate([plain, {**plain, "regions": b["regions"]}, {**plain, "saliency": b["saliency"]}, b])
    ]
    # sample, partner, mixed < + regions (and their legend) ; + saliency < + both
    assert heights[0] < heights[1] < heights[3]
    assert heights[0] < heights[2] < heights[3]


def test_regions_in_their_colours(tmp_path: Path) -> None:
    b = _rmix_batch(B=2, size=16, grid=4)
    b["perm"] = torch.tensor([1, 0])
    b["top"] = torch.stack([torch.ones(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)])
    b["regions"] = rmix_fast.regions_from_mask(b["top"], b["perm"])
    counts = {color: n for n, color in Image.open(_save(tmp_path / "regions.png", b, scale=4)).getcolors(1 << 20)}
    cell_area = (16 * 4) ** 2
    # Sample 0 keeps all its cells (A kept), sample 1 its partner's (B kept); no cell is blended, so the
    # blend colour appears only in the legend's small swatch.
    assert counts.get(viz.REGION_COLORS[OWN], 0) > 0.8 * cell_area
    assert counts.get(viz.REGION_COLORS[PARTNER], 0) > 0.8 * cell_area
    assert counts.get(viz.REGION_COLORS[BLEND], 0) < 0.1 * cell_area


def test_rmix_regions_drawn_cell_by_cell(tmp_path: Path) -> None:
    b = _rmix_batch(B=3, size=16, grid=4, seed=3)
    images = _region_images(_save(tmp_path / "rmix.png", b, scale=4), 64, 64)
    assert len(images) == 3
    for image, codes in zip(images, b["regions"].tolist(), strict=True):
        assert _cell_centre_colours(image, 4, 4) == [[viz.REGION_COLORS[c] for c in row] for row in codes]


def test_cutmix_like_coarse_non_square_map(tmp_path: Path) -> None:
    """A 2x3 code map over 16x24 images: a box of the partner in each, drawn where its cells are."""
    regions = torch.tensor(
        [[[OWN, PARTNER, PARTNER], [OWN, OWN, OWN]], [[OWN, OWN, OWN], [OWN, OWN, PARTNER]]], dtype=torch.int8
    )
    b = _region_batch(regions, H=16, W=24)
    images = _region_images(_save(tmp_path / "cutmix.png", b, scale=4), 24 * 4, 16 * 4)
    assert len(images) == 2
    for image, codes in zip(images, regions.tolist(), strict=True):
        assert _cell_centre_colours(image, 2, 3) == [[viz.REGION_COLORS[c] for c in row] for row in codes]
        assert (image == (255, 255, 255)).all(-1).any(), "a coarse grid gets its cell lines"


def test_real_cutmix_map(tmp_path: Path) -> None:
    """CutMix's own map (coarsest grid holding its box, often fine): its box shows in the partner's colour."""
    cutmix = rmix_fast.CutMix(num_classes=3, per_sample_lam=True, generator=torch.Generator().manual_seed(1))
    x = torch.rand(4, 3, 16, 20)
    mixed, _ = cutmix(x, torch.tensor([0, 1, 2, 0]))
    p = cutmix.last_params
    out = viz.save_mix_grid(tmp_path / "cutmix.png", x, p.perm, mixed, p.lam_eff, regions=p.regions, max_samples=2)
    colours = {color for _, color in Image.open(out).getcolors(1 << 20)}
    assert viz.REGION_COLORS[OWN] in colours and viz.REGION_COLORS[PARTNER] in colours


def test_mixup_one_cell_map(tmp_path: Path) -> None:
    b = _region_batch(torch.full((2, 1, 1), BLEND, dtype=torch.int8), H=8, W=12)
    images = _region_images(_save(tmp_path / "mixup.png", b, scale=8), 12 * 8, 8 * 8)
    assert len(images) == 2
    for image in images:
        assert (image == viz.REGION_COLORS[BLEND]).all(), "one blend cell fills the image, no lines"


def test_region_captions_count_coarse_cells_and_share_fine_areas() -> None:
    assert viz._region_caption(torch.tensor([[BLEND, OWN], [OWN, PARTNER]])) == "mix 1 | A 2 | B 1"
    assert viz._region_caption(torch.tensor([[BLEND]])) == "mix 100%"
    fine = torch.full((16, 16), OWN)
    fine[:8, :4] = PARTNER
    assert viz._region_caption(fine) == "A 88% | B 12%"


def test_per_pixel_saliency_and_top(tmp_path: Path) -> None:
    """Saliency with one value per pixel (h = H): the heat map and the outline of the top area."""
    b = _rmix_batch(B=2, size=16, grid=4)
    saliency = torch.rand(2, 16, 16)
    top = saliency > 0.7
    out = _save(tmp_path / "pixels.png", {**b, "saliency": saliency, "top": top}, scale=4)
    assert (_rgb(out) == viz._TOP_COLOR).all(-1).sum() > 100
    # a non-square cell grid too (2 x 4 cells over 16 x 16)
    _save(tmp_path / "cells.png", {**b, "saliency": torch.rand(2, 2, 4), "top": torch.rand(2, 2, 4) > 0.5})


def test_columns_and_options(tmp_path: Path) -> None:
    b = _rmix_batch(B=4, C=1, size=8, grid=2)
    widths = [Image.open(_save(tmp_path / f"{n}.png", b, scale=8, max_samples=n)).width for n in (2, 3, 4)]
    assert widths[1] - widths[0] == widths[2] - widths[1] > 8 * 8  # one image (plus padding) per column
    out = _save(
        tmp_path / "sub" / "named.png",
        b,
        labels=torch.tensor([0, 1, 2, 0]),
        class_names=["a", "b", "c"],
        mean=[0.5],
        std=[0.25],
        title="a title",
    )
    assert out == tmp_path / "sub" / "named.png" and out.stat().st_size > 0


def test_public_names() -> None:
    assert viz.__all__ == ["REGION_COLORS", "save_mix_grid"]
    assert set(viz.REGION_COLORS) == {BLEND, OWN, PARTNER}


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"mixed": torch.rand(3, 3, 16, 16)}, ValueError, "mixed"),
        ({"x": torch.rand(3, 3, 16, 16)}, ValueError, "mixed|perm"),
        ({"perm": torch.tensor([0, 0, 1, 2])}, ValueError, "perm"),
        ({"perm": torch.tensor([0.0, 1.0, 2.0, 3.0])}, TypeError, "perm"),
        ({"top": torch.zeros(4, 4, 4, dtype=torch.uint8)}, TypeError, "top"),
        ({"top": torch.zeros(4, 2, 2, dtype=torch.bool)}, ValueError, "top must have saliency's shape"),
        ({"saliency": torch.rand(4, 3, 3)}, ValueError, "saliency"),
        ({"saliency": torch.ones(4, 4, 4, dtype=torch.int64)}, TypeError, "saliency"),
        ({"regions": torch.zeros(4, 3, 3, dtype=torch.int8)}, ValueError, "regions must have shape"),
        ({"regions": torch.zeros(4, 16, 5, dtype=torch.int8)}, ValueError, "regions must have shape"),
        ({"regions": torch.zeros(4, 4, 4)}, TypeError, "regions"),
        ({"regions": torch.full((4, 4, 4), 3)}, ValueError, "regions must hold only"),
        ({"lam_eff": torch.rand(3)}, ValueError, "lam_eff"),
        ({"lam_eff": torch.full((4,), 1.5)}, ValueError, "lam_eff"),
        ({"lam_eff": torch.rand(4, device="meta")}, ValueError, "lam_eff is on meta"),
        ({"x": torch.rand(4, 2, 16, 16), "mixed": torch.rand(4, 2, 16, 16)}, ValueError, "channels"),
        ({"x": torch.randint(0, 255, (4, 3, 16, 16))}, TypeError, "x"),
    ],
)
def test_rejects_bad_tensors(tmp_path: Path, change: dict, error: type, match: str) -> None:
    b = {**_rmix_batch(B=4), **change}
    with pytest.raises(error, match=match):
        _save(tmp_path / "bad.png", b)
    assert not (tmp_path / "bad.png").exists()


def test_rejects_top_without_saliency(tmp_path: Path) -> None:
    b = _rmix_batch(B=4)
    del b["saliency"]
    with pytest.raises(ValueError, match="top was given without saliency"):
        _save(tmp_path / "bad.png", b)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"class_names": ["a"]}, ValueError, "labels"),
        ({"labels": [0, 1, 2, 5], "class_names": ["a", "b", "c"]}, ValueError, "labels"),
        ({"labels": [0, 1]}, ValueError, "labels"),
        ({"labels": torch.zeros(4)}, TypeError, "labels"),
        ({"mean": [0.5, 0.5]}, ValueError, "mean"),
        ({"std": "wide"}, TypeError, "std"),
        ({"scale": 0}, ValueError, "scale"),
        ({"max_samples": 2.0}, TypeError, "max_samples"),
        ({"title": 3}, TypeError, "title"),
    ],
)
def test_rejects_bad_options(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _save(tmp_path / "bad.png", _rmix_batch(B=4), **kwargs)
