"""Calibration: equal-width confidence bins and the expected calibration error (ECE, Guo et al. 2017).

Bins are kept as per-bin sums (count, sum of confidences, number correct) so that batches, and ranks, combine by
addition; ``CalibrationBins`` turns the sums into means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["N_BINS", "CalibrationBins", "add_to_bins", "bin_edges", "expected_calibration_error"]

N_BINS = 15  # Guo et al. 2017


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


def add_to_bins(sums: Tensor, conf: Tensor, correct: Tensor) -> None:
    """Adds one batch to per-bin sums, in place.

    Args:
        sums: (3, M) float64 sums over M equal-width bins of [0, 1]; rows: count, sum of confidences, number
            correct. Bin m (0-based) holds m/M < conf <= (m+1)/M, and conf == 0 goes in bin 0.
        conf: (N,) top-1 confidences in [0, 1], any device (moved to the sums' device).
        correct: (N,) bool, whether each top-1 prediction was right.

    No host sync, so it is safe to call every batch. ``CalibrationBins.from_sums(*sums)`` reads the result.
    """
    if conf.dim() != 1 or correct.shape != conf.shape:
        raise ValueError(f"conf and correct must be (N,) each, got {tuple(conf.shape)} and {tuple(correct.shape)}")
    if sums.dim() != 2 or sums.shape[0] != 3 or sums.dtype != torch.float64:
        raise ValueError(f"sums must be (3, M) float64, got {tuple(sums.shape)} {sums.dtype}")
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
        """From per-bin sums (count, sum of confidences, number correct), each (M,): the rows of
        ``add_to_bins``'s sums."""
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
