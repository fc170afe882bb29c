"""``Evaluator``: every test metric accumulated batch by batch as flat float64 sums, combined across ranks.

Each family's per-batch count (``topk_hits``, ``add_to_bins``, ``fgsm_errors``, ``localization_hits``) is added
to one flat tensor, so a distributed run needs a single ``all_reduce`` of ``state()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmix_fast.saliency import unwrap_model
from rmix_fast.training.metrics.accuracy import topk_hits
from rmix_fast.training.metrics.calibration import N_BINS, CalibrationBins, add_to_bins, expected_calibration_error
from rmix_fast.training.metrics.localization import CAM_THRESHOLD, localization_hits
from rmix_fast.training.metrics.robustness import fgsm_errors

__all__ = ["Evaluator"]

# Layout of the scalar part of Evaluator's state; the calibration bins' count, confidence and correct sums follow.
_FIELDS = ("n", "loss", "top1", "top5", "fgsm_n", "fgsm_wrong", "loc_n", "loc_gt_known", "loc_top1")
_F = {name: i for i, name in enumerate(_FIELDS)}


def _sums_device(device: torch.device) -> torch.device:
    # float64 sums: MPS has no float64, so they stay on the CPU there.
    return torch.device("cpu") if device.type == "mps" else device


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
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
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

    def _bin_sums(self) -> Tensor:
        """(3, n_bins) view of the calibration sums (count, sum of confidences, number correct)."""
        return self._sums[len(_FIELDS) :].view(3, self.n_bins)

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
        hits, pred = topk_hits(logits, labels, (1, 5))
        self._add("n", labels.shape[0])
        self._add("loss", F.cross_entropy(logits, labels, reduction="sum"))
        self._add("top1", hits[0])
        self._add("top5", hits[1])
        # The predicted class of calibration is the top-1 prediction above (same tie-breaking).
        conf = torch.softmax(logits, dim=1).gather(1, pred[:, None])[:, 0]
        add_to_bins(self._bin_sums(), conf, pred == labels)
        if self.fgsm_eps is not None:
            self._add("fgsm_n", labels.shape[0])
            self._add("fgsm_wrong", fgsm_errors(self.model, x01, labels, self.fgsm_eps))
        if self.localize and boxes is not None:
            gt_known, top1 = localization_hits(self.model, x01, labels, boxes, pred, self.cam_threshold)
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
        return CalibrationBins.from_sums(*self._bin_sums())

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
