"""Label evidence of mixing methods on ``shapes``: how far each method's labels are from what its mixed
images show (``rmix_fast.training.metrics.label_evidence``).

    python -m rmix_fast.training.evidence                                  # every method, untrained saliency
    python -m rmix_fast.training.evidence --checkpoint runs/shapes-rmix    # adds R-Mix with the run's saliency

Draws ``--batches`` batches of ``--batch-size`` raw images (no crop or flip, so the object masks stay
aligned) from the shapes training set, mixes each with every method and prints, per method, the mismatch
between label and evidence shares and the label mass on hidden objects (< 10 % visible). Every method sees
the same batches; the R-Mix rows also share their draws (grid, lam, levels, partners), so they differ only
in the saliency:

* ``mixup``, ``cutmix``: the methods as rmix-train runs them, mixing every batch (probability 1: a mixer
  with ``prob`` p < 1 passes a batch through unmixed with probability 1 - p, which scales both numbers by p);
* ``rmix``: R-Mix with the input gradient of a freshly initialised small_cnn (the saliency of a run's first
  steps), in train mode as rmix-train's saliency pass;
* ``rmix-oracle``: R-Mix whose gradient is the object mask (cell saliency = object coverage);
* ``rmix-oracle-box``: the same with the object's filled tight box;
* ``rmix-checkpoint`` (with ``--checkpoint``): R-Mix with the input gradient of the run's trained model, on
  that run's training set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from torch import nn

from rmix_fast.mixers import CutMix, Mixer, Mixup, RMix
from rmix_fast.training.checkpoint import atomic_write_json, load_run
from rmix_fast.training.data.shapes import SHAPE_CLASSES, SHAPES_MEAN, SHAPES_STD, shapes_dataset
from rmix_fast.training.metrics.label_evidence import HIDDEN_VISIBILITY, label_evidence
from rmix_fast.training.models import PixelClassifier, build_model
from rmix_fast.training.run_dir import CHECKPOINT

__all__ = ["METHODS", "main"]

# method -> (mixer kind, saliency source)
METHODS: dict[str, tuple[str, str]] = {
    "mixup": ("mixup", "model"),
    "cutmix": ("cutmix", "model"),
    "rmix": ("rmix", "model"),
    "rmix-oracle": ("rmix", "mask"),
    "rmix-oracle-box": ("rmix", "box"),
}
CHECKPOINT_METHOD = "rmix-checkpoint"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m rmix_fast.training.evidence",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS), help="methods to measure")
    p.add_argument(
        "--checkpoint",
        default=None,
        help=f"an rmix-train shapes run (folder or checkpoint.pt): adds {CHECKPOINT_METHOD}, R-Mix with its "
        "model's saliency, measured on the run's training set",
    )
    p.add_argument("--batches", type=int, default=20, help="batches per method")
    p.add_argument("--batch-size", type=int, default=100, help="images per batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the batches, the mixers' draws and the untrained model")
    p.add_argument("--alpha", type=float, default=1.0, help="Beta(alpha, alpha) of the mixing weight")
    p.add_argument("--grids", type=int, nargs="+", default=[2, 4], help="R-Mix: grid sizes p")
    p.add_argument("--levels", type=int, default=10, help="R-Mix: percentile levels")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for name in ("batches", "batch_size", "levels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.alpha > 0:
        p.error(f"--alpha must be > 0, got {args.alpha}")
    if any(g < 1 for g in args.grids):
        p.error(f"--grids must all be >= 1, got {args.grids}")
    return args


def _mixer(kind: str, args: argparse.Namespace, num_classes: int) -> Mixer:
    if kind == "mixup":
        return Mixup(num_classes, alpha=args.alpha)
    if kind == "cutmix":
        return CutMix(num_classes, alpha=args.alpha)
    return RMix(num_classes, alpha=args.alpha, grids=tuple(args.grids), levels=args.levels)


def _load_run(path_arg: str) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of an rmix-train shapes run (train mode: rmix-train's saliency pass runs so) and
    its config."""
    path, state = load_run(path_arg, "evidence", CHECKPOINT)
    cfg = state["config"]
    if cfg.get("dataset") != "shapes":
        raise SystemExit(f"evidence: {path} is a {cfg.get('dataset')!r} run; only shapes has object masks")
    model = PixelClassifier(build_model(cfg["model"], len(SHAPE_CLASSES), in_channels=3), SHAPES_MEAN, SHAPES_STD)
    model.load_state_dict(state["model"])
    return model.train(), cfg


def print_table(results: dict[str, dict[str, Any]], stream: TextIO | None = None) -> None:
    """method | mismatch | label mass on hidden objects, one row per method."""
    stream = stream or sys.stdout
    hidden = f"label mass on hidden objects (< {HIDDEN_VISIBILITY:.0%} visible)"
    width = max(len("method"), *(len(m) for m in results))
    print(f"{'method':<{width}} | mismatch | {hidden}", file=stream)
    print(f"{'-' * width}-|----------|-{'-' * len(hidden)}", file=stream)
    for method, r in results.items():
        print(f"{method:<{width}} | {r['mismatch']:8.3f} | {r['hidden_mass']:.3f}", file=stream)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    trained, cfg = _load_run(args.checkpoint) if args.checkpoint else (None, {})
    # The run's own training set when there is one (its model's saliency belongs to it), else rmix-train's
    # default shapes data.
    data = shapes_dataset(
        "train",
        size=cfg.get("train_size"),
        image_size=cfg.get("image_size") or 32,
        seed=cfg.get("seed", 0),
        with_masks=True,
    )
    runs: list[tuple[str, str, str, nn.Module | None]] = [(m, *METHODS[m], None) for m in args.methods]
    if trained is not None:
        runs.append((CHECKPOINT_METHOD, "rmix", "model", trained))
    results: dict[str, dict[str, Any]] = {}
    for name, kind, source, model in runs:
        mixer = _mixer(kind, args, data.num_classes)
        results[name] = label_evidence(
            mixer,
            data,
            model=model,
            saliency=source,
            batches=args.batches,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
        )
    print(
        f"label evidence on shapes ({args.batches} batches of {args.batch_size}, seed {args.seed}, "
        f"mixing probability 1)"
    )
    print_table(results)
    if args.out:
        config = {k: v for k, v in vars(args).items() if k != "out"}
        atomic_write_json(args.out, {"config": config, "hidden_visibility": HIDDEN_VISIBILITY, "results": results})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
