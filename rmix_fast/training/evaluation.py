"""The test-set evaluation of a model, shared by rmix-train (after each epoch: the cheap part; at the end:
all of it) and rmix-eval: top-1 / top-5, calibration, FGSM and CAM localisation, its table and plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmix_fast.training.batches import epoch_batches, iterate_batches, to_pixels
from rmix_fast.training.distributed import DistEnv
from rmix_fast.training.metrics import Evaluator
from rmix_fast.training.run_dir import CURVES, RELIABILITY
from rmix_fast.training.runtime import amp_autocast

__all__ = ["evaluate_model", "print_results", "write_plots"]


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    *,
    device: torch.device,
    batch_size: int = 100,
    env: DistEnv | None = None,
    amp: str = "none",
    channels_last: bool = False,
    workers: int = 0,
    fgsm_eps: float | None = None,
    localize: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (pixels in [0, 1] -> logits) on every sample of ``dataset``, each seen once
    across the ranks of ``env``; returns ``Evaluator.result()`` (accuracies and errors in percent)."""
    env = env or DistEnv()
    was_training = model.training
    model.eval()
    evaluator = Evaluator(model, num_classes=dataset.num_classes, fgsm_eps=fgsm_eps, localize=localize)
    boxes = getattr(dataset, "boxes", None) if localize else None
    batches = epoch_batches(len(dataset), batch_size, shuffle=False, rank=env.rank, world_size=env.world_size)
    for xb, yb, idx in iterate_batches(dataset, batches, device=device, workers=workers):
        x = to_pixels(xb, augment=False, channels_last=channels_last)
        with amp_autocast(amp, device):
            evaluator.update(x, yb, boxes[idx].to(device) if boxes is not None else None)
    if env.active:
        evaluator.merge(env.all_reduce_sum(evaluator.state().to(device)).cpu())
    model.train(was_training)
    return evaluator.result()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_results(result: dict[str, Any], title: str, stream: Any = None) -> None:
    """One small table of the headline numbers."""
    stream = stream or sys.stdout
    rows = [
        ("top-1 accuracy (%)", _percent(result["top1"])),
        ("top-5 accuracy (%)", _percent(result["top5"])),
        ("ECE, 15 bins (%)", _percent(result["ece"])),
        ("FGSM error (%)", _percent(result.get("fgsm_error"))),
        ("localisation, GT-known (%)", _percent(result.get("loc_gt_known"))),
        ("localisation, top-1 (%)", _percent(result.get("loc_top1"))),
        ("test loss", f"{result['loss']:.4f}"),
        ("test images", str(result["n"])),
    ]
    width = max(len(k) for k, _ in rows)
    print(title, file=stream)
    for k, v in rows:
        print(f"  {k:<{width}}  {v:>8}", file=stream)


def write_plots(out: Path, result: dict[str, Any], history: list[dict[str, Any]] | None) -> list[Path]:
    """curves.png (when there is a history) and reliability.png in ``out``."""
    from rmix_fast.training.plots import plot_curves, plot_reliability

    written = []
    if history:
        written.append(plot_curves(history, Path(out) / CURVES))
    written.append(plot_reliability(result["calibration"], Path(out) / RELIABILITY))
    return written
