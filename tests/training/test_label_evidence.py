"""The label-evidence metric (rmix_fast.training.metrics.label_evidence), the shapes object masks it needs,
and its command line (python -m rmix_fast.training.evidence).

The metric is checked on batches small enough to work out by hand (tiny masks, known region maps), on
Mixup (evidence share = lam exactly, whatever the masks) and on the cases the definition singles out
(neither object visible, a sample mixed with itself, a batch passed through).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from rmix_fast import BLEND, OWN, PARTNER, CutMix, Mixup, RMix
from rmix_fast.mixers import MixParams
from rmix_fast.reference import region_label_weight
from rmix_fast.training import evidence
from rmix_fast.training.checkpoint import save_checkpoint
from rmix_fast.training.data import build_dataset, make_shapes
from rmix_fast.training.data.base import InMemoryVisionDataset
from rmix_fast.training.data.shapes import SHAPES_MEAN, SHAPES_STD, shapes_dataset
from rmix_fast.training.metrics import (
    HIDDEN_VISIBILITY,
    box_masks,
    evidence_terms,
    label_evidence,
    mix_evidence_terms,
    own_weight_map,
)
from rmix_fast.training.models import PixelClassifier, build_model


def cell_masks(*cells: tuple[int, int], side: int = 4, cell: int = 2) -> Tensor:
    """A (side, side) bool mask covering the given (row, column) cells of a grid of ``cell``-pixel cells."""
    m = torch.zeros(side, side, dtype=torch.bool)
    for i, j in cells:
        m[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] = True
    return m


def params_of(regions: list[list[list[int]]], perm: list[int], lam: list[float]) -> MixParams:
    """MixParams of a hand-made region map, with the engine's own lam_eff."""
    codes = torch.tensor(regions, dtype=torch.int8)
    lam_t = torch.tensor(lam, dtype=torch.float32)
    return MixParams(True, torch.tensor(perm), lam_t, region_label_weight(codes, lam_t), regions=codes)


# --------------------------------------------------------------------------------------------- the metric


def test_own_weight_map() -> None:
    regions = torch.tensor([[[BLEND, OWN], [PARTNER, 7]]], dtype=torch.int8)  # any other code reads as PARTNER
    w = own_weight_map(regions, torch.tensor([0.25]), 4, 6)
    expected = torch.tensor([[0.25] * 3 + [1.0] * 3] * 2 + [[0.0] * 6] * 2, dtype=torch.float64)
    assert w.dtype == torch.float64 and torch.equal(w[0], expected)
    with pytest.raises(ValueError, match="does not divide"):
        own_weight_map(regions, torch.tensor([0.25]), 5, 6)


def test_by_hand() -> None:
    # 4x4 images in 2x2 cells of 2x2 pixels; sample 0's object fills the top row of cells (8 px), sample 1's
    # the bottom-right cell (4 px); they are each other's partner.
    masks = torch.stack([cell_masks((0, 0), (0, 1)), cell_masks((1, 1))])
    params = params_of(
        [[[OWN, PARTNER], [BLEND, PARTNER]], [[OWN, PARTNER], [PARTNER, PARTNER]]], perm=[1, 0], lam=[0.5, 0.5]
    )
    # Sample 0: w_own = 1, 0 / 0.5, 0 -> lam_eff = (1 + 0.5) / 4. Own object: half its pixels own (w 1), half
    # partner -> vis_own 1/2; the partner's object sits in a partner cell -> vis_partner 1; e_own = 1/3.
    # Sample 1: w_own = 1 in the top-left cell only -> lam_eff 1/4. Own object (bottom right) taken by the
    # partner -> vis_own 0, hidden, carrying 1/4 of the label; the partner's object: its top-left half
    # is covered by own pixels -> vis_partner 1/2; e_own 0.
    assert params.lam_eff.tolist() == [0.375, 0.25]
    t = mix_evidence_terms(params, masks)
    assert t["vis_own"].tolist() == [0.5, 0.0]
    assert t["vis_partner"].tolist() == [1.0, 0.5]
    assert t["e_own"][0].item() == pytest.approx(1 / 3, abs=1e-15) and t["e_own"][1].item() == 0.0
    assert t["mismatch"].tolist() == pytest.approx([1 / 24, 1 / 4], abs=1e-15)
    assert t["hidden_mass"].tolist() == [0.0, 0.25]
    assert t["mismatch"].mean().item() == pytest.approx(7 / 48, abs=1e-15)  # the batch's numbers
    assert t["hidden_mass"].mean().item() == 0.125
    # Half the L1 distance between (lam_eff, 1 - lam_eff) and (e_own, 1 - e_own) is the same number.
    lam = params.lam_eff.double()
    l1 = (lam - t["e_own"]).abs() + ((1 - lam) - (1 - t["e_own"])).abs()
    assert torch.allclose(l1 / 2, t["mismatch"], rtol=0, atol=1e-15)


def test_neither_object_visible() -> None:
    # Sample 0 takes its partner's pixels over its own object and keeps its own over the partner's object:
    # no evidence for either label (0 / 0 -> e_own 1/2), and both label weights sit on hidden objects.
    masks = torch.stack([cell_masks((0, 0)), cell_masks((1, 1))])
    params = params_of([[[PARTNER, OWN], [OWN, OWN]], [[OWN, OWN], [OWN, OWN]]], perm=[1, 0], lam=[0.3, 0.3])
    t = mix_evidence_terms(params, masks)
    assert t["vis_own"][0].item() == 0.0 and t["vis_partner"][0].item() == 0.0
    assert t["e_own"][0].item() == 0.5
    assert t["mismatch"][0].item() == 0.25  # lam_eff 3/4
    assert t["hidden_mass"][0].item() == 1.0
    # Sample 1 keeps everything: its object whole (e_own 1, lam_eff 1), the partner's entirely hidden but
    # given no weight.
    assert t["mismatch"][1].item() == 0.0 and t["hidden_mass"][1].item() == 0.0


def test_hidden_threshold_is_strict() -> None:
    # 10 of 100 object pixels visible is exactly HIDDEN_VISIBILITY: not hidden; 9 of 100 is.
    assert HIDDEN_VISIBILITY == 0.1
    masks = torch.ones(2, 10, 10, dtype=torch.bool)
    w_own = torch.zeros(2, 10, 10, dtype=torch.float64)
    w_own[0, 0, :] = 1.0  # 10 pixels own
    w_own[1, 0, :9] = 1.0  # 9 pixels own
    lam_eff = w_own.mean(dim=(1, 2))
    t = evidence_terms(masks, torch.tensor([1, 0]), w_own, lam_eff)
    assert t["vis_own"].tolist() == pytest.approx([0.1, 0.09])
    assert t["hidden_mass"].tolist() == pytest.approx([0.0, 0.09])


def test_mixup_evidence_is_lam() -> None:
    # A blend shows lam of every own pixel and 1 - lam of every partner pixel, so e_own = lam = lam_eff for
    # any masks: no mismatch; an object counts as hidden exactly when its blend weight is below 0.1.
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 8, 8, generator=g) < 0.3
    for lam in (0.05, 0.3, 0.5, 0.95):
        params = params_of([[[BLEND]]] * 6, perm=[1, 2, 0, 4, 5, 3], lam=[lam] * 6)
        t = mix_evidence_terms(params, masks)
        assert torch.allclose(t["vis_own"], torch.full((6,), lam, dtype=torch.float64), atol=1e-7)
        assert torch.allclose(t["e_own"], params.lam_eff.double(), rtol=0, atol=1e-15)
        assert t["mismatch"].max().item() <= 1e-15
        lam32 = float(torch.tensor(lam))
        expected = lam32 if lam32 < 0.1 else (1 - lam32 if 1 - lam32 < 0.1 else 0.0)
        assert t["hidden_mass"].tolist() == pytest.approx([expected] * 6)


def test_mixup_through_label_evidence() -> None:
    # The same through the evaluation routine and a real Mixup: hidden mass lam or 1 - lam when below 0.1.
    g = torch.Generator().manual_seed(1)
    batch = [(torch.rand(8, 3, 8, 8, generator=g), torch.arange(8) % 3, torch.rand(8, 8, 8, generator=g) < 0.4)]
    hidden = 0
    for seed in range(8):
        mixer = Mixup(3, alpha=0.2)  # small alpha: lam near 0 or 1, hidden objects likely
        r = label_evidence(mixer, batch, seed=seed)
        lam, perm = float(mixer.last_params.lam[0]), mixer.last_params.perm
        mixed = (perm != torch.arange(8)).double().mean().item()  # samples paired with themselves stay whole
        assert r["n"] == 8 and r["mismatch"] <= 1e-12
        assert r["hidden_mass"] == pytest.approx(mixed * (lam if lam < 0.1 else (1 - lam if lam > 0.9 else 0.0)))
        hidden += r["hidden_mass"] > 0
    assert hidden > 0  # the seeds reach the hidden case


def test_self_pairs_and_pass_through() -> None:
    # A sample mixed with itself is its own image: mismatch 0, no hidden mass, whatever the map records.
    masks = torch.stack([cell_masks((0, 0)), cell_masks((1, 1))])
    regions = [[[PARTNER, OWN], [OWN, OWN]], [[OWN, PARTNER], [PARTNER, PARTNER]]]
    params = params_of(regions, perm=[0, 1], lam=[0.5, 0.5])
    t = mix_evidence_terms(params, masks)
    assert t["mismatch"].tolist() == [0.0, 0.0] and t["hidden_mass"].tolist() == [0.0, 0.0]
    # A batch the mixer passed through counts the same way.
    t = mix_evidence_terms(MixParams(applied=False), masks)
    assert t["mismatch"].tolist() == [0.0, 0.0] and t["hidden_mass"].tolist() == [0.0, 0.0]
    g = torch.Generator().manual_seed(0)
    batch = [(torch.rand(4, 3, 8, 8, generator=g), torch.arange(4), torch.rand(4, 8, 8, generator=g) < 0.5)]
    assert label_evidence(CutMix(4, prob=0.0), batch) == {"mismatch": 0.0, "hidden_mass": 0.0, "n": 4}


def test_empty_mask_is_invisible() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[1] = cell_masks((0, 0))
    params = params_of([[[OWN, OWN], [OWN, OWN]]] * 2, perm=[1, 0], lam=[0.5, 0.5])
    t = mix_evidence_terms(params, masks)
    assert t["vis_own"].tolist() == [0.0, 1.0] and t["hidden_mass"].tolist() == [1.0, 0.0]


def test_evidence_terms_bad_shapes() -> None:
    masks = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="w_own"):
        evidence_terms(masks, torch.tensor([1, 0]), torch.ones(2, 4, 5), torch.ones(2))
    with pytest.raises(ValueError, match="perm and lam_eff"):
        evidence_terms(masks, torch.tensor([1, 0, 2]), torch.ones(2, 4, 4), torch.ones(2))


def test_box_masks() -> None:
    m = torch.zeros(2, 6, 6, dtype=torch.bool)
    m[0, 1, 2] = m[0, 3, 4] = True  # two pixels: their box is rows 1-3, columns 2-4
    box = box_masks(m)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:4, 2:5] = True
    assert torch.equal(box[0], expected) and not box[1].any()


# ------------------------------------------------------------------------------------- the evaluation routine


class RecordingMixer(Mixup):
    """Mixup that needs the input gradient and keeps the last one it was given."""

    needs_grad = True

    def mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        self.grad = grad
        return super().mix(x, grad)


def test_oracle_saliency_is_the_mask() -> None:
    g = torch.Generator().manual_seed(0)
    x, masks = torch.rand(3, 3, 8, 8, generator=g), torch.rand(3, 8, 8, generator=g) < 0.2
    mixer = RecordingMixer(2)
    label_evidence(mixer, [(x, torch.tensor([0, 1, 0]), masks)], saliency="mask")
    assert mixer.grad.dtype == x.dtype and torch.equal(mixer.grad, masks[:, None].expand_as(x).float())
    label_evidence(mixer, [(x, torch.tensor([0, 1, 0]), masks)], saliency="box")
    assert torch.equal(mixer.grad, box_masks(masks)[:, None].expand_as(x).float())
    with pytest.raises(ValueError, match="pass a model"):
        label_evidence(mixer, [(x, torch.tensor([0, 1, 0]), masks)])  # batches carry no normalisation


@pytest.fixture(scope="module")
def small_shapes() -> InMemoryVisionDataset:
    return shapes_dataset("train", size=300, with_masks=True)


def test_label_evidence_on_shapes(small_shapes: InMemoryVisionDataset) -> None:
    mixer = RMix(10)
    before = mixer.generator
    r = label_evidence(mixer, small_shapes, batches=2, batch_size=20, seed=4)
    assert r["n"] == 40 and 0 <= r["mismatch"] <= 1 and 0 <= r["hidden_mass"] <= 1
    assert mixer.generator is before  # the routine's seeded generator is put back
    assert label_evidence(RMix(10), small_shapes, batches=2, batch_size=20, seed=4) == r  # same seed, same numbers
    # The untrained model is built without touching the global RNG.
    state = torch.get_rng_state()
    label_evidence(RMix(10), small_shapes, batches=1, batch_size=20)
    assert torch.equal(torch.get_rng_state(), state)
    # A model given is used as it is and left as it was (BatchNorm statistics restored).
    model = PixelClassifier(build_model("small_cnn", 10), SHAPES_MEAN, SHAPES_STD)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    label_evidence(RMix(10), small_shapes, model=model, batches=1, batch_size=20)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items()) and model.training


def test_label_evidence_bad_arguments(small_shapes: InMemoryVisionDataset) -> None:
    with pytest.raises(ValueError, match="object masks"):
        label_evidence(CutMix(10), build_dataset("shapes", "train", size=20))
    with pytest.raises(ValueError, match="saliency must be"):
        label_evidence(RMix(10), small_shapes, saliency="boxes")
    with pytest.raises(ValueError, match="batches must be"):
        label_evidence(CutMix(10), small_shapes, batches=0)
    with pytest.raises(ValueError, match="no batches"):
        label_evidence(CutMix(10), [])


# ---------------------------------------------------------------------------------------- shapes' masks


def test_make_shapes_masks() -> None:
    # The option adds the masks and changes nothing else (two chunks at 32x32, and another size).
    for size in (32, 20):
        plain = make_shapes(600, seed=7, image_size=size)
        images, labels, boxes, masks = make_shapes(600, seed=7, image_size=size, return_masks=True)
        assert all(torch.equal(a, b) for a, b in zip(plain, (images, labels, boxes), strict=True))
        assert masks.dtype == torch.bool and masks.shape == (600, size, size)
        # Each box is the tight box of its mask.
        rows, cols = masks.any(dim=2), masks.any(dim=1)
        for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
            r, c = rows[i].nonzero().squeeze(1), cols[i].nonzero().squeeze(1)
            assert (y0, y1, x0, x1) == (r[0], r[-1] + 1, c[0], c[-1] + 1)
        assert torch.equal(box_masks(masks).sum(dim=(1, 2)), (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]))
        # Masks fill roughly half to four fifths of their boxes (the shapes' fills, give or take pixel sampling).
        fill = masks.sum(dim=(1, 2)) / box_masks(masks).sum(dim=(1, 2))
        assert 0.3 < fill.min() and fill.max() < 0.95
    assert make_shapes(0, seed=1, return_masks=True)[3].shape == (0, 32, 32)


def test_shapes_dataset_masks() -> None:
    ds = shapes_dataset("test", size=50, seed=2, with_masks=True)
    plain = build_dataset("shapes", "test", size=50, seed=2)
    assert plain.masks is None
    assert torch.equal(ds.images, plain.images) and torch.equal(ds.boxes, plain.boxes)
    assert torch.equal(ds.masks, make_shapes(50, seed=5, return_masks=True)[3])  # test split: seed 2 * 2 + 1
    with pytest.raises(ValueError, match="masks must be"):
        InMemoryVisionDataset(
            ds.images, ds.labels, name="x", split="train", classes=["a"], mean=(0.5,) * 3, std=(0.5,) * 3,
            masks=ds.masks[:, :-1], train_augment="none",
        )  # fmt: skip


# ------------------------------------------------------------------------------------------ the CLI


def test_cli_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "evidence.json"
    assert evidence.main(["--batches", "2", "--seed", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "2 batches of 100" in lines[0] and lines[1].startswith("method") and "mismatch" in lines[1]
    saved = json.loads(out.read_text())
    assert list(saved["results"]) == list(evidence.METHODS)
    for method, r in saved["results"].items():
        row = next(line for line in lines if line.split(" |")[0].strip() == method)
        cells = [c.strip() for c in row.split("|")]
        assert cells[1:] == [f"{r['mismatch']:.3f}", f"{r['hidden_mass']:.3f}"]
        assert r["n"] == 200
    assert saved["results"]["mixup"]["mismatch"] < 1e-12
    assert math.isclose(saved["hidden_visibility"], HIDDEN_VISIBILITY)


def test_cli_checkpoint(tmp_path, capsys) -> None:
    # A stand-in for an rmix-train run (an untrained model in its checkpoint): adds the rmix-checkpoint row,
    # measured on the run's own training set.
    model = PixelClassifier(build_model("small_cnn", 10), SHAPES_MEAN, SHAPES_STD)
    config = {"dataset": "shapes", "model": "small_cnn", "seed": 1, "image_size": None, "train_size": 200}
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", {"model": model.state_dict(), "epoch": 0, "config": config})
    argv = ["--methods", "rmix-oracle", "--batches", "1", "--batch-size", "50", "--checkpoint", str(tmp_path / "run")]
    assert evidence.main(argv) == 0
    rows = [line.split(" |")[0].strip() for line in capsys.readouterr().out.splitlines()[3:]]
    assert rows == ["rmix-oracle", evidence.CHECKPOINT_METHOD]
    save_checkpoint(tmp_path / "c10.pt", {"model": {}, "epoch": 0, "config": {**config, "dataset": "cifar10"}})
    with pytest.raises(SystemExit, match="only shapes"):
        evidence.main(["--checkpoint", str(tmp_path / "c10.pt")])
    with pytest.raises(SystemExit):
        evidence.main(["--batches", "0"])
