"""Evaluation metrics: top-k accuracy, calibration (ECE), FGSM robustness and CAM weakly-supervised localisation.

``Evaluator`` is what a training or evaluation loop feeds batch by batch::

    model.eval()
    ev = Evaluator(model, num_classes=100, fgsm_eps=8 / 255, localize=False)
    for x, y in loader:          # x: pixels in [0, 1]
        ev.update(x, y)
    print(ev.result())           # accuracies, errors and ECE in percent (0-100)

Every quantity is a sum kept in one flat float64 tensor, so a distributed run sums ``ev.state()`` over
ranks (``all_reduce``) and hands the total back with ``ev.merge(total)`` before calling ``result()``.

Models are duck-typed: ``model(x) -> (B, K)`` logits, and for class activation maps also
``model.forward_features(x) -> (B, F, h, w)`` (the last feature map before global average pooling) and
``model.classifier`` (an ``nn.Linear(F, K)``), with ``logits = classifier(features.mean((2, 3)))``.

Boxes are integer ``[y0, y1, x0, x1)`` in pixels, half-open: rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmix_fast.saliency import unwrap_model

__all__ = [
    "CalibrationAccumulator",
    "CalibrationBins",
    "Evaluator",
    "box_iou",
    "calibration_bins",
    "cam_boxes",
    "class_activation_maps",
    "expected_calibration_error",
    "fgsm",
    "fgsm_error",
    "localization_counts",
    "topk_correct",
]

N_BINS = 15  # Guo et al. 2017
CAM_THRESHOLD = 0.2  # Zhou et al. 2016: keep the CAM above 20 % of its max
IOU_HIT = 0.5  # a localisation counts when IoU >= 0.5
CONSTANT_RTOL = 1e-5  # a CAM whose range is below this fraction of its magnitude counts as constant


def _sums_device(device: torch.device) -> torch.device:
    # float64 sums: MPS has no float64, so they stay on the CPU there.
    return torch.device("cpu") if device.type == "mps" else device


# --------------------------------------------------------------------------------------------- top-k


def _topk_hits(logits: Tensor, labels: Tensor, ks: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(len(ks),) int64 device tensor of top-k hit counts and the (B,) top-1 predictions, with one topk call."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (B, K) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    num_classes = logits.shape[1]
    kmax = min(max(ks), num_classes)
    top = logits.topk(kmax, dim=1).indices  # (B, kmax), best first
    hit = top == labels.view(-1, 1)  # at most one True per row
    # k beyond K is clipped: with K classes the true class is always within the top K.
    counts = torch.stack([hit[:, : min(k, num_classes)].sum() for k in ks])
    return counts, top[:, 0]


def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many samples have their label among the k largest logits, for each k in ``ks``.

    Args:
        logits: (B, K) scores.
        labels: (B,) int64 class indices.
        ks: the k values; a k larger than K counts as K (so top-5 of a 4-class problem is every sample).

    Returns:
        ``{k: count}`` with the original k values as keys.
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    counts, _ = _topk_hits(logits, labels, ks)
    return {k: int(c) for k, c in zip(ks, counts.tolist(), strict=True)}


# --------------------------------------------------------------------------------------- calibration


def bin_edges(n_bins: int = N_BINS) -> Tensor:
    """(n_bins + 1,) float64 edges 0, 1/M, ..., 1; each computed as m / M so 1/15 here equals Python's 1 / 15."""
    return torch.arange(n_bins + 1, dtype=torch.float64) / n_bins


def _bin_index(conf: Tensor, n_bins: int) -> Tensor:
    """(N,) bin of each confidence: bin m (0-based) holds m/M < conf <= (m+1)/M, and conf == 0 goes in bin 0.

    ``bucketize(right=False)`` returns i with ``inner[i-1] < conf <= inner[i]``: exactly the rule above. The
    edges are compared in the confidences' own dtype, so a float32 confidence equal to float32(1/15) lands in
    the first bin rather than being pushed over the edge by a float64 comparison.
    """
    inner = bin_edges(n_bins)[1:-1].to(device=conf.device, dtype=conf.dtype)
    return torch.bucketize(conf, inner, right=False).clamp_(0, n_bins - 1)


def _add_to_bins(sums: Tensor, conf: Tensor, correct: Tensor) -> None:
    """Adds (N,) confidences and correctness to (3, M) per-bin sums (count, confidence, correct) in place,
    on the sums' device; no host sync, so it is safe to call every batch."""
    conf, correct = conf.detach().to(sums.device), correct.to(sums.device)
    values = torch.stack([torch.ones_like(conf, dtype=torch.float64), conf.double(), correct.double()])
    sums.index_add_(1, _bin_index(conf, sums.shape[1]), values)


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width confidence bins over [0, 1] (all CPU float64 except ``count``).

    Attributes:
        edges: (M + 1,) bin edges; bin m covers (edges[m], edges[m + 1]] (the first also holds 0).
        count: (M,) int64 number of samples per bin.
        confidence: (M,) mean top-1 confidence in each bin (0 for an empty bin).
        accuracy: (M,) fraction correct in each bin, in [0, 1] (0 for an empty bin).
    """

    edges: Tensor
    count: Tensor
    confidence: Tensor
    accuracy: Tensor

    @property
    def n_bins(self) -> int:
        return int(self.count.numel())

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @classmethod
    def from_sums(cls, count: Tensor, conf_sum: Tensor, correct_sum: Tensor) -> CalibrationBins:
        """From per-bin sums (count, sum of confidences, number correct), each (M,)."""
        count = count.detach().to("cpu", torch.float64)
        safe = count.clamp(min=1)  # empty bins: 0 / 1 = 0
        return cls(
            edges=bin_edges(count.numel()),
            count=count.round().to(torch.int64),
            confidence=conf_sum.detach().to("cpu", torch.float64) / safe,
            accuracy=correct_sum.detach().to("cpu", torch.float64) / safe,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (JSON-ready; what ``plots.plot_reliability`` takes). Accuracy and confidence in [0, 1]."""
        return {
            "n_bins": self.n_bins,
            "edges": self.edges.tolist(),
            "count": self.count.tolist(),
            "confidence": self.confidence.tolist(),
            "accuracy": self.accuracy.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationBins:
        return cls(
            edges=torch.tensor(d["edges"], dtype=torch.float64),
            count=torch.tensor(d["count"], dtype=torch.int64),
            confidence=torch.tensor(d["confidence"], dtype=torch.float64),
            accuracy=torch.tensor(d["accuracy"], dtype=torch.float64),
        )


def expected_calibration_error(bins: CalibrationBins) -> float:
    """ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|, a fraction in [0, 1] (0.0 when there are no samples)."""
    n = bins.n
    if n == 0:
        return 0.0
    weight = bins.count.to(torch.float64) / n
    return float((weight * (bins.accuracy - bins.confidence).abs()).sum())


class CalibrationAccumulator:
    """Per-bin sums over any number of batches (float64, on the device of the batches; CPU for MPS).

    ``update(logits, labels)`` bins the softmax's top-1 confidence; ``update_confidences(conf, correct)``
    takes them directly. ``bins()`` gives the ``CalibrationBins`` of everything seen so far.
    """

    def __init__(self, n_bins: int = N_BINS) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.sums = torch.zeros(3, n_bins, dtype=torch.float64)  # rows: count, sum of confidence, number correct

    def update_confidences(self, conf: Tensor, correct: Tensor) -> None:
        """conf: (N,) top-1 confidence in [0, 1]; correct: (N,) bool, whether the top-1 prediction was right."""
        if conf.dim() != 1 or correct.shape != conf.shape:
            raise ValueError(f"conf and correct must be (N,) each, got {tuple(conf.shape)} and {tuple(correct.shape)}")
        device = _sums_device(conf.device)
        if self.sums.device != device:
            self.sums = self.sums.to(device)
        _add_to_bins(self.sums, conf, correct)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        """logits: (B, K); labels: (B,) int64."""
        probs = torch.softmax(logits.detach().float(), dim=1)
        conf, pred = probs.max(dim=1)
        self.update_confidences(conf, pred == labels)

    def bins(self) -> CalibrationBins:
        return CalibrationBins.from_sums(self.sums[0], self.sums[1], self.sums[2])


def calibration_bins(probs_max: Tensor, correct: Tensor, n_bins: int = N_BINS) -> CalibrationBins:
    """Bins (N,) top-1 confidences with (N,) bool correctness into ``n_bins`` equal-width bins over [0, 1]."""
    acc = CalibrationAccumulator(n_bins)
    acc.update_confidences(probs_max, correct)
    return acc.bins()


# ---------------------------------------------------------------------------------------------- FGSM


def fgsm(model: nn.Module, x01: Tensor, labels: Tensor, eps: float = 8 / 255) -> Tensor:
    """Fast gradient sign attack: ``clamp(x + eps * sign(d CE / d x), 0, 1)``.

    Args:
        model: pixels in [0, 1] -> (B, K) logits. Its mode is left as is (put it in eval first, or BatchNorm
            layers update their running statistics).
        x01: (B, C, H, W) images in [0, 1].
        labels: (B,) int64.
        eps: step size on the [0, 1] pixel scale.

    Returns:
        (B, C, H, W) adversarial images, detached, of ``x01``'s dtype.

    Only d loss / d x is computed (``torch.autograd.grad(inputs=x)``): no ``param.grad`` is written. Works when
    the caller is under ``torch.no_grad()`` (grad is re-enabled here) or autocast; not under inference_mode.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("fgsm needs autograd; call it under torch.no_grad() rather than torch.inference_mode()")
    model = unwrap_model(model)
    x = x01.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        # Summed, not averaged: the sign is the same, and per-sample gradients do not shrink with the batch
        # size (a mean loss can underflow to zero gradients in float16).
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, inputs=x)
    return (x01.detach() + eps * grad.sign()).clamp_(0.0, 1.0)


def _fgsm_wrong(model: nn.Module, x01: Tensor, labels: Tensor, eps: float) -> Tensor:
    x_adv = fgsm(model, x01, labels, eps)
    with torch.no_grad():
        return (model(x_adv).argmax(dim=1) != labels).sum()


def fgsm_error(model: nn.Module, x01: Tensor, labels: Tensor, eps: float = 8 / 255) -> int:
    """Number of samples of the batch misclassified after the FGSM attack (all samples count, not only those
    classified correctly before it)."""
    return int(_fgsm_wrong(model, x01, labels, eps))


# ----------------------------------------------------------------------------------- CAM localisation


def class_activation_maps(model: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    """Class activation maps (Zhou et al. 2016) of one class per sample.

    ``CAM_b = sum_f W[classes[b], f] * features[b, f]`` (the classifier bias shifts the map by a constant and is
    left out), upsampled bilinearly to the input size, then min-max normalised per sample to [0, 1]; a constant
    map (range below ``CONSTANT_RTOL`` times its largest magnitude, or exactly 0) gives zeros.

    Args:
        model: has ``forward_features(x) -> (B, F, h, w)`` and ``classifier`` (``nn.Linear(F, K)``).
        x: (B, C, H, W) model input.
        classes: (B,) int64, the class whose map each sample gets.

    Returns:
        (B, H, W) float32 maps in [0, 1], detached.
    """
    model = unwrap_model(model)
    with torch.no_grad():
        features = model.forward_features(x)
        # float32 from here: under autocast einsum would run in half precision.
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = model.classifier.weight.float()[classes]  # (B, F)
            cam = torch.einsum("bf,bfhw->bhw", weight, features.float())
            cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            lo = cam.amin(dim=(1, 2), keepdim=True)
            span = cam.amax(dim=(1, 2), keepdim=True) - lo
            # "Constant" up to rounding: the weighted sum of a constant map differs in the last bits from one
            # position to the next (vectorised reductions), and min-max would blow that noise up to [0, 1].
            flat = span <= CONSTANT_RTOL * cam.abs().amax(dim=(1, 2), keepdim=True)
            return torch.where(flat, 0.0, (cam - lo) / torch.where(flat, 1.0, span))


def _compress(parent: Tensor) -> Tensor:
    """Pointer jumping until every node points at its root (depth halves each pass: log-many passes)."""
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            return parent
        parent = grand


def connected_components(mask: Tensor) -> Tensor:
    """4-connected components of a (B, H, W) bool mask, all samples at once on the mask's device.

    Returns (B, H, W) int64 labels: each foreground pixel gets the flat index (into the B*H*W batch) of the
    first pixel, in raster order, of its component; background pixels get B*H*W.

    Why this algorithm: a union-find run as whole-tensor ops (hook, then compress, in the style of
    Shiloach-Vishkin), so it is GPU-friendly and has no Python loop over pixels, and it needs a few rounds
    rather than one round per pixel of a component's extent (plain min-label propagation took ~250 rounds on
    224 x 224 CAM blobs). Every pixel starts as its own root. Each round, every foreground edge whose ends have
    different roots hooks the larger root onto the smaller (``scatter_reduce`` amin resolves several hooks on
    one root), then pointer jumping flattens the trees. A parent is always a smaller index of the same
    component, so there are no cycles, each component's root ends as its smallest (first raster) pixel, and
    every round with an unmerged edge merges trees, so the loop ends.
    """
    b, h, w = mask.shape
    n = b * h * w
    idx = torch.arange(n, device=mask.device).view(b, h, w)
    # Edges between foreground 4-neighbours (rows never wrap between images: the shifts stay in each image).
    right = mask[:, :, :-1] & mask[:, :, 1:]
    down = mask[:, :-1, :] & mask[:, 1:, :]
    src = torch.cat([idx[:, :, :-1][right], idx[:, :-1, :][down]])
    dst = torch.cat([idx[:, :, 1:][right], idx[:, 1:, :][down]])
    parent = idx.reshape(-1).clone()
    while src.numel() > 0:
        rs, rd = parent[src], parent[dst]
        open_ = rs != rd
        if not bool(open_.any()):
            break
        rs, rd = rs[open_], rd[open_]
        parent.scatter_reduce_(0, torch.maximum(rs, rd), torch.minimum(rs, rd), reduce="amin")
        parent = _compress(parent)
        src, dst = src[open_], dst[open_]  # edges already inside one tree stay so: drop them
    return torch.where(mask, parent.view(b, h, w), n)


def cam_boxes(cams: Tensor, threshold: float = CAM_THRESHOLD) -> Tensor:
    """Bounding box of the largest 4-connected region where ``cam >= threshold * max(cam)``, per sample.

    Args:
        cams: (B, H, W) non-negative maps (e.g. from ``class_activation_maps``).
        threshold: fraction of each map's maximum (0.2 as in the CAM paper).

    Returns:
        (B, 4) int64 ``[y0, y1, x0, x1)``. Ties between equally large regions go to the one whose first pixel
        comes first in raster order. A map whose max is <= 0 (e.g. all zero) gives the whole image.
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be (B, H, W), got {tuple(cams.shape)}")
    b, h, w = cams.shape
    cams = cams.detach().float()
    peak = cams.amax(dim=(1, 2), keepdim=True)
    mask = (cams >= threshold * peak) | (peak <= 0)
    lab = connected_components(mask)
    n = b * h * w
    sizes = torch.bincount(lab.view(-1), minlength=n + 1)[:n].view(b, h * w)
    root = sizes.argmax(dim=1) + torch.arange(b, device=cams.device) * (h * w)  # first largest on ties
    keep = lab == root.view(b, 1, 1)
    rows = keep.any(dim=2).to(torch.uint8)  # (B, H)
    cols = keep.any(dim=1).to(torch.uint8)  # (B, W)
    # argmax returns the first maximal index: the first row/column that holds the region.
    y0, y1 = rows.argmax(dim=1), h - rows.flip(1).argmax(dim=1)
    x0, x1 = cols.argmax(dim=1), w - cols.flip(1).argmax(dim=1)
    return torch.stack([y0, y1, x0, x1], dim=1).to(torch.int64)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows of two (N, 4) ``[y0, y1, x0, x1)`` box sets -> (N,) float64.

    Area is ``(y1 - y0) * (x1 - x0)`` (negative extents count as 0). Disjoint boxes give 0, and so do two
    empty boxes (no union). Broadcasts over leading dimensions, e.g. (N, 1, 4) against (N, M, 4).
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    ih = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    iw = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 2], b[..., 2])).clamp(min=0)
    inter = ih * iw

    def area(t: Tensor) -> Tensor:
        return (t[..., 1] - t[..., 0]).clamp(min=0) * (t[..., 3] - t[..., 2]).clamp(min=0)

    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)


def _best_iou(pred: Tensor, gt: Tensor) -> Tensor:
    """(B,) IoU of each predicted (B, 4) box with its gt box (B, 4), or the best of its gt boxes (B, M, 4)."""
    if gt.dim() == 2:
        return box_iou(pred, gt)
    if gt.dim() == 3:
        # Padding rows (empty boxes) have IoU 0 and never win.
        return box_iou(pred[:, None], gt).amax(dim=1)
    raise ValueError(f"boxes must be (B, 4) or (B, M, 4), got {tuple(gt.shape)}")


def _loc_hits(
    model: nn.Module, x: Tensor, labels: Tensor, boxes: Tensor, pred: Tensor, threshold: float
) -> tuple[Tensor, Tensor]:
    """Device counts (GT-known hits, top-1 hits) for one batch; ``pred`` is the (B,) top-1 prediction."""
    cams = class_activation_maps(model, x, labels)
    hit = _best_iou(cam_boxes(cams, threshold), boxes.to(x.device)) >= IOU_HIT
    # When the prediction is right, the predicted class's CAM is the true class's CAM: one map serves both.
    return hit.sum(), (hit & (pred == labels)).sum()


def localization_counts(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    boxes: Tensor,
    *,
    logits: Tensor | None = None,
    threshold: float = CAM_THRESHOLD,
) -> dict[str, int]:
    """CAM localisation hits on one batch.

    Args:
        model: the CAM interface (``forward_features``, ``classifier``) and ``model(x) -> logits``.
        x: (B, C, H, W) input; boxes are in its pixel coordinates.
        labels: (B,) true classes.
        boxes: (B, 4) ground-truth ``[y0, y1, x0, x1)`` boxes, or (B, M, 4) with several per image (padded
            with empty boxes such as all zeros); the best-matching one counts.
        logits: (B, K) if already computed (else ``model(x)`` is run for the top-1 prediction).
        threshold: CAM threshold as a fraction of the max.

    Returns:
        ``{"n": B, "gt_known": #IoU >= 0.5 with the true class's CAM box, "top1": #(top-1 right and IoU >= 0.5)}``.
    """
    if logits is None:
        with torch.no_grad():
            logits = model(x)
    gt_known, top1 = _loc_hits(model, x, labels, boxes, logits.argmax(dim=1), threshold)
    return {"n": int(labels.numel()), "gt_known": int(gt_known), "top1": int(top1)}


# ------------------------------------------------------------------------------------------ Evaluator

# Layout of the scalar part of Evaluator's state; the calibration bins' count, confidence and correct sums follow.
_FIELDS = ("n", "loss", "top1", "top5", "fgsm_n", "fgsm_wrong", "loc_n", "loc_gt_known", "loc_top1")
_F = {name: i for i, name in enumerate(_FIELDS)}


class Evaluator:
    """Accumulates every test metric over batches; ``result()`` reports them.

    Args:
        model: pixels in [0, 1] -> (B, K) logits; for ``localize`` also ``forward_features`` and ``classifier``.
            Its train/eval mode is not changed: put it in eval mode first. None makes a result-only
            evaluator (see ``from_states``).
        num_classes: K.
        fgsm_eps: FGSM step on the [0, 1] pixel scale, or None to skip the attack.
        localize: compute CAM localisation when ``update`` gets boxes.
        n_bins: calibration bins.
        cam_threshold: CAM box threshold (fraction of the max).

    ``update`` may run under the caller's autocast (logits are cast to float32) and under ``torch.no_grad``.
    All sums stay on the device of the batches (on the CPU for MPS, which has no float64), so ``update`` does
    not wait for the device, except for the few host syncs of the CAM boxes' loop when localising.
    """

    def __init__(
        self,
        model: nn.Module | None,
        *,
        num_classes: int,
        fgsm_eps: float | None = 8 / 255,
        localize: bool = False,
        n_bins: int = N_BINS,
        cam_threshold: float = CAM_THRESHOLD,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if fgsm_eps is not None and fgsm_eps < 0:
            raise ValueError(f"fgsm_eps must be >= 0 or None, got {fgsm_eps}")
        if localize and model is not None:
            inner = unwrap_model(model)
            if not (hasattr(inner, "forward_features") and hasattr(inner, "classifier")):
                raise TypeError("localize=True needs a model with forward_features and classifier")
        self.model = model
        self.num_classes = num_classes
        self.fgsm_eps = fgsm_eps
        self.localize = localize
        self.n_bins = n_bins
        self.cam_threshold = cam_threshold
        param = next(model.parameters(), None) if model is not None else None
        device = _sums_device(param.device) if param is not None else torch.device("cpu")
        self._sums = torch.zeros(self.state_size(n_bins), dtype=torch.float64, device=device)

    @staticmethod
    def state_size(n_bins: int = N_BINS) -> int:
        """Length of ``state()``: the scalar sums plus three per calibration bin."""
        return len(_FIELDS) + 3 * n_bins

    def _add(self, name: str, value: Tensor | float) -> None:
        self._sums[_F[name]] += value.to(self._sums.device) if isinstance(value, Tensor) else value

    def update(self, x01: Tensor, labels: Tensor, boxes: Tensor | None = None) -> None:
        """Adds one batch.

        Args:
            x01: (B, C, H, W) images in [0, 1].
            labels: (B,) int64.
            boxes: ground-truth boxes for localisation, (B, 4) or (B, M, 4) ``[y0, y1, x0, x1)`` in pixels of
                ``x01``; ignored unless ``localize``.
        """
        if self.model is None:
            raise RuntimeError("this Evaluator has no model (built by from_states); it can only report")
        device = _sums_device(x01.device)
        if self._sums.device != device:
            self._sums = self._sums.to(device)
        labels = labels.to(x01.device)
        with torch.no_grad():
            logits = self.model(x01).float()  # float32 even under autocast
        if logits.shape != (labels.shape[0], self.num_classes):
            raise ValueError(
                f"expected logits of shape ({labels.shape[0]}, {self.num_classes}), got {tuple(logits.shape)}"
            )
        hits, pred = _topk_hits(logits, labels, (1, 5))
        self._add("n", labels.shape[0])
        self._add("loss", F.cross_entropy(logits, labels, reduction="sum"))
        self._add("top1", hits[0])
        self._add("top5", hits[1])
        # The predicted class of calibration is the top-1 prediction above (same tie-breaking).
        conf = torch.softmax(logits, dim=1).gather(1, pred[:, None])[:, 0]
        _add_to_bins(self._sums[len(_FIELDS) :].view(3, self.n_bins), conf, pred == labels)
        if self.fgsm_eps is not None:
            self._add("fgsm_n", labels.shape[0])
            self._add("fgsm_wrong", _fgsm_wrong(self.model, x01, labels, self.fgsm_eps))
        if self.localize and boxes is not None:
            gt_known, top1 = _loc_hits(self.model, x01, labels, boxes, pred, self.cam_threshold)
            self._add("loc_n", labels.shape[0])
            self._add("loc_gt_known", gt_known)
            self._add("loc_top1", top1)

    # -- distributed: sum state() over ranks, then merge() the total ------------------------------------

    def state(self) -> Tensor:
        """A copy of all sums: a flat float64 tensor of length ``state_size(n_bins)`` on the batches' device.

        Every entry is a plain sum over samples, so summing states (``all_reduce``) combines evaluators.
        """
        return self._sums.clone()

    def merge(self, total: Tensor) -> None:
        """Replaces this evaluator's sums with ``total``: the sum of every rank's ``state()``, e.g. after
        ``dist.all_reduce(s := ev.state())``. ``total`` already holds this rank's own sums, so they are not
        added again. Any device; kept on this evaluator's device."""
        if total.shape != self._sums.shape:
            raise ValueError(f"state must have shape {tuple(self._sums.shape)}, got {tuple(total.shape)}")
        self._sums = total.detach().to(device=self._sums.device, dtype=torch.float64).clone()

    def add_state(self, other: Tensor) -> None:
        """Adds another evaluator's ``state()`` (a different shard) to this one."""
        self.merge(self._sums + other.to(device=self._sums.device, dtype=torch.float64))

    @classmethod
    def from_states(cls, states: Iterable[Tensor], *, num_classes: int, n_bins: int = N_BINS) -> Evaluator:
        """A result-only evaluator holding the sum of several ``state()`` tensors (e.g. gathered from ranks)."""
        ev = cls(None, num_classes=num_classes, fgsm_eps=None, n_bins=n_bins)
        for s in states:
            ev.add_state(s.cpu())
        return ev

    # -- report ----------------------------------------------------------------------------------------

    @property
    def n(self) -> int:
        return int(self._sums[_F["n"]])

    def calibration(self) -> CalibrationBins:
        cal = self._sums[len(_FIELDS) :].view(3, self.n_bins)
        return CalibrationBins.from_sums(cal[0], cal[1], cal[2])

    def result(self) -> dict[str, Any]:
        """The metrics of every sample seen (or merged).

        Returns:
            ``loss``: mean cross-entropy; ``top1``, ``top5``: accuracy in percent (0-100); ``ece``: expected
            calibration error in percent (0-100, ``n_bins`` equal-width bins); ``fgsm_error``: percent of samples
            misclassified after FGSM, None if no attack ran; ``loc_gt_known``, ``loc_top1``: CAM localisation
            accuracy in percent, None if no boxes were given; ``n``: number of samples; ``calibration``:
            ``CalibrationBins.to_dict()`` (fractions in [0, 1], for ``plots.plot_reliability``).
        """
        s = self._sums.cpu().tolist()
        n = s[_F["n"]]
        if n <= 0:
            raise ValueError("Evaluator.result() before any sample was added")

        def pct(num: str, den: str) -> float | None:
            d = s[_F[den]]
            return 100.0 * s[_F[num]] / d if d > 0 else None

        bins = self.calibration()
        return {
            "loss": s[_F["loss"]] / n,
            "top1": 100.0 * s[_F["top1"]] / n,
            "top5": 100.0 * s[_F["top5"]] / n,
            "ece": 100.0 * expected_calibration_error(bins),
            "fgsm_error": pct("fgsm_wrong", "fgsm_n"),
            "loc_gt_known": pct("loc_gt_known", "loc_n"),
            "loc_top1": pct("loc_top1", "loc_n"),
            "n": round(n),
            "calibration": bins.to_dict(),
        }
