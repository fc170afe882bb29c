"""Evaluation metrics (rmix_fast.training.metrics) against hand-computed values, and the plots.

Each metric is checked through the per-batch count that ``Evaluator.update`` adds up (``topk_hits``,
``add_to_bins``, ``fgsm_errors``, ``localization_hits``) and through ``Evaluator`` itself.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmix_fast.training.metrics import (
    N_BINS,
    CalibrationBins,
    Evaluator,
    add_to_bins,
    box_iou,
    cam_boxes,
    class_activation_maps,
    expected_calibration_error,
    fgsm,
    fgsm_errors,
    localization_hits,
    topk_hits,
)

RESULT_KEYS = {"loss", "top1", "top5", "ece", "fgsm_error", "loc_gt_known", "loc_top1", "n", "calibration"}


class TinyNet(nn.Module):
    """The CAM interface: conv features, global average pooling, one linear layer."""

    def __init__(self, num_classes: int = 5, channels: int = 3, features: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, features, 3, padding=1)
        self.classifier = nn.Linear(features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x).mean(dim=(2, 3)))


class FixedFeatures(nn.Module):
    """``forward_features`` ignores the input and returns a chosen (B, F, h, w) map."""

    def __init__(self, feats: Tensor, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("feats", feats)
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(bias if bias is not None else torch.zeros(weight.shape[0]))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.feats[: x.shape[0]]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x).mean(dim=(2, 3)))


def _bins(conf: Tensor, correct: Tensor, n_bins: int = N_BINS) -> CalibrationBins:
    """``add_to_bins`` on fresh sums, read back as ``CalibrationBins``."""
    sums = torch.zeros(3, n_bins, dtype=torch.float64)
    add_to_bins(sums, conf, correct)
    return CalibrationBins.from_sums(*sums)


def _logits_evaluator(num_classes: int) -> Evaluator:
    """An ``Evaluator`` whose model returns its input: ``update(logits[:, :, None, None], labels)`` scores
    ``logits`` as they are."""
    return Evaluator(nn.Flatten(), num_classes=num_classes, fgsm_eps=None)


# ---------------------------------------------------------------------------------------------- top-k


def test_topk_hits_hand_case() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.5],  # ranking 1, 3, 0, 2
            [2.0, 1.0, 3.0, 0.0],  # ranking 2, 0, 1, 3
            [0.0, 0.0, 1.0, 2.0],  # ranking 3, 2, then 0/1
        ]
    )
    labels = torch.tensor([1, 1, 2])  # top-1 hit; rank 3; rank 2
    counts, pred = topk_hits(logits, labels, ks=(1, 2, 3))
    assert counts.dtype == torch.int64 and counts.tolist() == [1, 2, 3]
    assert pred.tolist() == [1, 2, 3]
    assert topk_hits(logits, labels, ks=(3, 1))[0].tolist() == [3, 1]  # in the order of ks
    # k beyond K = 4 counts as K: every sample.
    assert topk_hits(logits, labels)[0].tolist() == [1, 3]  # ks = (1, 5)
    with pytest.raises(ValueError, match="every k"):
        topk_hits(logits, labels, ks=(0, 1))

    # Evaluator's top-1 / top-5 are these counts over n, in percent.
    ev = _logits_evaluator(4)
    ev.update(logits[:, :, None, None], labels)
    r = ev.result()
    assert r["top1"] == pytest.approx(100 / 3) and r["top5"] == 100.0 and r["n"] == 3


# ---------------------------------------------------------------------------------------- calibration


def test_ece_hand_computed_with_bin_edge_rule() -> None:
    # 15 bins of width 1/15; bin m holds (m-1)/15 < conf <= m/15, and conf 0 goes in bin 1.
    conf = torch.tensor([1 / 15, 0.05, 0.0, 0.5, 0.52, 0.95, 1.0], dtype=torch.float64)
    correct = torch.tensor([True, False, False, True, False, True, True])
    # bin 1  = {1/15 (right), 0.05, 0} (1/15 is on bin 1's upper edge, so it is NOT in bin 2):
    #          conf = (8/120 + 6/120 + 0)/3 = 7/180, acc = 1/3, |gap| = 60/180 - 7/180 = 53/180, weight 3/7 -> 53/420
    # bin 8  = (7/15, 8/15] = {0.5 (right), 0.52}: conf 0.51, acc 0.5, |gap| 0.01, weight 2/7 -> 1/350
    # bin 15 = (14/15, 1] = {0.95, 1.0} (both right): conf 0.975, acc 1, |gap| 0.025, weight 2/7 -> 1/140
    # ECE = 53/420 + 1/350 + 1/140 = (265 + 6 + 15)/2100 = 286/2100 = 143/1050 ~ 0.13619
    # (were 1/15 in bin 2, bins 1-2 would add 1/120 + 14/90 = 59/360 instead of 53/420, so the rule is tested.)
    bins = _bins(conf, correct)
    expected_count = torch.zeros(15, dtype=torch.int64)
    expected_count[[0, 7, 14]] = torch.tensor([3, 2, 2])
    assert torch.equal(bins.count, expected_count)
    assert bins.confidence[0].item() == pytest.approx(7 / 180)
    assert bins.accuracy[0].item() == pytest.approx(1 / 3)
    assert bins.confidence[7].item() == pytest.approx(0.51)
    assert bins.accuracy[14].item() == 1.0
    assert bins.edges.shape == (16,) and bins.edges[1].item() == 1 / 15 and bins.edges[-1].item() == 1.0
    assert expected_calibration_error(bins) == pytest.approx(143 / 1050, rel=1e-12)


def test_bin_edge_rule_in_float32() -> None:
    conf = torch.tensor([1 / 15, 2 / 15, 0.0, 1.0], dtype=torch.float32)
    bins = _bins(conf, torch.ones(4, dtype=torch.bool))
    assert bins.count[:2].tolist() == [2, 1] and bins.count[14].item() == 1


def test_ece_zero_when_perfectly_calibrated() -> None:
    # 10 samples at 0.3 with 3 right, 4 at 0.75 with 3 right, 5 at 1.0 all right: acc == conf in every bin.
    conf = torch.tensor([0.3] * 10 + [0.75] * 4 + [1.0] * 5, dtype=torch.float64)
    correct = torch.tensor([True] * 3 + [False] * 7 + [True] * 3 + [False] + [True] * 5)
    assert expected_calibration_error(_bins(conf, correct)) == pytest.approx(0.0, abs=1e-12)


def test_add_to_bins_rejects_mismatched_shapes() -> None:
    sums = torch.zeros(3, N_BINS, dtype=torch.float64)
    with pytest.raises(ValueError, match="conf and correct"):
        add_to_bins(sums, torch.rand(4), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="conf and correct"):
        add_to_bins(sums, torch.rand(2, 2), torch.ones(2, 2, dtype=torch.bool))
    assert not sums.any()
    with pytest.raises(ValueError, match="n_bins"):
        Evaluator(None, num_classes=3, n_bins=0)


def test_calibration_accumulates_over_batches() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g) * 3
    labels = torch.randint(0, 10, (64,), generator=g)
    images = logits[:, :, None, None]
    once, twice = _logits_evaluator(10), _logits_evaluator(10)
    once.update(images, labels)
    twice.update(images[:23], labels[:23])
    twice.update(images[23:], labels[23:])
    a, b = once.calibration(), twice.calibration()
    assert torch.equal(a.count, b.count) and a.n == 64
    torch.testing.assert_close(a.confidence, b.confidence, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.accuracy, b.accuracy, rtol=0, atol=1e-12)
    assert expected_calibration_error(a) == pytest.approx(expected_calibration_error(b), abs=1e-12)
    # what is binned: the softmax's top-1 confidence and whether the top-1 prediction is right
    probs = torch.softmax(logits, dim=1)
    ref = _bins(probs.amax(dim=1), probs.argmax(dim=1) == labels)
    assert torch.equal(a.count, ref.count)
    torch.testing.assert_close(a.confidence, ref.confidence, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.accuracy, ref.accuracy, rtol=0, atol=1e-12)
    assert once.result()["ece"] == pytest.approx(100 * expected_calibration_error(ref), abs=1e-10)
    # dict round trip (what the plots get)
    c = CalibrationBins.from_dict(a.to_dict())
    assert expected_calibration_error(c) == pytest.approx(expected_calibration_error(a), abs=1e-12)


# ---------------------------------------------------------------------------------------------- boxes


def test_box_iou_hand_cases() -> None:
    a = torch.tensor([[0, 4, 0, 4], [0, 2, 0, 2], [0, 4, 0, 4], [0, 4, 0, 4], [3, 3, 1, 5], [0, 4, 0, 4]])
    b = torch.tensor([[0, 4, 0, 4], [2, 4, 0, 2], [0, 4, 2, 6], [1, 3, 1, 3], [2, 2, 0, 0], [5, 9, 5, 9]])
    # identical 1; touching (disjoint half-open) 0; half overlap 8 / (16 + 16 - 8) = 1/3;
    # nested 4 / 16; two empty boxes 0; far apart 0
    expected = torch.tensor([1.0, 0.0, 1 / 3, 0.25, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(box_iou(a, b), expected)
    torch.testing.assert_close(box_iou(b, a), expected)
    # broadcasting: one prediction against several gt boxes each
    many = box_iou(a[:1, None], b[None, :3]).squeeze(0)
    # [0, 4, 0, 4] against itself 1, against [2, 4, 0, 2] (inside it) 4/16, against [0, 4, 2, 6] 1/3
    torch.testing.assert_close(many, torch.tensor([1.0, 0.25, 1 / 3], dtype=torch.float64))


def test_cam_boxes_picks_the_larger_blob() -> None:
    cam = torch.full((10, 12), 0.1)  # below 20 % of the max: background
    cam[1:3, 1:3] = 1.0  # 4 pixels, holds the max
    cam[5:8, 6:10] = 0.5  # 12 pixels, above 0.2 * 1.0
    assert cam_boxes(cam[None]).tolist() == [[5, 8, 6, 10]]
    # a higher threshold drops the weaker blob
    assert cam_boxes(cam[None], threshold=0.6).tolist() == [[1, 3, 1, 3]]


def test_cam_boxes_uses_4_connectivity_and_whole_image_for_zero_maps() -> None:
    cam = torch.zeros(2, 6, 8)
    cam[0, 0, 0:5] = 1.0  # 5 pixels in a row
    cam[0, 1:3, 5:7] = 1.0  # 4 pixels touching the row only diagonally at (0, 4)-(1, 5)
    boxes = cam_boxes(cam)  # sample 1 is all zero
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[0, 1, 0, 5], [0, 6, 0, 8]]


def _reference_box(mask: list[list[bool]]) -> list[int]:
    """BFS over 4-neighbours; largest component, first in raster order on ties."""
    h, w = len(mask), len(mask[0])
    seen = [[False] * w for _ in range(h)]
    best: list[tuple[int, int]] = []
    for sy in range(h):
        for sx in range(w):
            if not mask[sy][sx] or seen[sy][sx]:
                continue
            comp, queue = [], deque([(sy, sx)])
            seen[sy][sx] = True
            while queue:
                y, x = queue.popleft()
                comp.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        queue.append((ny, nx))
            if len(comp) > len(best):
                best = comp
    ys, xs = [p[0] for p in best], [p[1] for p in best]
    return [min(ys), max(ys) + 1, min(xs), max(xs) + 1]


def test_cam_boxes_matches_bfs_on_random_maps() -> None:
    g = torch.Generator().manual_seed(1)
    cams = torch.rand(12, 9, 11, generator=g) ** 3  # sparse-ish blobs above 0.2 * max
    # plus a serpentine: one long 4-connected path, the slow case for label propagation
    snake = torch.zeros(9, 11)
    snake[0::2] = 1.0
    for i, row in enumerate(range(1, 9, 2)):
        snake[row, 10 if i % 2 == 0 else 0] = 1.0
    cams = torch.cat([cams, snake[None]])
    boxes = cam_boxes(cams)
    for cam, box in zip(cams, boxes, strict=True):
        mask = (cam >= 0.2 * cam.max()).tolist()
        assert box.tolist() == _reference_box(mask)
    assert boxes[-1].tolist() == [0, 9, 0, 11]


# ------------------------------------------------------------------------------------------------ CAM


def test_cam_matches_the_formula() -> None:
    feats = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, F=2, 2, 2)
    weight = torch.tensor([[1.0, -1.0], [2.0, 1.0], [1.0, 1.0]])  # (K=3, F=2)
    model = FixedFeatures(feats.repeat(3, 1, 1, 1), weight, bias=torch.tensor([5.0, -3.0, 0.0]))
    x = torch.zeros(3, 1, 2, 2)  # input size == feature size: the upsampling is the identity
    cams = class_activation_maps(model, x, torch.tensor([0, 1, 2]))
    # class 0: 1*f0 - 1*f1 = [[1, 1], [3, 3]] -> min-max [[0, 0], [1, 1]] (the bias plays no part)
    # class 1: 2*f0 + 1*f1 = [[2, 5], [6, 9]] -> (v - 2)/7
    # class 2: f0 + f1 = [[1, 3], [3, 5]] -> (v - 1)/4
    expected = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 3 / 7], [4 / 7, 1.0]], [[0.0, 0.5], [0.5, 1.0]]])
    torch.testing.assert_close(cams, expected)


def test_cam_upsamples_to_the_input_and_constant_maps_are_zero() -> None:
    g = torch.Generator().manual_seed(2)
    feats = torch.rand(2, 3, 4, 4, generator=g)
    feats[1] = 0.7  # constant features -> constant CAM -> zeros
    weight = torch.randn(5, 3, generator=g)
    model = FixedFeatures(feats, weight)
    x = torch.zeros(2, 3, 16, 16)
    cams = class_activation_maps(model, x, torch.tensor([4, 2]))
    assert cams.shape == (2, 16, 16) and cams.dtype == torch.float32
    raw = torch.einsum("f,fhw->hw", weight[4], feats[0])
    up = F.interpolate(raw[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(cams[0], (up - up.min()) / (up.max() - up.min()))
    assert cams[0].min().item() == 0.0 and cams[0].max().item() == 1.0
    assert torch.equal(cams[1], torch.zeros(16, 16))


def _blob(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> Tensor:
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1.0
    return m


def test_localization_hits_hand_case() -> None:
    # F = 1; class 0 weight +1, class 1 weight -1, so logits = (+mean, -mean): the sign of the features decides.
    feats = torch.stack(
        [
            _blob(8, 8, 2, 5, 3, 7),  # label 0, predicted 0; CAM box [2, 5, 3, 7) == gt -> both hit
            -_blob(8, 8, 0, 2, 0, 2),  # label 1, predicted 1; CAM box [0, 2, 0, 2), gt far away -> miss
            _blob(8, 8, 2, 5, 3, 7),  # label 1, predicted 0; class-1 CAM = -blob: its largest region is the
            # ring around the blob, box = whole image == gt -> GT-known hit, but top-1 miss
        ]
    )[:, None]
    model = FixedFeatures(feats, torch.tensor([[1.0], [-1.0]]))
    x = torch.zeros(3, 1, 8, 8)
    labels = torch.tensor([0, 1, 1])
    boxes = torch.tensor([[2, 5, 3, 7], [4, 8, 4, 8], [0, 8, 0, 8]])
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    assert pred.tolist() == [0, 1, 0]
    # several gt boxes per image, padded with empty boxes: the best one counts
    multi = torch.stack([boxes, torch.zeros_like(boxes)], dim=1).flip(1)  # (3, 2, 4), the padding first
    for gt in (boxes, multi):
        gt_known, top1 = localization_hits(model, x, labels, gt, pred)
        assert gt_known.dtype == top1.dtype == torch.int64
        assert (gt_known.item(), top1.item()) == (2, 1)

        ev = Evaluator(model, num_classes=2, fgsm_eps=None, localize=True)
        ev.update(x, labels, gt)
        r = ev.result()
        assert r["n"] == 3
        assert r["loc_gt_known"] == pytest.approx(200 / 3) and r["loc_top1"] == pytest.approx(100 / 3)


# ----------------------------------------------------------------------------------------------- FGSM


def test_fgsm_on_a_linear_model() -> None:
    g = torch.Generator().manual_seed(3)
    c, h, w, k = 2, 4, 4, 3
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k))
    model.eval()
    x = 0.1 + 0.8 * torch.rand(5, c, h, w, generator=g)
    x[0, 0, 0, :] = 0.0  # pixels at the bounds: a step outwards is clamped away
    x[1, 1, 2, :] = 1.0
    y = torch.randint(0, k, (5,), generator=g)
    eps = 8 / 255
    with torch.no_grad():  # as an eval loop calls it
        x_adv = fgsm(model, x, y, eps)
        # d CE / d x of a linear model: (softmax(Wx + b) - onehot(y)) @ W, per sample
        lin = model[1]
        p = torch.softmax(lin(x.flatten(1)), dim=1)
        grad = ((p - F.one_hot(y, k).float()) @ lin.weight).view_as(x)
    assert not x_adv.requires_grad and x_adv.shape == x.shape
    assert torch.equal(x_adv, (x + eps * grad.sign()).clamp(0, 1))
    assert (grad != 0).all()
    step = x_adv - x
    inside = ((x + eps * grad.sign()) > 0) & ((x + eps * grad.sign()) < 1)
    torch.testing.assert_close(step[inside].abs(), torch.full_like(step[inside], eps))
    assert (torch.sign(step[inside]) == grad.sign()[inside]).all()
    assert (~inside).any() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    wrong = fgsm_errors(model, x, y, eps)
    assert wrong.dtype == torch.int64 and wrong.dim() == 0
    with torch.no_grad():
        assert wrong.item() == int((model(x_adv).argmax(1) != y).sum())
    # Evaluator's fgsm_error is this count over n, in percent (every sample counts).
    ev = Evaluator(model, num_classes=k, fgsm_eps=eps)
    ev.update(x, y)
    assert ev.result()["fgsm_error"] == pytest.approx(100 * wrong.item() / 5)
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------ Evaluator


def _data(n: int = 24, k: int = 5, seed: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 12, 12, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    y0 = torch.randint(0, 6, (n,), generator=g)
    x0 = torch.randint(0, 6, (n,), generator=g)
    boxes = torch.stack([y0, y0 + 6, x0, x0 + 6], dim=1)
    return x, y, boxes


def test_evaluator_result_keys_and_ranges() -> None:
    torch.manual_seed(0)
    model = TinyNet(num_classes=5).eval()
    x, y, boxes = _data()
    ev = Evaluator(model, num_classes=5, fgsm_eps=8 / 255, localize=True)
    for i in range(0, 24, 10):
        ev.update(x[i : i + 10], y[i : i + 10], boxes[i : i + 10])
    r = ev.result()
    assert set(r) == RESULT_KEYS
    assert r["n"] == 24 and isinstance(r["n"], int)
    with torch.no_grad():
        logits = model(x)
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert r["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    assert r["top5"] == 100.0  # K = 5
    for key in ("top1", "ece", "fgsm_error", "loc_gt_known", "loc_top1"):
        assert 0.0 <= r[key] <= 100.0, key
    assert r["loc_top1"] <= r["loc_gt_known"]
    assert sum(r["calibration"]["count"]) == 24 and len(r["calibration"]["edges"]) == 16
    assert all(p.grad is None for p in model.parameters())

    plain = Evaluator(model, num_classes=5, fgsm_eps=None, localize=True)
    plain.update(x, y)  # no boxes: no localisation
    r2 = plain.result()
    assert r2["fgsm_error"] is None and r2["loc_gt_known"] is None and r2["loc_top1"] is None
    assert r2["top1"] == pytest.approx(r["top1"]) and r2["ece"] == pytest.approx(r["ece"])

    with pytest.raises(ValueError, match="logits"):
        Evaluator(model, num_classes=7, fgsm_eps=None).update(x, y)


def test_evaluator_under_autocast() -> None:
    torch.manual_seed(0)
    model = TinyNet(num_classes=5).eval()
    x, y, boxes = _data(n=8)
    ev = Evaluator(model, num_classes=5, fgsm_eps=4 / 255, localize=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ev.update(x, y, boxes)
        cams = class_activation_maps(model, x, y)
    r = ev.result()
    assert cams.dtype == torch.float32 and r["n"] == 8
    assert all(0.0 <= r[k] <= 100.0 for k in ("top1", "ece", "fgsm_error", "loc_gt_known"))


def test_state_merge_round_trip() -> None:
    torch.manual_seed(0)
    model = TinyNet(num_classes=5).eval()
    x, y, boxes = _data(n=20)
    whole, a, b = (Evaluator(model, num_classes=5, fgsm_eps=8 / 255, localize=True) for _ in range(3))
    whole.update(x, y, boxes)
    a.update(x[:7], y[:7], boxes[:7])
    b.update(x[7:], y[7:], boxes[7:])
    sa, sb = a.state(), b.state()
    assert sa.dtype == torch.float64 and sa.dim() == 1 and sa.numel() == Evaluator.state_size()
    a.merge(sa + sb)  # what the CLI does after all_reduce: the total replaces the rank's own sums
    gathered = Evaluator.from_states([sa, sb], num_classes=5)
    expected = whole.result()
    for r in (a.result(), gathered.result()):
        assert r.keys() == expected.keys()
        for key, value in expected.items():
            if key == "calibration":
                assert r[key]["count"] == value["count"]
                assert r[key]["accuracy"] == pytest.approx(value["accuracy"])
            else:
                assert r[key] == pytest.approx(value, rel=1e-6), key
    with pytest.raises(ValueError):
        a.merge(torch.zeros(3))
    with pytest.raises(ValueError):
        Evaluator(model, num_classes=5).result()  # nothing seen


def test_metrics_module_does_not_import_matplotlib() -> None:
    code = "import sys, rmix_fast.training.metrics, rmix_fast.training.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------- plots


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 100 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from rmix_fast.training.plots import plot_comparison, plot_curves, plot_reliability

    history = [
        {"epoch": e, "train_loss": 2.0 / e, "train_top1": 10.0 * e, "test_loss": None, "test_top1": None}
        for e in range(1, 4)
    ]
    history.append({"epoch": 4, "train_loss": 0.4, "train_top1": 45.0, "test_loss": 0.6, "test_top1": 40.0})
    out = plot_curves(history, tmp_path / "a" / "curves.png")
    assert out == tmp_path / "a" / "curves.png" and _is_png(out)

    conf = torch.tensor([0.05, 0.3, 0.35, 0.6, 0.9, 0.95, 1.0], dtype=torch.float64)
    correct = torch.tensor([False, True, False, True, True, False, True])
    cal = _bins(conf, correct).to_dict()
    assert _is_png(plot_reliability(cal, tmp_path / "b" / "rel.png", title="test"))
    empty = _bins(torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)).to_dict()
    assert _is_png(plot_reliability(empty, tmp_path / "rel_empty.png"))

    results = {
        "vanilla": {"top1": 70.0, "ece": 8.0, "fgsm_error": 60.0, "loc_gt_known": None},
        "rmix": {"top1": 75.0, "ece": 3.0, "fgsm_error": 45.0, "loc_gt_known": 50.0},
    }
    assert _is_png(plot_comparison(results, tmp_path / "c" / "cmp.png"))
