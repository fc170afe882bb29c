"""rmix-eval: evaluate an rmix-train checkpoint on its dataset's test split.

    rmix-eval --checkpoint runs/shapes-rmix          # the folder, or the checkpoint.pt file itself

Reports top-1 / top-5 accuracy, expected calibration error (15 equal-width bins), FGSM error under an
8/255 l-inf attack on the pixel scale, and for datasets with object boxes (shapes) weakly supervised
localisation accuracy from class activation maps (IoU >= 0.5). Writes ``eval.json`` and
``reliability.png`` to ``--out`` (default: the checkpoint's folder). ``evaluate_model`` is the same
evaluation that rmix-train runs after each epoch (cheap part) and at the end (all of it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmix_fast.training.batches import epoch_batches, iterate_batches, to_pixels
from rmix_fast.training.checkpoint import atomic_write_json, load_checkpoint
from rmix_fast.training.data import build_dataset
from rmix_fast.training.distributed import DistEnv
from rmix_fast.training.metrics import Evaluator
from rmix_fast.training.models import PixelClassifier, build_model

__all__ = ["AMP_MODES", "amp_autocast", "default_device", "evaluate_model", "main", "print_results", "write_plots"]


AMP_MODES = ("none", "bf16", "fp16")


def default_device(name: str | None) -> torch.device:
    """``name``, or cuda when it is available, else cpu."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def amp_autocast(amp: str, device: torch.device) -> Any:
    """The autocast context of ``--amp none|bf16|fp16`` on ``device``."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


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
        written.append(plot_curves(history, Path(out) / "curves.png"))
    written.append(plot_reliability(result["calibration"], Path(out) / "reliability.png"))
    return written


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rmix-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="an rmix-train output folder or its checkpoint.pt")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the one the run used)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=100, help="evaluation batch size")
    p.add_argument("--fgsm-eps", type=float, default=8.0, help="FGSM radius in pixel levels out of 255 (0: skip)")
    p.add_argument("--amp", choices=AMP_MODES, default="none", help="autocast dtype")
    p.add_argument("--out", default=None, help="folder for eval.json and reliability.png")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.fgsm_eps < 0:
        p.error(f"--fgsm-eps must be >= 0, got {args.fgsm_eps}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    try:
        state = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"rmix-eval: {e}") from e
    cfg = state["config"]
    device = default_device(args.device)
    dataset = build_dataset(
        cfg["dataset"],
        "test",
        data_dir=args.data_dir or cfg.get("data_dir"),
        image_size=cfg.get("image_size"),
        size=cfg.get("test_size"),
        seed=cfg["seed"],
    )
    net = build_model(cfg["model"], dataset.num_classes, in_channels=dataset.channels)
    model = PixelClassifier(net, dataset.mean, dataset.std)
    model.load_state_dict(state["model"])
    model.to(device)
    result = evaluate_model(
        model,
        dataset,
        device=device,
        batch_size=args.batch_size,
        amp=args.amp,
        fgsm_eps=args.fgsm_eps / 255 if args.fgsm_eps > 0 else None,
        localize=getattr(dataset, "boxes", None) is not None,
    )
    out = Path(args.out) if args.out else path.parent
    atomic_write_json(
        out / "eval.json", {"checkpoint": str(path), "epoch": state["epoch"] + 1, "config": cfg, "result": result}
    )
    write_plots(out, result, None)
    print_results(result, title=f"{cfg['method']} / {cfg['model']} / {cfg['dataset']} (epoch {state['epoch'] + 1})")
    print(f"wrote {out / 'eval.json'} and {out / 'reliability.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
