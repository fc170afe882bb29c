"""AdAutoMix (Qin et al., ICLR 2024): a mask generator, trained adversarially against the classifier through
an EMA teacher, mixes N sources per pixel (``rmix_fast.blend_sources``).

Unlike the other mixers it runs the step's forwards itself: ``training_loss(model, x, y)`` returns the loss
whose one backward trains the classifier and the generator, and ``after_optimizer_step(model)`` steps the
mixer's own optimiser (generator and the classifier's second head) and moves the teacher. What each part
takes from the published code: ``rmix_fast.adautomix`` (generator, teacher, draws, losses) and the class
docstring below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmix_fast.adautomix import EmaTeacher, MaskGenerator, ema_momentum, sample_adautomix
from rmix_fast.adautomix.draws import AdAutoMixDraw
from rmix_fast.adautomix.generator import NORMS
from rmix_fast.adautomix.losses import cosine_term, generator_objective, mixed_targets
from rmix_fast.mixers.base import Mixer, MixParams, check_number
from rmix_fast.ops import blend_sources
from rmix_fast.reference.blend_sources import MODES

__all__ = ["AdAutoMix", "AdAutoMixLoss"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    log_p = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    return torch.sum(-targets.to(log_p.dtype) * log_p, dim=1).mean()


@dataclass(frozen=True)
class AdAutoMixLoss:
    """One step's losses. ``loss`` is what to backpropagate (once); the rest is detached, for logs."""

    loss: Tensor  # L_mix_q + L_re + the generator's objective
    logits: Tensor  # the classifier's logits on its mix (detached)
    targets: Tensor  # that mix's soft targets
    mixed: Tensor  # the classifier's mixed batch (detached)
    parts: dict[str, Tensor]  # detached scalars: mix_q, one_q, lin_q (N >= 3), mix_k, cosine
    adversarial: bool  # whether the generator maximised the teacher's loss this step


class AdAutoMix(Mixer):
    """AdAutoMix's mixer: ``mixer.attach(model, image_shape)`` once, then per step::

        out = mixer.training_loss(model, x, y, loss_fn)      # every forward of the step
        out.loss.backward()
        optimizer.step()                                     # the classifier
        mixer.after_optimizer_step(model, lr=current_lr)     # the generator and head, then the teacher

    The model must give logits from ``model(x)``, have ``forward_features(x)`` (the last feature map, whose
    spatial mean ``model.classifier``, an ``nn.Linear``, maps to the logits), and a submodule whose output
    the generator reads (``feature_layer``, default ``model.mask_feature_layer``): its side must divide the
    image's (the mask's upsampling factor is their ratio).

    Args:
        num_classes, alpha, label_smoothing, generator, backend: as ``Mixer`` (every batch is mixed).
        n_sources: N images per mix (3 on CIFAR, 2 on ImageNet as published).
        beta: weight of the teacher's loss in the adversarial objective (0.3 CIFAR, 0.1 ImageNet).
        mixup_ratio: N >= 3: weight of the linear mix's loss against the clean one (``mixup_radio`` 0.5).
        lam_margin: the classifier's mix falls back to the constant λ when λ_0 <= margin or >= 1 - margin.
        ema_momentum, ema_end_momentum, ema_warmup: the teacher's schedule (``ema_momentum`` function).
        lam_concat, norm, reduction, mode: the generator (``MaskGenerator``) and the upsampling mode.
        feature_layer: the model's submodule the generator reads (None: ``model.mask_feature_layer``).
        reuse_teacher_logits: take the cosine term's source predictions from the teacher's pass over the
            clean batch, permuted, instead of N more teacher passes. Equal up to rounding in the loss (a
            permuted batch has the same BatchNorm batch statistics); the teacher's running statistics then
            see N fewer updates a step. Default False (as published).
        lr, momentum, weight_decay, nesterov: SGD of the generator and the classifier's one-hot head, which
            the published code trains with the classifier's optimiser (its lr follows the classifier's:
            pass the current lr to ``after_optimizer_step``).

    Divergences from the published code, each with its reason:

    * The teacher's one-hot head (``head_one_k``) is not kept: no training loss reads it (the code only
      reports its test accuracy). The classifier's mixed head is ``model.classifier``, its one-hot head
      ``self.head_one``; the teacher is a copy of the whole model (its ``classifier`` is ``head_mix_k``).
    * The adversarial toggle is the checkpointed iteration count (even: adversarial), not an attribute
      that a restart resets; the same sequence for an uninterrupted run.
    * For N > 3 the λ fallback makes every source's weight constant (the code fills only the first three
      channels and keeps the generator's mask in the others). No published config uses N > 3.
    * Under ``torchrun`` the mixer is not wrapped in DDP: the loop averages every gradient and broadcasts
      the buffers from rank 0 (``rmix-train`` does), which is what DDP around the published model does.
    """

    owns_step: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 1.0,
        n_sources: int = 3,
        beta: float = 0.3,
        mixup_ratio: float = 0.5,
        lam_margin: float = 0.03,
        ema_momentum: float = 0.999,
        ema_end_momentum: float = 0.999999,
        ema_warmup: float = 0.1,
        lam_concat: bool = False,
        norm: str | None = None,
        reduction: int = 2,
        mode: str = "bilinear",
        feature_layer: str | None = None,
        reuse_teacher_logits: bool = False,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = False,
        label_smoothing: float = 0.0,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_classes, alpha=alpha, label_smoothing=label_smoothing, generator=generator, backend=backend
        )
        if isinstance(n_sources, bool) or not isinstance(n_sources, int) or n_sources < 2:
            raise ValueError(f"n_sources must be an int >= 2, got {n_sources!r}")
        self.n_sources = n_sources
        self.beta = check_number("beta", beta, 0.0, 1.0)
        self.mixup_ratio = check_number("mixup_ratio", mixup_ratio, 0.0, 1.0)
        self.lam_margin = check_number("lam_margin", lam_margin, 0.0, 0.5)
        if self.lam_margin >= 0.5:
            raise ValueError(f"lam_margin must be below 0.5, got {lam_margin!r}")
        self.ema_base = check_number("ema_momentum", ema_momentum, 0.0, 1.0)
        self.ema_end = check_number("ema_end_momentum", ema_end_momentum, 0.0, 1.0)
        if self.ema_base > self.ema_end:
            raise ValueError(f"ema_momentum must be <= ema_end_momentum, got {ema_momentum} > {ema_end_momentum}")
        self.ema_warmup = check_number("ema_warmup", ema_warmup, 0.0, 1.0)
        if not isinstance(lam_concat, bool) or not isinstance(reuse_teacher_logits, bool):
            raise TypeError("lam_concat and reuse_teacher_logits must be bools")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be an int >= 1, got {reduction!r}")
        if feature_layer is not None and not isinstance(feature_layer, str):
            raise TypeError(f"feature_layer must be a str or None, got {type(feature_layer).__name__}")
        self.lam_concat, self.norm, self.reduction, self.mode = lam_concat, norm, reduction, mode
        self.feature_layer = feature_layer
        self.reuse_teacher_logits = reuse_teacher_logits
        self.lr = check_number("lr", lr, 0.0, math.inf)
        self.sgd = {
            "momentum": check_number("momentum", momentum, 0.0, 1.0),
            "weight_decay": check_number("weight_decay", weight_decay, 0.0, math.inf),
            "nesterov": bool(nesterov) and momentum > 0,
        }
        self.iteration = 0  # steps taken: the toggle and the EMA schedule
        self.total_steps: int | None = None
        # built by attach(), from the model
        self.mask_generator: MaskGenerator | None = None
        self.head_one: nn.Linear | None = None
        self.teacher: EmaTeacher | None = None
        self.optimizer: torch.optim.SGD | None = None
        self.scale = 0
        self._sums: Tensor | None = None  # device sums of this epoch's loss parts and steps
        self._epoch_sums: Tensor | None = None  # the last ended epoch's, for epoch_stats

    # -- building ---------------------------------------------------------------------------------------
    def attach(self, model: nn.Module, image_shape: tuple[int, int, int]) -> None:
        """Builds the teacher (a frozen copy of ``model``), the generator and the one-hot head for images of
        ``image_shape`` (C, H, W), on the model's device. One probe forward in eval mode (no BatchNorm
        update) finds the feature map's channels and the upsampling factor."""
        if self.teacher is not None:
            raise RuntimeError("AdAutoMix.attach: the mixer is attached already (one model per mixer)")
        classifier = getattr(model, "classifier", None)
        if not callable(getattr(model, "forward_features", None)) or not isinstance(classifier, nn.Linear):
            raise TypeError(
                "AdAutoMix needs a model with forward_features(x) and an nn.Linear classifier on its pooled "
                f"output (the project's ImageClassifier contract), got {type(model).__name__}"
            )
        layer = self.feature_layer if self.feature_layer is not None else getattr(model, "mask_feature_layer", "")
        if not layer:
            raise ValueError(
                f"feature_layer must name a submodule of {type(model).__name__} (it has no mask_feature_layer)"
            )
        try:
            model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"feature_layer {layer!r} is not a submodule of {type(model).__name__}") from None
        if len(image_shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) positive ints, got {image_shape!r}")
        self.feature_layer = layer
        param = next(model.parameters())
        C, H, W = image_shape
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self._capture(model, layer) as captured:
                model(torch.zeros((2, C, H, W), device=param.device, dtype=param.dtype))
        finally:
            model.train(was_training)
        features = captured[0]
        h, w = features.shape[-2:]
        if features.dim() != 4 or H % h or W % w or H // h != W // w:
            raise ValueError(
                f"feature_layer {layer!r} gives {tuple(features.shape[1:])} for {H}x{W} images: its side must divide "
                "the image's by the same factor in both directions"
            )
        self.scale = H // h
        self.mask_generator = MaskGenerator(
            features.shape[1],
            reduction=self.reduction,
            lam_concat=self.lam_concat,
            norm=self.norm,
            device=param.device,
            dtype=param.dtype,
        )  # fmt: skip  (initialised from the global RNG, as the model: ``generator`` is the draws' stream)
        self.head_one = nn.Linear(
            classifier.in_features, classifier.out_features, device=param.device, dtype=param.dtype
        )
        with torch.no_grad():
            self.head_one.bias.zero_()  # as the model zoo's heads: no class preference at the start
        self.teacher = EmaTeacher(model)
        self.optimizer = torch.optim.SGD(
            [*self.mask_generator.parameters(), *self.head_one.parameters()], lr=self.lr, **self.sgd
        )

    def _attached(self) -> tuple[MaskGenerator, nn.Linear, EmaTeacher, torch.optim.SGD]:
        if self.teacher is None:
            raise RuntimeError("AdAutoMix: call attach(model, image_shape) before training or loading a state")
        return self.mask_generator, self.head_one, self.teacher, self.optimizer  # type: ignore[return-value]

    @staticmethod
    @contextmanager
    def _capture(model: nn.Module, layer: str) -> Iterator[list[Tensor]]:
        """Collects ``layer``'s output during the block's forwards (the hook is removed on leaving)."""
        captured: list[Tensor] = []
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            yield captured
        finally:
            handle.remove()

    # -- one step ---------------------------------------------------------------------------------------
    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    def momentum(self) -> float:
        """The teacher's momentum for this iteration (the schedule needs ``set_total_steps``)."""
        if self.total_steps is None:
            raise RuntimeError("AdAutoMix: set_total_steps(n) before training (the teacher's schedule needs it)")
        t = min(self.iteration, self.total_steps)
        return ema_momentum(t, self.total_steps, base=self.ema_base, end=self.ema_end, warmup=self.ema_warmup)

    def _blend(
        self, x: Tensor, index: Tensor, logits: Tensor, normalize: str = "softmax", mode: str | None = None
    ) -> Tensor:
        # the draws are valid by construction: no content check (and no sync)
        return blend_sources(
            x, index=index, logits=logits, scale=self.scale, mode=mode or self.mode, normalize=normalize,
            backend=self.backend, validate=False,
        )  # fmt: skip

    def _constant_mix(self, x: Tensor, index: Tensor, lam: Tensor) -> Tensor:
        """``sum_i lam_i x[index[i]]``: constant maps, replicated ("nearest": exact copies of λ)."""
        B, N = x.shape[0], index.shape[0]
        h, w = x.shape[2] // self.scale, x.shape[3] // self.scale
        weights = lam.to(torch.promote_types(x.dtype, torch.float32)).view(1, N, 1, 1).expand(B, N, h, w)
        return self._blend(x, index, weights, normalize="none", mode="nearest")

    def _mask_logits(self, features: Tensor, index: Tensor, lam: Tensor) -> Tensor:
        return self.mask_generator(features, index, lam if self.lam_concat else None)

    def training_loss(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn | None = None) -> AdAutoMixLoss:
        """Every forward of one AdAutoMix step, in the published order, and the loss to backpropagate.

        ``loss_fn(logits, soft_targets)`` is the classification loss (default: soft-target cross-entropy,
        the published one). The teacher runs in the model's mode (the published model trains in train mode:
        its BatchNorm takes batch statistics and updates its running ones)."""
        _, head_one, teacher, _ = self._attached()
        loss_fn = loss_fn or _soft_cross_entropy
        # float64 images get float64 targets (and λ), so a float64 step is exact to float64's rounding
        targets = self.prepare_targets(x, y, None).to(torch.promote_types(x.dtype, torch.float32))
        B, N = x.shape[0], self.n_sources
        draw = sample_adautomix(B, N, alpha=self.alpha, generator=self.generator, device=x.device)
        adversarial = self.iteration % 2 == 0
        teacher.train(model.training)
        # the teacher's features of the clean batch (and its logits, for reuse_teacher_logits)
        with torch.no_grad(), self._capture(teacher.module, self.feature_layer) as captured:
            clean_logits_k = teacher(x)
        features = captured[0]
        # the two masks: the generator learns through the first; the classifier's is fixed
        x_mb = self._blend(x, draw.index_mb, self._mask_logits(features, draw.index_mb, draw.lam_mb))
        with torch.no_grad():
            logits_bb = self._mask_logits(features, draw.index_bb, draw.lam_bb)
        fallback = draw.fallback(self.lam_margin)
        if fallback:
            x_bb = self._constant_mix(x, draw.index_bb, draw.lam_bb)
        else:
            x_bb = self._blend(x, draw.index_bb, logits_bb)
        # the generator's side: the teacher on its mix, and on the sources for the cosine term
        targets_mb = mixed_targets(targets, draw.index_mb, draw.lam_mb)
        mix_logits_k = teacher(x_mb)
        loss_k = loss_fn(mix_logits_k, targets_mb)
        with torch.no_grad():
            if self.reuse_teacher_logits:
                source_logits = clean_logits_k[draw.index_mb]
            else:
                source_logits = torch.stack([teacher(x[draw.index_mb[i]]) for i in range(N)])
        cosine = cosine_term(mix_logits_k, source_logits, draw.lam_mb)
        objective = generator_objective(loss_k, cosine, adversarial=adversarial, beta=self.beta)
        # the classifier's side: one-hot head on the clean batch, the linear mix (N >= 3), the generated mix
        loss_one = loss_fn(head_one(model.forward_features(x).mean(dim=(2, 3))), targets)
        targets_bb = mixed_targets(targets, draw.index_bb, draw.lam_bb)
        parts = {"one_q": loss_one}
        if N > 2:
            loss_lin = loss_fn(model(self._constant_mix(x, draw.index_bb, draw.lam_bb)), targets_bb)
            loss_re = loss_one * (1 - self.mixup_ratio) + loss_lin * self.mixup_ratio
            parts["lin_q"] = loss_lin
        else:  # the two-source path trains the one-hot head alone beside the mix (no linear mix)
            loss_re = loss_one
        logits_q = model(x_bb)
        loss_mix_q = loss_fn(logits_q, targets_bb)
        total = loss_mix_q + loss_re + objective
        parts.update(mix_q=loss_mix_q, mix_k=loss_k, cosine=cosine)
        parts = {k: v.detach() for k, v in parts.items()}
        self._accumulate(parts)
        self.last_params = self._params(draw, fallback)
        return AdAutoMixLoss(total, logits_q.detach(), targets_bb, x_bb.detach(), parts, adversarial)

    def after_optimizer_step(self, model: nn.Module, *, lr: float | None = None, scaler: Any = None) -> None:
        """After the classifier's optimiser step: steps the generator and the one-hot head (at ``lr``, the
        classifier's current lr; through ``scaler.step`` under a GradScaler), then moves the teacher towards
        ``model`` with this iteration's momentum, and counts the iteration."""
        _, _, teacher, optimizer = self._attached()
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        teacher.update(model, self.momentum())
        self.iteration += 1

    def _params(self, draw: AdAutoMixDraw, fallback: bool) -> MixParams:
        # the picture's "partner" is source 1, and lam_eff the first source's weight
        lam0 = draw.lam_bb[:1].float().expand(draw.index_bb.shape[1])
        return MixParams(True, perm=draw.index_bb[1], lam=lam0, lam_eff=lam0)

    # -- the generic call: the classifier's mix, without training anything -------------------------------
    def forward(
        self, x: Tensor, y: Tensor, grad: Tensor | None = None, *, logits: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The classifier's mix of this batch and its soft targets, from the current generator and teacher
        (no gradient, nothing trained, no iteration counted; the teacher's BatchNorm in eval mode)."""
        generator, _, teacher, _ = self._attached()
        targets = self.prepare_targets(x, y, grad, logits)
        draw = sample_adautomix(x.shape[0], self.n_sources, alpha=self.alpha, generator=self.generator, device=x.device)
        was_training = teacher.training
        teacher.eval()
        generator_training = generator.training
        generator.eval()
        try:
            with torch.no_grad(), self._capture(teacher.module, self.feature_layer) as captured:
                teacher(x)
                fallback = draw.fallback(self.lam_margin)
                if fallback:
                    mixed = self._constant_mix(x, draw.index_bb, draw.lam_bb)
                else:
                    mixed = self._blend(x, draw.index_bb, self._mask_logits(captured[0], draw.index_bb, draw.lam_bb))
        finally:
            teacher.train(was_training)
            generator.train(generator_training)
        self.last_params = self._params(draw, fallback)
        return mixed, mixed_targets(targets, draw.index_bb, draw.lam_bb)

    # -- logs and state -----------------------------------------------------------------------------------
    _PARTS: ClassVar[tuple[str, ...]] = ("mix_q", "one_q", "lin_q", "mix_k", "cosine")

    def _accumulate(self, parts: dict[str, Tensor]) -> None:
        values = [parts.get(k, torch.zeros((), device=parts["mix_q"].device)).double() for k in self._PARTS]
        row = torch.stack([*values, torch.ones_like(values[0])])
        self._sums = row if self._sums is None else self._sums + row

    def epoch_stats(self) -> dict[str, float]:
        """The mean of each loss part over the epoch just ended (read once an epoch), and the momentum."""
        if self._epoch_sums is None:
            return {}
        *sums, count = self._epoch_sums.tolist()
        out = {f"adautomix_{k}": s / count for k, s in zip(self._PARTS, sums, strict=True)}
        if self.n_sources == 2:
            out.pop("adautomix_lin_q")
        out["adautomix_momentum"] = self.momentum() if self.total_steps is not None else float("nan")
        return out

    def end_epoch(self) -> None:
        self._epoch_sums, self._sums = self._sums, None

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        if state["optimizer"] is not None:
            _, _, _, optimizer = self._attached()
            optimizer.load_state_dict(state["optimizer"])

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_sources={self.n_sources}, beta={self.beta}, mixup_ratio={self.mixup_ratio}, "
            f"lam_margin={self.lam_margin}, ema=({self.ema_base}, {self.ema_end}, warmup {self.ema_warmup}), "
            f"feature_layer={self.feature_layer!r}, scale={self.scale}, "
            f"reuse_teacher_logits={self.reuse_teacher_logits}"
        )
