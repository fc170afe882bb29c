"""The picture helpers in ``rmix_fast.viz`` draw and validate correctly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import rmix_fast
from rmix_fast import viz


def _batch(B: int = 4, C: int = 3, size: int = 16, grid: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small real R-Mix batch (reference backend) with everything save_mix_grid needs."""
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
        "saliency": rmix_fast.saliency_grid(grad, grid),
        "mask": mask,
        "mixed": mixed,
        "lam_eff": lam_eff,
    }


def _save(path: Path, batch: dict[str, torch.Tensor], **kwargs: object) -> Path:
    b = batch
    return viz.save_mix_grid(path, b["x"], b["perm"], b["saliency"], b["mask"], b["mixed"], b["lam_eff"], **kwargs)


def test_save_mix_grid_without_saliency_draws_three_rows(tmp_path: Path) -> None:
    b = _batch()
    with_mask = _save(tmp_path / "rmix.png", b)
    plain = viz.save_mix_grid(tmp_path / "plain.png", b["x"], b["perm"], None, None, b["mixed"], b["lam_eff"])
    with Image.open(with_mask) as full, Image.open(plain) as short:
        assert short.width == full.width or short.width < full.width
        assert short.height < full.height  # the saliency and region rows are gone, and the legend
    with pytest.raises(ValueError, match="saliency and mask must be given together"):
        viz.save_mix_grid(tmp_path / "bad.png", b["x"], b["perm"], b["saliency"], None, b["mixed"], b["lam_eff"])


def test_mix_regions_hand_made() -> None:
    mask = torch.tensor(
        [
            [[True, False], [True, False]],
            [[True, True], [False, False]],
            [[False, False], [False, True]],
        ]
    )
    perm = torch.tensor([1, 2, 0])
    expected = torch.tensor(
        [
            [[0, 2], [1, 0]],  # vs sample 1
            [[1, 1], [0, 2]],  # vs sample 2
            [[2, 0], [2, 1]],  # vs sample 0
        ],
        dtype=torch.int8,
    )
    regions = viz.mix_regions(mask, perm)
    assert regions.dtype == torch.int8
    assert torch.equal(regions, expected)


def test_mix_regions_matches_rmix() -> None:
    b = _batch(B=6, size=16, grid=4, seed=1)
    regions = viz.mix_regions(b["mask"], b["perm"])
    px = regions.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2).unsqueeze(1).expand_as(b["x"])
    x, partner = b["x"], b["x"][b["perm"]]
    assert torch.equal(b["mixed"][px == viz.OWN_KEPT], x[px == viz.OWN_KEPT])
    assert torch.equal(b["mixed"][px == viz.PARTNER_KEPT], partner[px == viz.PARTNER_KEPT])


def test_save_mix_grid_draws_regions_in_their_colours(tmp_path: Path) -> None:
    b = _batch(B=2, size=16, grid=4)
    b["perm"] = torch.tensor([1, 0])
    b["mask"] = torch.stack([torch.ones(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)])
    out = _save(tmp_path / "regions.png", b, scale=4)
    with Image.open(out) as image:
        counts = {color: n for n, color in image.convert("RGB").getcolors(maxcolors=1 << 20)}
    cell_area = (16 * 4) ** 2
    # Sample 0 keeps all its cells (A kept), sample 1 its partner's (B kept); no cell is blended, so the
    # blended colour appears only in the legend's small swatch.
    assert counts.get(viz.REGION_COLORS[viz.OWN_KEPT], 0) > 0.8 * cell_area
    assert counts.get(viz.REGION_COLORS[viz.PARTNER_KEPT], 0) > 0.8 * cell_area
    assert counts.get(viz.REGION_COLORS[viz.BLENDED], 0) < 0.1 * cell_area


def test_save_mix_grid_columns_and_options(tmp_path: Path) -> None:
    b = _batch(B=4, C=1, size=8, grid=2)
    widths = [Image.open(_save(tmp_path / f"{n}.png", b, scale=8, max_samples=n)).width for n in (2, 3, 4)]
    assert widths[1] - widths[0] == widths[2] - widths[1] > 8 * 8  # one image (plus padding) per column
    out = _save(
        tmp_path / "named.png",
        b,
        labels=torch.tensor([0, 1, 2, 0]),
        class_names=["a", "b", "c"],
        mean=[0.5],
        std=[0.25],
    )
    assert out == tmp_path / "named.png" and out.stat().st_size > 0


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"mixed": torch.rand(3, 3, 16, 16)}, ValueError, "mixed"),
        ({"x": torch.rand(3, 3, 16, 16)}, ValueError, "mixed|perm"),
        ({"perm": torch.tensor([0, 0, 1, 2])}, ValueError, "perm"),
        ({"perm": torch.tensor([0.0, 1.0, 2.0, 3.0])}, TypeError, "perm"),
        ({"mask": torch.zeros(4, 4, 4, dtype=torch.uint8)}, TypeError, "mask"),
        ({"mask": torch.zeros(4, 2, 2, dtype=torch.bool)}, ValueError, "mask"),
        ({"saliency": torch.rand(4, 3, 3)}, ValueError, "saliency"),
        ({"lam_eff": torch.rand(3)}, ValueError, "lam_eff"),
        ({"x": torch.rand(4, 2, 16, 16), "mixed": torch.rand(4, 2, 16, 16)}, ValueError, "channels"),
        ({"x": torch.randint(0, 255, (4, 3, 16, 16))}, TypeError, "x"),
    ],
)
def test_save_mix_grid_rejects_bad_tensors(tmp_path: Path, change: dict, error: type, match: str) -> None:
    b = {**_batch(B=4), **change}
    with pytest.raises(error, match=match):
        _save(tmp_path / "bad.png", b)
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"class_names": ["a"]}, ValueError, "labels"),
        ({"labels": [0, 1, 2, 5], "class_names": ["a", "b", "c"]}, ValueError, "labels"),
        ({"labels": [0, 1]}, ValueError, "labels"),
        ({"mean": [0.5, 0.5]}, ValueError, "mean"),
        ({"std": "wide"}, TypeError, "std"),
        ({"scale": 0}, ValueError, "scale"),
        ({"max_samples": 2.0}, TypeError, "max_samples"),
    ],
)
def test_save_mix_grid_rejects_bad_options(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _save(tmp_path / "bad.png", _batch(B=4), **kwargs)
