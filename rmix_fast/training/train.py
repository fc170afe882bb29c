"""rmix-train: train an image classifier with vanilla, Mixup, CutMix or R-Mix, the paper's protocol.

    rmix-train --dataset shapes --method rmix --epochs 10 --out runs/shapes-rmix
    rmix-train --dataset cifar100 --data-dir ~/data --model preactresnet18 --method rmix --out runs/c100
    torchrun --nproc-per-node 8 -m rmix_fast.training.train --dataset imagefolder --data-dir /imagenet ...

One code path for every method: the method only picks the mixer. Defaults are the paper's CIFAR recipe
(SGD, momentum 0.9, Nesterov, weight decay 1e-4, batch 100, 300 epochs, OneCycleLR with max LR 0.3
stepped per batch, random crop + flip, R-Mix alpha 1, grids {2, 4}, 10 levels). Each epoch ends with a
test pass, one log line, an atomic checkpoint and ``metrics.json`` in ``--out``; the run ends with the
full evaluation (top-1/5, ECE, FGSM, localisation) and its plots. ``--resume`` continues from the last
checkpoint and ends with the same numbers as an uninterrupted run (on the CPU, bit for bit).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import rmix_fast
from rmix_fast.losses import SoftTargetCrossEntropy
from rmix_fast.mixers import CutMix, Mixup, RMix, soft_targets
from rmix_fast.saliency import BATCHNORM_MODES, input_gradient
from rmix_fast.training.batches import epoch_batches, iterate_batches, to_pixels
from rmix_fast.training.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from rmix_fast.training.data import DATASET_NAMES, build_dataset
from rmix_fast.training.distributed import DistEnv, exit_worker, in_torchrun_job, setup_distributed
from rmix_fast.training.evaluate import (
    AMP_MODES,
    amp_autocast,
    default_device,
    evaluate_model,
    print_results,
    write_plots,
)
from rmix_fast.training.models import MODEL_NAMES, PixelClassifier, build_model
from rmix_fast.training.progress import ProgressBar, format_duration
from rmix_fast.training.seeding import AUGMENT, MIX, seeded

__all__ = ["METHODS", "build_parser", "cli", "main", "parse_args"]

METHODS = ("vanilla", "mixup", "cutmix", "rmix")
SCHEDULERS = ("onecycle", "multistep")
CHECKPOINT = "checkpoint.pt"
# Arguments that do not change what a run computes: free to differ on --resume.
NOT_RUN_DEFINING = ("out", "resume", "overwrite", "device", "workers", "progress", "data_dir")
DEFAULT_MODEL = {"shapes": "small_cnn", "cifar10": "preactresnet18", "cifar100": "preactresnet18"}
DEFAULT_EPOCHS = {"shapes": 15}


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The CLI. ``suppress=True`` leaves unset arguments out of the namespace (to see what was given)."""
    p = argparse.ArgumentParser(
        prog="rmix-train",
        description=__doc__.split("\n\n")[0],
        argument_default=argparse.SUPPRESS if suppress else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def add(*names: str, **kw: Any) -> None:
        if suppress:
            kw.pop("default", None)
        p.add_argument(*names, **kw)

    add("--method", choices=METHODS, default="rmix", help="mixing method")
    add("--model", choices=MODEL_NAMES, default=None, help="architecture (default: small_cnn for shapes, "
        "preactresnet18 for CIFAR, resnet50 for imagefolder)")  # fmt: skip
    add("--dataset", choices=DATASET_NAMES, default="shapes", help="dataset (shapes is generated, no files)")
    add("--data-dir", default=None, help="folder holding the CIFAR pickles or the imagefolder train/ and val/")
    add("--image-size", type=int, default=None, help="image side for shapes (32) and imagefolder (224)")
    add("--train-size", type=int, default=None, help="shapes: number of training images (default 5000)")
    add("--test-size", type=int, default=None, help="shapes: number of test images (default 1000)")
    add("--epochs", type=int, default=None, help="epochs (default: 300; 15 for shapes)")
    add("--batch-size", type=int, default=100, help="batch size per process")
    add("--lr", type=float, default=None, help="max LR of OneCycleLR (default 0.3) or initial LR of multistep (0.1)")
    add("--scheduler", choices=SCHEDULERS, default="onecycle", help="LR schedule, stepped per batch (onecycle)")
    add("--div-factor", type=float, default=100.0, help="OneCycleLR: initial LR = max LR / div_factor")
    add("--pct-start", type=float, default=0.3, help="OneCycleLR: fraction of steps spent warming up")
    add("--final-div-factor", type=float, default=1e4, help="OneCycleLR: final LR = initial LR / this")
    add("--milestones", type=int, nargs="+", default=None, help="multistep: epochs of LR drops (default 1/3, 2/3)")
    add("--gamma", type=float, default=0.1, help="multistep: LR factor at each milestone")
    add("--momentum", type=float, default=0.9, help="SGD momentum")
    add("--nesterov", action=argparse.BooleanOptionalAction, default=True, help="Nesterov momentum")
    add("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    add("--alpha", type=float, default=1.0, help="Beta(alpha, alpha) of the mixing weight")
    add("--grids", type=int, nargs="+", default=[2, 4], help="R-Mix: grid sizes p drawn per batch")
    add("--levels", type=int, default=10, help="R-Mix: number of percentile levels in [0, 0.99]")
    add("--mix-prob", type=float, default=1.0, help="probability that a batch is mixed")
    add("--label-smoothing", type=float, default=0.0, help="label smoothing of the targets")
    add("--saliency-batchnorm", choices=BATCHNORM_MODES, default="update", help="R-Mix: BatchNorm in the saliency pass")
    add("--saliency-resolution", type=float, default=1.0, help="R-Mix: image fraction the saliency pass sees")
    add("--backend", default="auto", help="kernel backend of the mixers: auto, reference, triton, cpp")
    add("--amp", choices=AMP_MODES, default="none", help="autocast dtype")
    add("--channels-last", action="store_true", default=False, help="channels_last model and inputs")
    add("--compile", action="store_true", default=False, help="torch.compile the model")
    add("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add("--seed", type=int, default=0, help="seed of every random choice")
    add("--workers", type=int, default=0, help="DataLoader processes (imagefolder only)")
    add("--fgsm-eps", type=float, default=8.0, help="FGSM radius in pixel levels out of 255 (0: skip)")
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
        args.milestones = [args.epochs // 3, 2 * args.epochs // 3]
    if args.out is None:
        args.out = f"runs/{args.dataset}-{args.model}-{args.method}-s{args.seed}"


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    def positive(name: str) -> None:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")

    for name in ("epochs", "batch_size", "levels", "train_size", "test_size", "image_size"):
        positive(name)
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
    if args.weight_decay < 0 or args.fgsm_eps < 0:
        parser.error("--weight-decay and --fgsm-eps must be >= 0")
    if not 0.0 < args.saliency_resolution <= 1.0:
        parser.error(f"--saliency-resolution must lie in (0, 1], got {args.saliency_resolution}")
    if any(g < 1 for g in args.grids):
        parser.error(f"--grids must all be >= 1, got {args.grids}")
    if args.milestones is not None and any(m < 1 or m > args.epochs for m in args.milestones):
        parser.error(f"--milestones must lie in [1, --epochs={args.epochs}], got {args.milestones}")
    if args.dataset != "shapes" and (args.train_size is not None or args.test_size is not None):
        parser.error("--train-size and --test-size apply to --dataset shapes only")
    if args.dataset in ("cifar10", "cifar100", "imagefolder") and args.data_dir is None:
        parser.error(f"--dataset {args.dataset} needs --data-dir (nothing is downloaded)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, fill the dataset-dependent defaults and check; with ``--resume`` the run's arguments come
    from the checkpoint, and any argument given again must agree with it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
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
            if k not in NOT_RUN_DEFINING and k in saved and _normal(v) != _normal(saved[k])
        }
        if clashes:
            listed = ", ".join(f"--{k.replace('_', '-')} {v!r} (run has {s!r})" for k, (v, s) in clashes.items())
            parser.error(f"--resume: arguments differ from the run being resumed: {listed}")
        for k, v in saved.items():
            if k not in NOT_RUN_DEFINING:
                setattr(args, k, v)
        return args
    _fill_defaults(args)
    _check(parser, args)
    if (Path(args.out) / CHECKPOINT).exists() and not args.overwrite:
        parser.error(
            f"{Path(args.out) / CHECKPOINT} exists: pass --resume to continue that run or --overwrite to replace it"
        )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    return args


def _normal(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _versions() -> dict[str, str | None]:
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "rmix_fast": rmix_fast.__version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": commit,
    }


def _place(device: torch.device, env: DistEnv) -> torch.device:
    """The device this process runs on: under torchrun, CUDA means this rank's local GPU."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"rmix-train: --device {device} asked for, but CUDA is not available")
        if env.active:
            device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


def _make_mixer(args: argparse.Namespace, num_classes: int) -> RMix | Mixup | CutMix | None:
    common = {
        "alpha": args.alpha,
        "prob": args.mix_prob,
        "label_smoothing": args.label_smoothing,
        "backend": args.backend,
    }
    if args.method == "rmix":
        return RMix(num_classes, grids=tuple(args.grids), levels=args.levels, **common)
    if args.method == "mixup":
        return Mixup(num_classes, **common)
    if args.method == "cutmix":
        return CutMix(num_classes, **common)
    return None


def _make_scheduler(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if args.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=args.lr,
            total_steps=args.epochs * steps_per_epoch,
            pct_start=args.pct_start,
            div_factor=args.div_factor,
            final_div_factor=args.final_div_factor,
        )
    # Stepped per batch like OneCycleLR, so milestones are counted in steps.
    milestones = [m * steps_per_epoch for m in args.milestones]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=args.gamma)


class Trainer:
    """Everything one run holds; ``fit()`` runs the remaining epochs and the final evaluation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        requested = default_device(args.device)
        self.env = setup_distributed(requested)
        self.device = _place(requested, self.env)
        self.out = Path(args.out)
        torch.manual_seed(args.seed)  # the model's initialisation
        sizes = {"image_size": args.image_size, "seed": args.seed, "data_dir": args.data_dir}
        try:
            self.train_set = build_dataset(args.dataset, "train", size=args.train_size, **sizes)
            self.test_set = build_dataset(args.dataset, "test", size=args.test_size, **sizes)
        except (FileNotFoundError, ValueError) as e:  # a missing or malformed data folder: say what, not where
            raise SystemExit(f"rmix-train: {e}") from e
        self.num_classes = self.train_set.num_classes
        net = build_model(args.model, self.num_classes, in_channels=self.train_set.channels)
        self.model = PixelClassifier(net, self.train_set.mean, self.train_set.std).to(self.device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=args.lr,
            momentum=args.momentum,
            nesterov=args.nesterov and args.momentum > 0,
            weight_decay=args.weight_decay,
        )
        self.steps_per_epoch = len(self._batches(0))
        if self.steps_per_epoch == 0:
            raise SystemExit(
                f"rmix-train: {len(self.train_set)} training images are too few for {self.env.world_size} process(es)"
            )
        self.scheduler = _make_scheduler(args, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=args.amp == "fp16")
        self.mixer = _make_mixer(args, self.num_classes)
        self.criterion = SoftTargetCrossEntropy()
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.last_lr = args.lr
        self.sample: dict[str, Tensor] | None = None
        # torch.compile wraps the model inside DDP, so input_gradient can still step around the DDP wrapper.
        self.forward_model: nn.Module = torch.compile(self.model) if args.compile else self.model
        if self.env.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(self.forward_model, device_ids=ids)

    # -- bookkeeping ------------------------------------------------------------------------------
    def clear_outputs(self) -> None:
        """A fresh run in a folder that held one (--overwrite): its log and outputs go."""
        if self.env.is_main:
            for name in ("train.log", "metrics.json", CHECKPOINT, "curves.png", "reliability.png", "mixed_samples.png"):
                (self.out / name).unlink(missing_ok=True)
        self.env.barrier()

    def log(self, message: str) -> None:
        if not self.env.is_main:
            return
        print(message, flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "train.log", "a") as f:
            f.write(message + "\n")

    def config(self) -> dict[str, Any]:
        return {k: _normal(v) for k, v in vars(self.args).items()}

    def resume(self) -> None:
        state = load_checkpoint(self.out / CHECKPOINT, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = state["history"]
        self.start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng"]["torch"])
        self.log(f"resumed from {self.out / CHECKPOINT} after epoch {state['epoch'] + 1}/{self.args.epochs}")

    def save(self, epoch: int) -> None:
        if not self.env.is_main:
            return
        state = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "config": self.config(),
            "rng": {"torch": torch.get_rng_state()},
            "classes": list(self.train_set.classes),
            "versions": _versions(),
        }
        save_checkpoint(self.out / CHECKPOINT, state)

    def write_metrics(self, final: dict[str, Any] | None = None) -> None:
        if not self.env.is_main:
            return
        atomic_write_json(
            self.out / "metrics.json",
            {
                "config": self.config(),
                "versions": _versions(),
                "device": str(self.device),
                "world_size": self.env.world_size,
                "classes": list(self.train_set.classes),
                "history": self.history,
                "complete": final is not None,
                "final": final,
            },
        )

    # -- training ---------------------------------------------------------------------------------
    def _batches(self, epoch: int) -> list[Tensor]:
        a, env = self.args, self.env
        return epoch_batches(
            len(self.train_set),
            a.batch_size,
            shuffle=True,
            seed=a.seed,
            epoch=epoch,
            rank=env.rank,
            world_size=env.world_size,
            drop_last=True,
        )

    def _step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One optimisation step; returns the detached loss, the number of correct dominant labels, the
        mixed batch and the saliency gradient (None unless R-Mix)."""
        a = self.args
        grad = None
        with amp_autocast(a.amp, self.device):
            if self.mixer is None:
                x_mix, y_soft = x, soft_targets(y, self.num_classes, a.label_smoothing)
            else:
                if self.mixer.needs_grad:
                    grad = input_gradient(
                        self.forward_model,
                        x,
                        y,
                        batchnorm=a.saliency_batchnorm,
                        resolution=a.saliency_resolution,
                    )
                x_mix, y_soft = self.mixer(x, y, grad)
            logits = self.forward_model(x_mix)
            loss = self.criterion(logits, y_soft)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the LR this step used, for the log
        self.scheduler.step()
        correct = (logits.detach().argmax(1) == y_soft.argmax(1)).sum()
        return loss.detach(), correct, x_mix, grad

    def _keep_sample(self, x: Tensor, y: Tensor, x_mix: Tensor, grad: Tensor | None) -> None:
        """The run's first batch, for the picture of mixed samples (R-Mix: with its saliency and mask)."""
        params = self.mixer.last_params if self.mixer is not None else None
        applied = params is not None and params.applied
        B = x.shape[0]
        self.sample = {
            "x": x.detach().float().cpu(),
            "mixed": x_mix.detach().float().cpu(),
            "labels": y.cpu(),
            "perm": params.perm.cpu() if applied else torch.arange(B),
            "lam_eff": params.lam_eff.float().cpu() if applied else torch.ones(B),
        }
        if applied and params.mask is not None and grad is not None:
            self.sample["mask"] = params.mask.cpu()
            self.sample["saliency"] = rmix_fast.saliency_grid(grad.float(), params.grid).cpu()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        a, env = self.args, self.env
        self.model.train()
        self.train_set.set_epoch(epoch)
        batches = self._batches(epoch)
        augment_gen = seeded(a.seed, epoch, env.rank, AUGMENT)
        if self.mixer is not None:
            self.mixer.generator = seeded(a.seed, epoch, env.rank, MIX)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss * B, correct, B
        bar = ProgressBar(len(batches), f"epoch {epoch + 1}/{a.epochs}", enabled=env.is_main and a.progress)
        start = time.perf_counter()
        stream = iterate_batches(self.train_set, batches, device=self.device, workers=a.workers)
        for step, (xb, yb, _) in enumerate(stream):
            x = to_pixels(
                xb,
                augment=self.train_set.train_augment == "crop_flip",
                generator=augment_gen,
                channels_last=a.channels_last,
            )
            loss, correct, x_mix, grad = self._step(x, yb)
            if epoch == 0 and step == 0 and env.is_main:
                self._keep_sample(x, yb, x_mix, grad)
            sums += torch.stack([loss.double() * yb.shape[0], correct.double(), sums.new_tensor(yb.shape[0])])
            if bar.due(step + 1):  # reading the sums waits for the device: only when the bar draws
                seen = float(sums[2])
                loss_avg, acc = float(sums[0]) / seen, 100 * float(sums[1]) / seen
                bar.update(step + 1, int(seen) * env.world_size, loss=loss_avg, acc=acc)
        bar.close()
        env.all_reduce_sum(sums)
        seconds = time.perf_counter() - start
        return {
            "train_loss": float(sums[0] / sums[2]),
            "train_top1": float(100 * sums[1] / sums[2]),
            "images_per_s": float(sums[2]) / seconds,
            "seconds": seconds,
        }

    def evaluate(self, full: bool) -> dict[str, Any]:
        a = self.args
        localize = full and getattr(self.test_set, "boxes", None) is not None
        return evaluate_model(
            self.model,
            self.test_set,
            device=self.device,
            batch_size=a.batch_size,
            env=self.env,
            amp=a.amp,
            channels_last=a.channels_last,
            workers=a.workers,
            fgsm_eps=a.fgsm_eps / 255 if full and a.fgsm_eps > 0 else None,
            localize=localize,
        )

    def fit(self) -> dict[str, Any]:
        a = self.args
        if self.start_epoch == 0:
            self.log(
                f"rmix-train: {a.method} on {a.dataset} ({len(self.train_set)} train / {len(self.test_set)} test, "
                f"{self.num_classes} classes), {a.model}, {a.epochs} epochs x {self.steps_per_epoch} steps, "
                f"batch {a.batch_size} x {self.env.world_size} process(es), {a.scheduler} LR {a.lr}, "
                f"device {self.device}, amp {a.amp}, out {self.out}"
            )
        for epoch in range(self.start_epoch, a.epochs):
            train = self.train_epoch(epoch)
            test = self.evaluate(full=False)
            row = {
                "epoch": epoch + 1,
                **train,
                "test_loss": test["loss"],
                "test_top1": test["top1"],
                "test_top5": test["top5"],
                "lr": self.last_lr,
            }
            self.history.append(row)
            self.log(
                f"epoch {epoch + 1}/{a.epochs}  train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f}%  "
                f"test loss {row['test_loss']:.4f} top1 {row['test_top1']:.2f}%  lr {row['lr']:.4g}  "
                f"{row['images_per_s']:.0f} img/s  {format_duration(row['seconds'])}"
            )
            if epoch == 0 and self.sample is not None:
                self._write_sample_picture()
            self.save(epoch)
            self.write_metrics()
            self.env.barrier()
        final = self.evaluate(full=True)
        if self.env.is_main:
            write_plots(self.out, final, self.history)
            self.write_metrics(final)
            print_results(final, title=f"{a.method} / {a.model} / {a.dataset}: final test metrics")
        return final

    def _write_sample_picture(self) -> None:
        from rmix_fast.viz import save_mix_grid

        s = self.sample
        save_mix_grid(
            self.out / "mixed_samples.png",
            s["x"],
            s["perm"],
            s.get("saliency"),
            s.get("mask"),
            s["mixed"],
            s["lam_eff"],
            labels=s["labels"],
            class_names=list(self.train_set.classes),
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    trainer = Trainer(args)
    try:
        if args.resume:
            trainer.resume()
        else:
            trainer.clear_outputs()
        trainer.fit()
    finally:
        trainer.env.shutdown()
    return 0


def cli() -> None:
    """The ``rmix-train`` command: ``main()``, then an exit that a ``torchrun`` worker survives."""
    code = main()
    if in_torchrun_job():
        exit_worker(code)
    raise SystemExit(code)


if __name__ == "__main__":
    cli()
