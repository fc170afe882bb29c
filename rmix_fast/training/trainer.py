"""The training loop of rmix-train: one code path for every method (the method only supplies the mixer).

Each epoch ends with a test pass, one log line, an atomic checkpoint (model, optimizer, scheduler, scaler,
mixer state, history, RNG) and ``metrics.json``; the run ends with the full evaluation and its plots.
Every random choice of an epoch comes from generators seeded by (seed, epoch, rank), so ``--resume``
continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import argparse
import math
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from rmix_fast.losses import LOSSES
from rmix_fast.mixers import Mixer, soft_targets
from rmix_fast.saliency import clean_loss_backward, input_gradient
from rmix_fast.training.batches import epoch_batches, iterate_batches, to_pixels
from rmix_fast.training.checkpoint import load_checkpoint
from rmix_fast.training.data import build_dataset
from rmix_fast.training.distributed import setup_distributed
from rmix_fast.training.evaluation import evaluate_model, print_results, write_plots
from rmix_fast.training.methods import METHODS
from rmix_fast.training.models import PixelClassifier, build_model
from rmix_fast.training.options import config_value
from rmix_fast.training.progress import ProgressBar, format_duration
from rmix_fast.training.run_dir import RunDir
from rmix_fast.training.runtime import amp_autocast, default_device, place_device, versions
from rmix_fast.training.seeding import AUGMENT, MIX, seeded

__all__ = ["Trainer"]


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
    if args.scheduler == "cosine":
        # mmcv's CosineAnnealingLrUpdaterHook (by_epoch): lr(e) = min + (lr - min) (1 + cos(pi e / E)) / 2 for
        # epoch e of E, constant within an epoch (stepped per batch, so the epoch is step // steps_per_epoch)
        def factor(step: int) -> float:
            progress = (step // steps_per_epoch) / args.epochs
            return (args.min_lr + (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress)) / 2) / args.lr

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    # Stepped per batch like OneCycleLR, so milestones are counted in steps.
    milestones = [m * steps_per_epoch for m in args.milestones]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=args.gamma)


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return type(value)((k, _to_cpu(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


class Trainer:
    """Everything one run holds; ``fit()`` runs the remaining epochs and the final evaluation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        requested = default_device(args.device)
        self.env = setup_distributed(requested)
        self.device = place_device(requested, self.env)
        self.run = RunDir(args.out, is_main=self.env.is_main)
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
        self.mixer: Mixer | None = METHODS[args.method].build(args, self.num_classes)
        if self.mixer is not None:
            self.mixer.set_dataset_size(len(self.train_set))  # for per-sample state, indexed by dataset index
            self.mixer.to(self.device)
            self.mixer.attach(self.model, (self.train_set.channels, *self.train_set.image_size))
            self.mixer.set_total_steps(args.epochs * self.steps_per_epoch)
        # where a mixer of hidden activations may mix (the network's stage ends); image mixers ignore them
        self.mix_layers = self.model.mix_layers()
        self.criterion = LOSSES[args.loss]()
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.last_lr = args.lr
        self.sample: dict[str, Any] | None = None
        # torch.compile wraps the model inside DDP, so input_gradient can still step around the DDP wrapper.
        self.forward_model: nn.Module = torch.compile(self.model) if args.compile else self.model
        # A mixer that runs several forwards of the model a step is not wrapped in DDP (whose reducer expects
        # one forward per backward): its step averages the gradients and broadcasts the buffers itself.
        if self.env.active and not self.owned_step:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = nn.parallel.DistributedDataParallel(self.forward_model, device_ids=ids)

    @property
    def owned_step(self) -> bool:
        return self.mixer is not None and self.mixer.owns_step

    # -- the run's state ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {k: config_value(v) for k, v in vars(self.args).items()}

    def start_fresh(self) -> None:
        """A new run: outputs of an earlier run in the same folder (--overwrite) go."""
        self.run.clear()
        self.env.barrier()

    def resume(self) -> None:
        state = load_checkpoint(self.run.checkpoint, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.mixer is not None:
            # every rank its own state where the checkpoint has one per rank (a learned mixer's rollout)
            per_rank = state.get("mixer_ranks")
            own = per_rank[self.env.rank] if per_rank and len(per_rank) == self.env.world_size else None
            self.mixer.load_state_dict(own if own is not None else state.get("mixer", {}))
        self.history = state["history"]
        self.start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng"]["torch"])
        self.run.log(f"resumed from {self.run.checkpoint} after epoch {state['epoch'] + 1}/{self.args.epochs}")

    def save(self, epoch: int) -> None:
        mixer_state = self.mixer.state_dict() if self.mixer is not None else {}
        # Under torchrun a learned mixer's state may differ per rank (RL-Mix: one policy, but each rank's own
        # rollout of its own batches): rank 0 keeps every rank's, so each resumes its own.
        mixer_ranks = self.env.gather_objects(_to_cpu(mixer_state)) if self.env.active and mixer_state else None
        self.run.save_checkpoint(
            {
                "epoch": epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "mixer": mixer_state,
                "mixer_ranks": mixer_ranks,
                "history": self.history,
                "config": self.config(),
                "rng": {"torch": torch.get_rng_state()},
                "classes": list(self.train_set.classes),
                "versions": versions(),
            }
        )

    def write_metrics(self, final: dict[str, Any] | None = None) -> None:
        self.run.write_metrics(
            {
                "config": self.config(),
                "versions": versions(),
                "device": str(self.device),
                "world_size": self.env.world_size,
                "classes": list(self.train_set.classes),
                "history": self.history,
                "complete": final is not None,
                "final": final,
            }
        )

    # -- training ---------------------------------------------------------------------------------------
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

    def step(self, x: Tensor, y: Tensor, indices: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One optimisation step; returns the detached loss of the (mixed) batch, the number of correct
        dominant labels, the batch the model was given and the input gradient (None unless the method needs it).
        ``indices``: the batch's dataset indices (CPU), for a mixer that ``needs_indices``.

        With ``--clean-loss-weight W > 0`` the clean batch's loss (the run's loss on its own targets) is a
        training signal too: one backward of ``W * clean_loss`` leaves its parameter gradients in ``.grad`` for
        the mixed loss's backward to add to, and gives the input gradient (a positive multiple of the clean
        loss's, which the mixers use only up to scale) for a method that needs one. ``--mix-loss-weight``
        scales the mixed loss's backward (the returned loss is unweighted)."""
        if self.owned_step:
            return self._owned_step(x, y)
        a = self.args
        grad = clean_logits = None
        needs_grad = self.mixer is not None and self.mixer.needs_grad_for(indices)
        needs_logits = self.mixer is not None and self.mixer.needs_logits
        self.optimizer.zero_grad(set_to_none=True)  # before the clean pass, whose gradients are kept
        with amp_autocast(a.amp, self.device):
            if a.clean_loss_weight > 0:
                grad, _, clean_logits = clean_loss_backward(
                    self.forward_model,
                    x,
                    soft_targets(y, self.num_classes, a.label_smoothing),
                    weight=a.clean_loss_weight,
                    loss_fn=self.criterion,
                    batchnorm=a.saliency_batchnorm,
                    resolution=a.saliency_resolution,
                    input_grad=needs_grad,
                    scale_loss=self.scaler.scale,
                    return_logits=True,
                )
            elif needs_grad:
                grad, clean_logits = input_gradient(
                    self.forward_model,
                    x,
                    y,
                    batchnorm=a.saliency_batchnorm,
                    resolution=a.saliency_resolution,
                    return_logits=True,
                )
            # Every mixer wraps the forward: images mixed before it, or hidden activations inside it.
            if self.mixer is None:
                mixing = nullcontext((x, soft_targets(y, self.num_classes, a.label_smoothing)))
            else:
                observed = clean_logits if needs_logits else None
                extra = {"indices": indices} if self.mixer.needs_indices else {}
                mixing = self.mixer.mixing(x, y, grad, layers=self.mix_layers, logits=observed, **extra)
            with mixing as (x_mix, y_soft):
                logits = self.forward_model(x_mix)
            loss = self.criterion(logits, y_soft)
        weighted = loss * a.mix_loss_weight if a.mix_loss_weight != 1 else loss
        self.scaler.scale(weighted).backward()
        if self.mixer is not None:
            self.mixer.after_backward()  # a learned mixer reads the step's gradients (RL-Mix's reward)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the LR this step used, for the log
        self.scheduler.step()
        correct = (logits.detach().argmax(1) == y_soft.argmax(1)).sum()
        return loss.detach(), correct, x_mix, grad

    def _owned_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        """A step whose forwards and loss the mixer makes (AdAutoMix): one backward of its loss, the
        classifier's optimiser step, then the mixer's own (``after_optimizer_step``). Under torchrun every
        rank starts from rank 0's buffers and steps with the gradients averaged over the ranks, as DDP (with
        its default ``broadcast_buffers``) would give around the whole published model."""
        a, mixer = self.args, self.mixer
        self.optimizer.zero_grad(set_to_none=True)
        if self.env.active:
            self.env.broadcast_([*self.model.buffers(), *mixer.buffers()])
        with amp_autocast(a.amp, self.device):
            out = mixer.training_loss(self.model, x, y, self.criterion)
        self.scaler.scale(out.loss).backward()
        if self.env.active:
            self.env.average_gradients([*self.model.parameters(), *mixer.parameters()])
        self.scaler.step(self.optimizer)
        lr = self.optimizer.param_groups[0]["lr"]
        mixer.after_optimizer_step(self.model, lr=lr, scaler=self.scaler if self.scaler.is_enabled() else None)
        self.scaler.update()
        self.last_lr = lr
        self.scheduler.step()
        correct = (out.logits.argmax(1) == out.targets.argmax(1)).sum()
        return out.parts["mix_q"], correct, out.mixed, None

    def _keep_sample(self, x: Tensor, y: Tensor, x_mix: Tensor, grad: Tensor | None) -> None:
        """The run's first batch, for the picture of mixed samples: any method's regions, and the saliency
        its regions were built from when it has one."""
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
        if applied and params.layer:
            # the model was given x and mixed its activations inside: say so, as the "mixed" row shows x
            self.sample["title"] = (
                f"Manifold Mixup: the activations after stage {params.layer} were mixed "
                "(the 'mixed' row is the model's input)"
            )
        sources = getattr(self.mixer, "n_sources", 2)
        if applied and sources > 2:
            # the picture has rows for two images; the mixes are of N permuted copies of the batch
            self.sample["title"] = (
                f"{type(self.mixer).__name__}: each mix is of {sources} images of the batch, which need not "
                "include A; B is the second, and the weights shown are the first image's"
            )
        if applied:
            regions = params.region_map()
            saliency = self.mixer.saliency_map(grad, params) if grad is not None else None
            self.sample["regions"] = regions.cpu() if regions is not None else None
            self.sample["saliency"] = saliency.cpu() if saliency is not None else None
            self.sample["top"] = params.mask.cpu() if saliency is not None and params.mask is not None else None

    def train_epoch(self, epoch: int) -> dict[str, float]:
        a, env = self.args, self.env
        self.model.train()
        self.train_set.set_epoch(epoch)
        batches = self._batches(epoch)
        augment_gen = seeded(a.seed, epoch, env.rank, AUGMENT)
        if self.mixer is not None:
            self.mixer.generator = seeded(a.seed, epoch, env.rank, MIX)
        # Device sums of loss * B and correct labels; the image count is known on the host. Only the bar and
        # the epoch's end read the sums back, so a step never waits for the device.
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        seen = 0
        bar = ProgressBar(len(batches), f"epoch {epoch + 1}/{a.epochs}", enabled=env.is_main and a.progress)
        start = time.perf_counter()
        stream = iterate_batches(self.train_set, batches, device=self.device, workers=a.workers)
        for step, (xb, yb, idx) in enumerate(stream):
            x = to_pixels(
                xb,
                augment=self.train_set.train_augment == "crop_flip",
                padding=a.crop_padding,
                generator=augment_gen,
                channels_last=a.channels_last,
            )
            loss, correct, x_mix, grad = self.step(x, yb, idx)
            if epoch == 0 and step == 0 and env.is_main:
                self._keep_sample(x, yb, x_mix, grad)
            sums += torch.stack([loss.double() * yb.shape[0], correct.double()])
            seen += yb.shape[0]
            if bar.due(step + 1):  # reading the sums waits for the device: only when the bar draws
                loss_sum, correct_sum = sums.tolist()
                bar.update(step + 1, seen * env.world_size, loss=loss_sum / seen, acc=100 * correct_sum / seen)
        bar.close()
        if self.mixer is not None:
            self.mixer.end_epoch()
        totals = torch.cat([sums, sums.new_full((1,), seen)])  # loss * B, correct, B (a fill: no copy)
        env.all_reduce_sum(totals)
        loss_sum, correct_sum, count = totals.tolist()
        seconds = time.perf_counter() - start
        return {
            "train_loss": loss_sum / count,
            "train_top1": 100 * correct_sum / count,
            "images_per_s": count / seconds,
            "seconds": seconds,
            **(self.mixer.epoch_stats() if self.mixer is not None else {}),  # rank 0's, for a learned mixer
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
            self.run.log(
                f"rmix-train: {a.method} on {a.dataset} ({len(self.train_set)} train / {len(self.test_set)} test, "
                f"{self.num_classes} classes), {a.model}, {a.epochs} epochs x {self.steps_per_epoch} steps, "
                f"batch {a.batch_size} x {self.env.world_size} process(es), {a.scheduler} LR {a.lr}, "
                f"device {self.device}, amp {a.amp}, out {self.run.path}"
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
            self.run.log(
                f"epoch {epoch + 1}/{a.epochs}  train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f}%  "
                f"test loss {row['test_loss']:.4f} top1 {row['test_top1']:.2f}%  lr {row['lr']:.4g}  "
                f"{row['images_per_s']:.0f} img/s  {format_duration(row['seconds'])}"
                + (f"  agent reward {row['rl_reward']:.3f} mean q {row['rl_mean_q']:.3f}" if "rl_reward" in row else "")
                + (
                    f"  teacher loss {row['adautomix_mix_k']:.3f} cosine {row['adautomix_cosine']:.3f}"
                    if "adautomix_mix_k" in row
                    else ""
                )
            )
            if epoch == 0 and self.sample is not None:
                self._write_sample_picture()
            self.save(epoch)
            self.write_metrics()
            self.env.barrier()
        final = self.evaluate(full=True)
        if self.env.is_main:
            write_plots(self.run.path, final, self.history)
            self.write_metrics(final)
            print_results(final, title=f"{a.method} / {a.model} / {a.dataset}: final test metrics")
        return final

    def _write_sample_picture(self) -> None:
        from rmix_fast.viz import save_mix_grid

        s = self.sample
        save_mix_grid(
            self.run.sample_picture,
            s["x"],
            s["perm"],
            s["mixed"],
            s["lam_eff"],
            regions=s.get("regions"),
            saliency=s.get("saliency"),
            top=s.get("top"),
            labels=s["labels"],
            class_names=list(self.train_set.classes),
            title=s.get("title"),
        )
