"""Batch mixers for training loops: ``RMix``, ``Mixup`` and ``CutMix`` with one call signature.

    mixer = rmix_fast.RMix(num_classes)
    x_mix, y_soft = mixer(x, y, grad)     # grad from rmix_fast.input_gradient; Mixup / CutMix ignore it

All three mix through the same blend kernels (``blend_regions``): a mixup is a map that blends
everywhere, a CutMix box is a map that takes the partner inside the box, and R-Mix's map comes from its
thresholded saliency (``rmix``, which fuses the saliency and threshold steps in front of the same blend).
Labels mix by the op's ``lam_eff``, the exact share of each sample's own pixels.

Randomness comes from ``generator`` (a CPU ``torch.Generator``; None: the global RNG), so a seed gives
the same draws on every device. What was drawn for the last batch is in ``mixer.last_params``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

from rmix_fast.functional import OWN, PARTNER, blend_regions, rmix
from rmix_fast.sampling import sample_beta, sample_rmix_params

__all__ = ["CutMix", "MixParams", "Mixup", "RMix", "soft_targets"]


@dataclass(frozen=True)
class MixParams:
    """What a mixer drew for one batch (all on the batch's device; ``None`` where a field does not apply)."""

    applied: bool  # False when the batch was passed through (probability 1 - prob)
    perm: Tensor | None = None  # (B,) partner of each sample
    lam: Tensor | None = None  # (B,) float32 blend weight drawn from Beta(alpha, alpha)
    lam_eff: Tensor | None = None  # (B,) float32 weight of each sample's own label
    grid: int | None = None  # R-Mix: p
    q: Tensor | None = None  # R-Mix: (B,) percentile levels
    mask: Tensor | None = None  # R-Mix: (B, p, p) bool top mask
    box: Tensor | None = None  # CutMix: (B, 4) int64 rows [y0, y1) and columns [x0, x1) taken from the partner


def soft_targets(y: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """(B,) integer labels or (B, K) soft targets -> (B, K) float32 targets, smoothed towards uniform:
    ``t * (1 - label_smoothing) + label_smoothing / K`` (for one-hot labels, timm's on/off values)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 1:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"y of shape (B,) must hold integer class labels, got dtype {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes - 1}], got values in [{int(y.min())}, {int(y.max())}]"
            )
        t = torch.nn.functional.one_hot(y.long(), num_classes).to(torch.float32)
    elif y.dim() == 2:
        if y.shape[1] != num_classes or not y.is_floating_point():
            raise ValueError(f"soft targets must be a float (B, {num_classes}) tensor, got {y.dtype} {tuple(y.shape)}")
        t = y.to(torch.float32)
    else:
        raise ValueError(f"y must be (B,) labels or (B, {num_classes}) soft targets, got shape {tuple(y.shape)}")
    return t * (1.0 - label_smoothing) + label_smoothing / num_classes if label_smoothing else t


def _check_number(name: str, value: object, lo: float, hi: float, *, open_lo: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if open_lo else lo <= value) and value <= hi
    if not ok:
        raise ValueError(f"{name} must be a number in {'(' if open_lo else '['}{lo}, {hi}], got {value!r}")
    return float(value)


class _Mixer:
    """Shared argument checks, the ``prob`` draw and label mixing. Subclasses draw and mix pixels."""

    needs_grad = False

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 1.0,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
        per_sample_lam: bool = False,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator (draws are made on the CPU), got {generator.device}")
        self.num_classes = num_classes
        self.alpha = _check_number("alpha", alpha, 0.0, math.inf, open_lo=True)
        self.prob = _check_number("prob", prob, 0.0, 1.0)
        self.label_smoothing = _check_number("label_smoothing", label_smoothing, 0.0, 1.0)
        self.per_sample_lam = bool(per_sample_lam)
        self.generator = generator
        self.backend = backend
        self.last_params: MixParams | None = None

    def __call__(self, x: Tensor, y: Tensor, grad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images, (B,) labels or (B, K) soft targets [, (B, C, H, W) input gradient] ->
        (mixed images like x, (B, num_classes) float32 soft targets)."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a 4-D tensor (B, C, H, W), got {x!r:.80}")
        if isinstance(y, Tensor) and y.shape[:1] != x.shape[:1]:
            raise ValueError(f"y must have x's batch size {x.shape[0]}, got shape {tuple(y.shape)}")
        if self.needs_grad and grad is None:
            raise ValueError(f"{type(self).__name__} needs grad: pass rmix_fast.input_gradient(model, x, y)")
        targets = soft_targets(y, self.num_classes, self.label_smoothing).to(x.device)
        if self.prob < 1.0 and float(torch.rand((), generator=self.generator)) >= self.prob:
            self.last_params = MixParams(applied=False)
            return x, targets
        mixed, params = self._mix(x, grad)
        self.last_params = params
        # lerp is exact where both targets agree (e.g. B = 1: a sample mixed with itself keeps its label)
        return mixed, torch.lerp(targets[params.perm], targets, params.lam_eff.unsqueeze(1))

    def _mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        raise NotImplementedError

    def _draw_lam(self, batch: int) -> Tensor:
        lam = sample_beta(self.alpha, batch if self.per_sample_lam else 1, self.generator)
        return lam.to(torch.float32).expand(batch).contiguous()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, alpha={self.alpha}, prob={self.prob}, "
            f"label_smoothing={self.label_smoothing}, per_sample_lam={self.per_sample_lam}, backend={self.backend!r})"
        )


class RMix(_Mixer):
    """R-Mix (Luu et al. 2023): per batch p from ``grids``, lam ~ Beta(alpha, alpha) (one per batch, or per
    sample), q per sample from ``levels`` equal steps in [0, 0.99], a random partner for every sample."""

    needs_grad = True

    def __init__(
        self,
        num_classes: int,
        alpha: float = 1.0,
        grids: tuple[int, ...] = (2, 4),
        levels: int = 10,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
        per_sample_lam: bool = False,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_classes,
            alpha=alpha,
            prob=prob,
            label_smoothing=label_smoothing,
            per_sample_lam=per_sample_lam,
            generator=generator,
            backend=backend,
        )
        self.grids = tuple(grids)
        if not self.grids or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in self.grids):
            raise ValueError(f"grids must be a non-empty sequence of ints >= 1, got {grids!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be an int >= 1, got {levels!r}")
        self.levels = levels

    def _mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        B, _, H, W = x.shape
        bad = [p for p in self.grids if H % p or W % p]
        if bad:
            raise ValueError(f"grids {bad} do not divide the image size H={H}, W={W} (grids={self.grids})")
        p = sample_rmix_params(
            B,
            alpha=self.alpha,
            grids=self.grids,
            levels=self.levels,
            per_sample_lam=self.per_sample_lam,
            generator=self.generator,
            device=x.device,
        )
        # the sampler's draws are valid by construction: skip the content checks and their sync
        mixed, lam_eff, mask = rmix(
            x, grad.detach(), perm=p.perm, lam=p.lam, q=p.q, grid=p.grid, backend=self.backend,
            validate=False, return_mask=True,
        )  # fmt: skip
        return mixed, MixParams(True, p.perm, p.lam, lam_eff, grid=p.grid, q=p.q, mask=mask)


class Mixup(_Mixer):
    """Mixup (Zhang et al. 2018): every pixel ``lam*x + (1-lam)*x[perm]``, lam ~ Beta(alpha, alpha)."""

    def _mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        B = x.shape[0]
        lam = self._draw_lam(B)
        perm = torch.randperm(B, generator=self.generator)
        perm, lam = perm.to(x.device), lam.to(x.device)
        regions = torch.zeros((B, 1, 1), dtype=torch.int8, device=x.device)  # one cell, blended
        mixed, lam_eff = blend_regions(x, perm=perm, lam=lam, regions=regions, backend=self.backend, validate=False)
        return mixed, MixParams(True, perm, lam, lam_eff)


class CutMix(_Mixer):
    """CutMix (Yun et al. 2019): a box of area ~(1 - lam) of the image, centred uniformly at random and
    clipped to the image, is taken from the partner. lam is corrected to the pasted area: ``lam_eff`` is
    the exact fraction of own pixels. One box per batch, or one per sample with ``per_sample_lam``."""

    def _mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        B, _, H, W = x.shape
        lam = self._draw_lam(B)
        n_boxes = B if self.per_sample_lam else 1
        cut = torch.sqrt(1.0 - lam[:n_boxes].double())
        cut_h, cut_w = (H * cut).long(), (W * cut).long()
        cy = torch.randint(H, (n_boxes,), generator=self.generator)
        cx = torch.randint(W, (n_boxes,), generator=self.generator)
        y0, y1 = (cy - cut_h // 2).clamp(0, H), (cy + cut_h // 2).clamp(0, H)
        x0, x1 = (cx - cut_w // 2).clamp(0, W), (cx + cut_w // 2).clamp(0, W)
        box = torch.stack([y0, y1, x0, x1], dim=1).expand(B, 4)
        perm = torch.randperm(B, generator=self.generator)
        # The coarsest code map whose cell edges include every box edge: fewer bytes than one code per pixel.
        step_h = math.gcd(H, *y0.tolist(), *y1.tolist())
        step_w = math.gcd(W, *x0.tolist(), *x1.tolist())
        rows = torch.arange(0, H, step_h).view(1, -1, 1)
        cols = torch.arange(0, W, step_w).view(1, 1, -1)
        inside = (rows >= box[:, 0, None, None]) & (rows < box[:, 1, None, None])
        inside = inside & (cols >= box[:, 2, None, None]) & (cols < box[:, 3, None, None])
        regions = torch.where(inside, PARTNER, OWN).to(torch.int8)
        perm, lam, regions = perm.to(x.device), lam.to(x.device), regions.to(x.device)
        mixed, lam_eff = blend_regions(x, perm=perm, lam=lam, regions=regions, backend=self.backend, validate=False)
        return mixed, MixParams(True, perm, lam, lam_eff, box=box.to(x.device))
