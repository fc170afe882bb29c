"""PNG plots of a run (training curves, the reliability diagram), a comparison of methods, and the
seed-averaged plots of rmix-compare (accuracy against the epoch and against the cost).

matplotlib is imported inside each function, so the rest of the package does not need it. Figures are drawn
through matplotlib's object API on an Agg canvas (no ``pyplot``): nothing switches the global backend of a
caller's session, and no figure is left registered in pyplot's figure list.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_accuracy_vs_cost", "plot_accuracy_vs_epoch", "plot_comparison", "plot_curves", "plot_reliability"]

DPI = 120


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure bound to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    fig.clear()  # drop the artists now rather than at garbage collection
    return path


def _value(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    return math.nan if v is None else float(v)  # NaN: matplotlib leaves a gap


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Loss and top-1 accuracy against the epoch, train and test, side by side.

    Args:
        history: one row per epoch with keys ``epoch``, ``train_loss``, ``train_top1``, ``test_loss``,
            ``test_top1`` (accuracies in percent); a missing or None value leaves a gap.
        path: the PNG to write (parent folders are created).

    Returns:
        ``path`` as a Path.
    """
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [_value(r, "epoch") for r in history]
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "top1", "top-1 accuracy (%)")):
        for split, style in (("train", "-"), ("test", "--")):
            ys = [_value(r, f"{split}_{metric}") for r in history]
            if any(not math.isnan(y) for y in ys):
                # Markers too, so an isolated value between gaps (or a one-epoch run) is still visible.
                ax.plot(epochs, ys, style, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    ax_loss.set_title("loss")
    ax_acc.set_title("top-1 accuracy")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(calibration: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Reliability diagram (Guo et al. 2017): accuracy per confidence bin against the diagonal.

    Args:
        calibration: ``Evaluator.result()["calibration"]`` (``CalibrationBins.to_dict()``): ``edges`` (M + 1,),
            ``count``, ``confidence`` and ``accuracy`` (M,) with fractions in [0, 1].
        path: the PNG to write.
        title: shown before the ECE in the title.

    Bars are each bin's accuracy; the shaded band between the accuracy and the bin's mean confidence is the
    gap that ECE weighs (shading to the mean confidence rather than the bin centre, so the picture is the ECE).
    Empty bins draw nothing. A lower panel shows the share of samples per bin.
    """
    edges = [float(e) for e in calibration["edges"]]
    count = [float(c) for c in calibration["count"]]
    conf = [float(c) for c in calibration["confidence"]]
    acc = [float(a) for a in calibration["accuracy"]]
    n = sum(count)
    ece = sum(c / n * abs(a - p) for c, a, p in zip(count, acc, conf, strict=True)) if n else 0.0
    left = edges[:-1]
    width = [hi - lo for lo, hi in itertools.pairwise(edges)]
    used = [c > 0 for c in count]

    fig = _figure(5, 6)
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(
        [x for x, u in zip(left, used, strict=True) if u],
        [a for a, u in zip(acc, used, strict=True) if u],
        width=[w for w, u in zip(width, used, strict=True) if u],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        label="accuracy",
    )
    gaps = [(x, w, a, p) for x, w, a, p, u in zip(left, width, acc, conf, used, strict=True) if u]
    ax.bar(
        [g[0] for g in gaps],
        [g[3] - g[2] for g in gaps],  # signed: a bar from accuracy up (or down) to confidence
        bottom=[g[2] for g in gaps],
        width=[g[1] for g in gaps],
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    head = f"{title}: " if title else ""
    ax.set_title(f"{head}ECE {100 * ece:.2f}% ({len(count)} bins, n={round(n)})")

    ax_n.bar(left, [c / n if n else 0.0 for c in count], width=width, align="edge", color="gray", edgecolor="black")
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("share")
    fig.tight_layout()
    return _save(fig, path)


# Metrics plot_comparison shows when present: key in the result dict, panel title.
COMPARISON_METRICS = (
    ("top1", "top-1 accuracy (%) ↑"),
    ("ece", "ECE (%) ↓"),
    ("fgsm_error", "FGSM error (%) ↓"),
    ("loc_gt_known", "GT-known loc. (%) ↑"),
    ("loc_top1", "top-1 loc. (%) ↑"),
)


def plot_comparison(results: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """One panel per metric with a bar per method, values written on the bars.

    Args:
        results: ``{method: Evaluator.result()}`` (any mapping with some of the keys ``top1``, ``ece``,
            ``fgsm_error``, ``loc_gt_known``, ``loc_top1``). A metric None or missing for every method is left
            out; for some methods it leaves an empty slot.
        path: the PNG to write.

    Separate panels rather than one shared axis because the metrics live on different scales (ECE of a few
    percent next to accuracies near 100).
    """
    methods = list(results)
    shown = [(key, label) for key, label in COMPARISON_METRICS if any(results[m].get(key) is not None for m in methods)]
    fig = _figure(max(3.0, 2.6 * max(len(shown), 1)), 3.6)
    axes = fig.subplots(1, max(len(shown), 1), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(methods))]
    for ax, (key, label) in zip(axes, shown, strict=False):
        values = [_value(results[m], key) for m in methods]
        bars = ax.bar(range(len(methods)), [0.0 if math.isnan(v) else v for v in values], color=colors)
        for bar, v in zip(bars, values, strict=True):
            if not math.isnan(v):
                ax.annotate(
                    f"{v:.1f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            else:
                bar.set_visible(False)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right")
        ax.set_title(label, fontsize=10)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    if not shown:
        axes[0].text(0.5, 0.5, "no metrics", ha="center", va="center")
        axes[0].set_axis_off()
    fig.tight_layout()
    return _save(fig, path)


def _or_nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def plot_accuracy_vs_epoch(curves: Mapping[str, Mapping[str, Sequence[float | None]]], path: str | Path) -> Path:
    """Test top-1 accuracy against the epoch: one line per label (the mean over seeds), a band of ± one std.

    Args:
        curves: ``{label: {"epoch": [...], "mean": [...], "std": [...]}}``, accuracies in percent; a None mean
            leaves a gap, a None std (one seed at that epoch) draws no band there.
        path: the PNG to write.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7, 4.5)
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.2
    for i, (label, curve) in enumerate(curves.items()):
        epochs = [float(e) for e in curve["epoch"]]
        mean = [_or_nan(m) for m in curve["mean"]]
        std = [_or_nan(s) for s in curve["std"]]
        color = f"C{i % 10}"
        ax.plot(epochs, mean, "-", marker="o", markersize=3, color=color, label=label)
        if any(not math.isnan(s) for s in std):
            lo = [m - s for m, s in zip(mean, std, strict=True)]
            hi = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title("test top-1 accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_accuracy_vs_cost(
    points: Mapping[str, Mapping[str, float | None]], path: str | Path, reference: str | None = None
) -> Path:
    """Final test top-1 accuracy against training time relative to a reference method, error bars ± one std.

    Args:
        points: ``{label: {"time": ..., "time_std": ..., "top1": ..., "top1_std": ...}}``: time per epoch as
            a multiple of ``reference``'s, accuracy in percent; a label whose time or accuracy is None is left
            out, a None std draws no bar.
        path: the PNG to write.
        reference: the label the times are relative to (the x axis's name).
    """
    fig = _figure(6, 4.5)
    ax = fig.subplots()
    for i, (label, p) in enumerate(points.items()):
        if p.get("time") is None or p.get("top1") is None:
            continue
        ax.errorbar(
            [float(p["time"])],
            [float(p["top1"])],
            xerr=None if p.get("time_std") is None else [float(p["time_std"])],
            yerr=None if p.get("top1_std") is None else [float(p["top1_std"])],
            fmt="o",
            color=f"C{i % 10}",
            capsize=3,
            label=label,
        )
        ax.annotate(label, (float(p["time"]), float(p["top1"])), xytext=(5, 5), textcoords="offset points", fontsize=8)
    ax.set_xlabel(f"time per epoch (× {reference})" if reference else "time per epoch (relative)")
    ax.set_ylabel("final test top-1 accuracy (%)")
    ax.set_title("accuracy against cost (mean ± std over seeds)")
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no complete runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)
