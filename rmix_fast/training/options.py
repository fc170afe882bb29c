"""rmix-train's options in groups (method, saliency pass, data, model, optimisation, speed, evaluation,
output), their dataset-dependent defaults and checks, and the ``--resume`` merge: a resumed run takes its
options from its checkpoint, and any option given again must agree with it."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmix_fast.losses import LOSSES
from rmix_fast.saliency import BATCHNORM_MODES
from rmix_fast.training.checkpoint import load_checkpoint
from rmix_fast.training.data import DATASET_NAMES
from rmix_fast.training.methods import METHODS
from rmix_fast.training.models import MODEL_NAMES
from rmix_fast.training.run_dir import CHECKPOINT
from rmix_fast.training.runtime import AMP_MODES

__all__ = ["NOT_RUN_DEFINING", "PRESETS", "build_parser", "config_value", "parse_args"]

DESCRIPTION = "Train an image classifier with a mixing method, under the R-Mix paper's protocol."
SCHEDULERS = ("onecycle", "multistep", "cosine")
# Options that do not change what a run computes: free to differ on --resume.
NOT_RUN_DEFINING = ("out", "resume", "overwrite", "device", "workers", "progress", "data_dir")
DEFAULT_MODEL = {"shapes": "small_cnn", "cifar10": "preactresnet18", "cifar100": "preactresnet18"}
DEFAULT_EPOCHS = {"shapes": 15}

# Published training protocols: each sets the defaults of the options it names (an option given on the
# command line wins). "rmix": the R-Mix paper's recipe, OneCycleLR (the defaults). "comixup": the protocol
# of Co-Mixup, PuzzleMix and SAGE (and so of the Vanilla/Mixup/CutMix rows R-Mix's tables copy from them):
# SGD lr 0.2 with Nesterov momentum 0.9 and weight decay 1e-4, LR x0.1 at 1/3 and 2/3 of the epochs
# (100 and 200 of 300), batch 100, random crop with padding 2, BCE on softmax probabilities. "openmixup":
# OpenMixup's CIFAR recipe, under which AdAutoMix (and AutoMix) published: SGD lr 0.1, momentum 0.9 (not
# Nesterov), weight decay 1e-4, cosine annealing per epoch to 0.05 (mmcv's by-epoch CosineAnnealing), batch
# 100, random crop with padding 4, cross-entropy; 200, 400 or 800 epochs (pass --epochs).
PRESETS: dict[str, dict[str, Any]] = {
    "rmix": {},
    "comixup": {"scheduler": "multistep", "lr": 0.2, "gamma": 0.1, "momentum": 0.9, "nesterov": True,
                "weight_decay": 1e-4, "batch_size": 100, "crop_padding": 2, "loss": "softmax_bce"},
    "openmixup": {"scheduler": "cosine", "lr": 0.1, "min_lr": 0.05, "momentum": 0.9, "nesterov": False,
                  "weight_decay": 1e-4, "batch_size": 100, "crop_padding": 4, "loss": "soft_ce"},
}  # fmt: skip


class _Group:
    """Adds options to one argument group; with ``suppress`` unset options stay out of the namespace."""

    def __init__(self, group: argparse._ArgumentGroup, suppress: bool) -> None:
        self.group, self.suppress = group, suppress

    def __call__(self, *names: str, **kw: Any) -> None:
        if self.suppress:
            kw.pop("default", None)
        self.group.add_argument(*names, **kw)


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The CLI. ``suppress=True`` leaves unset options out of the namespace (to see what was given)."""
    p = argparse.ArgumentParser(
        prog="rmix-train",
        description=DESCRIPTION,
        argument_default=argparse.SUPPRESS if suppress else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def group(title: str) -> _Group:
        return _Group(p.add_argument_group(title), suppress)

    add = group("protocol")
    add("--preset", choices=tuple(PRESETS), default="rmix", help="published protocol whose defaults to use: rmix "
        "(OneCycleLR, soft cross-entropy), comixup (multistep lr 0.2, crop padding 2, softmax BCE) or openmixup "
        "(cosine lr 0.1 to 0.05, no Nesterov: AdAutoMix's); options given explicitly win")  # fmt: skip
    add("--loss", choices=tuple(LOSSES), default="soft_ce", help="training loss: soft cross-entropy or BCE on "
        "softmax probabilities")  # fmt: skip
    add = group("method")
    add("--method", choices=tuple(METHODS), default="rmix", help="mixing method")
    add("--alpha", type=float, default=1.0, help="Beta(alpha, alpha) of the mixing weight (manifold: default 2)")
    add("--mix-prob", type=float, default=1.0, help="probability that a batch is mixed")
    add("--label-smoothing", type=float, default=0.0, help="label smoothing of the targets")
    add("--backend", default="auto", help="kernel backend of the mixers: auto, reference, triton, cpp")
    for method in METHODS.values():
        if method.add_options is not None:
            method.add_options(group(f"{method.name}: {method.help}"))

    add = group("saliency pass (methods that mix by the input gradient) and clean loss (any method)")
    add("--saliency-batchnorm", choices=BATCHNORM_MODES, default="update", help="BatchNorm in the saliency pass")
    add("--saliency-resolution", type=float, default=1.0, help="image fraction the saliency pass sees")
    add("--clean-loss-weight", type=float, default=0.0, help="W > 0: the clean batch's loss, times W, also "
        "trains (its gradients join the mixed loss's; the saliency comes from its backward); any method")  # fmt: skip
    add("--mix-loss-weight", type=float, default=1.0, help="the (mixed) batch's loss is multiplied by this; with "
        "--clean-loss-weight W it weighs the two signals (SAGE's update_ratio r: W = 1 - r, this = r)")  # fmt: skip

    add = group("data")
    add("--dataset", choices=DATASET_NAMES, default="shapes", help="dataset (shapes is generated, no files)")
    add("--data-dir", default=None, help="folder holding the CIFAR pickles or the imagefolder train/ and val/")
    add("--image-size", type=int, default=None, help="image side for shapes (32) and imagefolder (224)")
    add("--train-size", type=int, default=None, help="shapes: number of training images (default 5000)")
    add("--test-size", type=int, default=None, help="shapes: number of test images (default 1000)")
    add("--workers", type=int, default=0, help="DataLoader processes (imagefolder only)")
    add("--crop-padding", type=int, default=4, help="padding of the random crop of shapes and CIFAR")

    add = group("model")
    add("--model", choices=MODEL_NAMES, default=None, help="architecture (default: small_cnn for shapes, "
        "preactresnet18 for CIFAR, resnet50 for imagefolder)")  # fmt: skip

    add = group("optimisation")
    add("--epochs", type=int, default=None, help="epochs (default: 300; 15 for shapes)")
    add("--batch-size", type=int, default=100, help="batch size per process")
    add("--lr", type=float, default=None, help="max LR of OneCycleLR (default 0.3) or initial LR of multistep and "
        "cosine (0.1)")  # fmt: skip
    add("--scheduler", choices=SCHEDULERS, default="onecycle", help="LR schedule, stepped per batch (cosine: "
        "constant within an epoch, as mmcv's by-epoch CosineAnnealing)")  # fmt: skip
    add("--div-factor", type=float, default=100.0, help="OneCycleLR: initial LR = max LR / div_factor")
    add("--pct-start", type=float, default=0.3, help="OneCycleLR: fraction of steps spent warming up")
    add("--final-div-factor", type=float, default=1e4, help="OneCycleLR: final LR = initial LR / this")
    add("--milestones", type=int, nargs="+", default=None, help="multistep: epochs of LR drops (default 1/3, 2/3)")
    add("--gamma", type=float, default=0.1, help="multistep: LR factor at each milestone")
    add("--min-lr", type=float, default=0.0, help="cosine: the LR the cosine reaches at the last epoch")
    add("--momentum", type=float, default=0.9, help="SGD momentum")
    add("--nesterov", action=argparse.BooleanOptionalAction, default=True, help="Nesterov momentum")
    add("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    add("--seed", type=int, default=0, help="seed of every random choice")

    add = group("speed")
    add("--amp", choices=AMP_MODES, default="none", help="autocast dtype")
    add("--channels-last", action="store_true", default=False, help="channels_last model and inputs")
    add("--compile", action="store_true", default=False, help="torch.compile the model")
    add("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    add = group("evaluation")
    add("--fgsm-eps", type=float, default=8.0, help="FGSM radius in pixel levels out of 255 (0: skip)")

    add = group("output")
    add("--out", default=None, help="output folder (default: runs/<dataset>-<model>-<method>-s<seed>)")
    add("--resume", action="store_true", default=False, help="continue from <out>/checkpoint.pt")
    add("--overwrite", action="store_true", default=False, help="start afresh in an --out that holds a run")
    add("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar per epoch")
    return p


def _fill_defaults(args: argparse.Namespace) -> None:
    args.model = args.model or DEFAULT_MODEL.get(args.dataset, "resnet50")
    args.epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS.get(args.dataset, 300)
    if args.lr is None:
        args.lr = 0.3 if args.scheduler == "onecycle" else 0.1
    if args.scheduler == "multistep" and args.milestones is None:
        args.milestones = [max(1, args.epochs // 3), max(1, 2 * args.epochs // 3)]
    if args.out is None:
        args.out = f"runs/{args.dataset}-{args.model}-{args.method}-s{args.seed}"


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size", "train_size", "test_size", "image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    for name in ("lr", "alpha", "div_factor", "final_div_factor"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("mix_prob", "label_smoothing", "momentum"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")
    if not 0.0 < args.pct_start < 1.0:
        parser.error(f"--pct-start must lie in (0, 1), got {args.pct_start}")
    if not 0.0 <= args.min_lr <= args.lr:
        parser.error(f"--min-lr must lie in [0, --lr={args.lr}], got {args.min_lr}")
    if args.weight_decay < 0 or args.fgsm_eps < 0 or args.crop_padding < 0:
        parser.error("--weight-decay, --fgsm-eps and --crop-padding must be >= 0")
    if not 0.0 <= args.clean_loss_weight < math.inf:
        parser.error(f"--clean-loss-weight must be a finite number >= 0, got {args.clean_loss_weight}")
    if not 0.0 < args.mix_loss_weight < math.inf:
        parser.error(f"--mix-loss-weight must be a finite number > 0, got {args.mix_loss_weight}")
    if not 0.0 < args.saliency_resolution <= 1.0:
        parser.error(f"--saliency-resolution must lie in (0, 1], got {args.saliency_resolution}")
    if args.milestones is not None and any(m < 1 or m > args.epochs for m in args.milestones):
        parser.error(f"--milestones must lie in [1, --epochs={args.epochs}], got {args.milestones}")
    if args.dataset != "shapes" and (args.train_size is not None or args.test_size is not None):
        parser.error("--train-size and --test-size apply to --dataset shapes only")
    if args.dataset in ("cifar10", "cifar100", "imagefolder") and args.data_dir is None:
        parser.error(f"--dataset {args.dataset} needs --data-dir (nothing is downloaded)")
    for method in METHODS.values():  # every method's own options, whichever runs: they are all in the config
        if method.check is not None:
            method.check(args, parser.error)


def config_value(v: Any) -> Any:
    """An option's value as the config stores it (JSON has lists, not tuples)."""
    return list(v) if isinstance(v, tuple) else v


def _resume(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    given = vars(build_parser(suppress=True).parse_args(argv))
    if args.out is None:
        parser.error("--resume needs --out, the folder of the run to continue")
    path = Path(args.out) / CHECKPOINT
    if not path.is_file():
        parser.error(f"--resume: no checkpoint at {path}")
    saved = load_checkpoint(path)["config"]
    clashes = {
        k: (v, saved.get(k))
        for k, v in given.items()
        if k not in NOT_RUN_DEFINING and k in saved and config_value(v) != config_value(saved[k])
    }
    if clashes:
        listed = ", ".join(f"--{k.replace('_', '-')} {v!r} (run has {s!r})" for k, (v, s) in clashes.items())
        parser.error(f"--resume: arguments differ from the run being resumed: {listed}")
    for k, v in saved.items():
        if k not in NOT_RUN_DEFINING:
            setattr(args, k, v)
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, fill the dataset-dependent defaults and check; with ``--resume`` the run's options come
    from the checkpoint, and any option given again must agree with it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        return _resume(parser, args, argv)
    given = vars(build_parser(suppress=True).parse_args(argv))
    # given options win over the method's own defaults, which win over the preset's
    for name, value in {**PRESETS[args.preset], **METHODS[args.method].defaults}.items():
        if name not in given:
            setattr(args, name, value)
    _fill_defaults(args)
    _check(parser, args)
    out = Path(args.out)
    if (out / CHECKPOINT).exists() and not args.overwrite:
        parser.error(f"{out / CHECKPOINT} exists: pass --resume to continue that run or --overwrite to replace it")
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    return args
