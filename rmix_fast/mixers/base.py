"""The base of every mixer: argument checks, the ``prob`` draw, label mixing through ``lam_eff`` and
``last_params``. A method supplies only its draw and its op call (``Mixer.mix``), or only its region map
(``RegionMixer.draw_regions``).

A mixer is an ``nn.Module``, so a learned one has ``.to()`` and ``state_dict()`` (checkpointed with the run
by ``rmix-train``, which saves rank 0's state and resumes every rank from it: a mixer with state keeps it
identical on every rank); the methods here hold no state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rmix_fast.ops import blend_regions, regions_from_mask
from rmix_fast.ops._checks import assert_in_range_async
from rmix_fast.sampling import sample_beta, to_device

__all__ = ["MixParams", "Mixer", "RegionMixer", "check_number", "soft_targets"]


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
    regions: Tensor | None = None  # (B, gh, gw) int8 region codes, for methods that draw a code map
    layer: int | None = None  # Manifold Mixup: 0 for the input, k for the output of the k-th mixable layer
    actions: Tensor | None = None  # RL-Mix: (B,) int64 level index each sample's q was chosen as
    shift: Tensor | None = None  # SAGE: (B, 2) int64 shift (dy, dx) of each sample's partner
    offsets: Tensor | None = None  # SAGE: (K, 2) int64 candidate shifts searched

    def region_map(self) -> Tensor | None:
        """(B, gh, gw) int8 codes of how each cell of each mixed image was made (``BLEND``, ``OWN``,
        ``PARTNER``): the drawn map, or R-Mix's from its top mask; None when nothing was mixed."""
        if self.regions is not None:
            return self.regions
        if self.mask is not None and self.perm is not None:
            return regions_from_mask(self.mask, self.perm)
        return None


def soft_targets(y: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """(B,) integer labels or (B, K) soft targets -> (B, K) float32 targets, smoothed towards uniform:
    ``t * (1 - label_smoothing) + label_smoothing / K`` (for one-hot labels, timm's on/off values).

    Labels outside [0, K) raise ``ValueError`` on the CPU; on a GPU they fail a device-side assert, which
    surfaces at the next synchronising call: the check never reads the labels back, so a training step
    does not wait for the device here."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() == 1:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"y of shape (B,) must hold integer class labels, got dtype {y.dtype}")
        assert_in_range_async(y, num_classes, "labels")
        t = torch.zeros((y.shape[0], num_classes), dtype=torch.float32, device=y.device)
        t.scatter_(1, y.long().unsqueeze(1), 1.0)
    elif y.dim() == 2:
        if y.shape[1] != num_classes or not y.is_floating_point():
            raise ValueError(f"soft targets must be a float (B, {num_classes}) tensor, got {y.dtype} {tuple(y.shape)}")
        t = y.to(torch.float32)
    else:
        raise ValueError(f"y must be (B,) labels or (B, {num_classes}) soft targets, got shape {tuple(y.shape)}")
    return t * (1.0 - label_smoothing) + label_smoothing / num_classes if label_smoothing else t


def check_number(name: str, value: object, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """A finite real number in [lo, hi] (or (lo, hi] with ``open_lo``), as a float."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo < value if open_lo else lo <= value) and value <= hi
    if not ok:
        raise ValueError(f"{name} must be a number in {'(' if open_lo else '['}{lo}, {hi}], got {value!r}")
    return float(value)


class Mixer(nn.Module):
    """Mixes a batch and its labels: ``x_mix, y_soft = mixer(x, y, grad)``.

    Args:
        num_classes: K of the (B, K) soft targets.
        alpha: lam ~ Beta(alpha, alpha).
        prob: probability that a batch is mixed (else it passes through, with its one-hot targets).
        label_smoothing: smoothing of the targets towards uniform, before mixing.
        per_sample_lam: one lam per sample instead of one per batch.
        generator: CPU ``torch.Generator`` of every draw (None: the global RNG), so a seed gives the same
            draws on every device.
        backend: kernel backend of the op calls ("auto", "reference", "triton", "cpp").

    A call never waits for the device: the draws are made on the CPU generator, read there, and copied to
    the batch's device without blocking, and bad labels fail on the device (``soft_targets``). Nothing is
    read back from the batch, its labels or the op's outputs.

    A training loop that runs every method through one call uses ``mixer.mixing(...)`` around its forward
    (images mixed before it, or hidden activations inside it). Subclasses implement ``mix``, or ``mixing``
    for a mix inside the forward; a method that needs the input gradient sets ``needs_grad``.
    """

    needs_grad: ClassVar[bool] = False
    needs_logits: ClassVar[bool] = False  # the clean pass's (B, K) logits too (RL-Mix's observation)
    # The mixer runs the step's forwards and builds its loss (``training_loss``), then steps its own state
    # after the classifier's optimiser (``after_optimizer_step``): AdAutoMix.
    owns_step: ClassVar[bool] = False
    # The batch's dataset indices too (``indices=``, a (B,) CPU integer tensor): a mixer that keeps per-sample
    # state across epochs (``AmortisedRMix``'s saliency store).
    needs_indices: ClassVar[bool] = False

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
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator (draws are made on the CPU), got {generator.device}")
        self.num_classes = num_classes
        self.alpha = check_number("alpha", alpha, 0.0, math.inf, open_lo=True)
        self.prob = check_number("prob", prob, 0.0, 1.0)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, 0.0, 1.0)
        self.per_sample_lam = bool(per_sample_lam)
        self.generator = generator
        self.backend = backend
        self.last_params: MixParams | None = None

    def forward(
        self, x: Tensor, y: Tensor, grad: Tensor | None = None, *, logits: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images, (B,) labels or (B, K) soft targets [, (B, C, H, W) input gradient] ->
        (mixed images like x, (B, num_classes) float32 soft targets). ``logits``: the clean pass's, for a
        method that ``needs_logits`` (others ignore them)."""
        targets = self.prepare_targets(x, y, grad, logits)
        if not self.draw_applied():
            self.last_params = MixParams(applied=False)
            return x, targets
        mixed, params = self.mix(x, grad)
        self.last_params = params
        return mixed, self.mix_targets(targets, params)

    @contextmanager
    def mixing(
        self,
        x: Tensor,
        y: Tensor,
        grad: Tensor | None = None,
        *,
        layers: Sequence[nn.Module] = (),
        logits: Tensor | None = None,
        indices: Tensor | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The mix of one forward pass, the same call for every mixer:

            with mixer.mixing(x, y, grad, layers=net_layers) as (x_in, y_soft):
                logits = model(x_in)

        A mixer of images mixes them on entering (``x_in, y_soft = mixer(x, y, grad)``) and ignores
        ``layers``. A mixer of hidden activations (``ManifoldMixup``) hands back ``x`` itself and mixes the
        output of one of ``layers`` (modules run by ``model``'s forward) inside the block instead, removing
        its hook on leaving the block, also when the forward raises. ``indices``: the batch's dataset indices,
        handed on to a mixer that ``needs_indices`` (others ignore them)."""
        yield self(x, y, grad, logits=logits, **({"indices": indices} if self.needs_indices else {}))

    def prepare_targets(self, x: Tensor, y: Tensor, grad: Tensor | None, logits: Tensor | None = None) -> Tensor:
        """Checks the call's arguments; returns y as (B, num_classes) float32 smoothed targets on x's device."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a 4-D tensor (B, C, H, W), got {x!r:.80}")
        if isinstance(y, Tensor) and y.shape[:1] != x.shape[:1]:
            raise ValueError(f"y must have x's batch size {x.shape[0]}, got shape {tuple(y.shape)}")
        if self.needs_grad and grad is None:
            raise ValueError(f"{type(self).__name__} needs grad: pass rmix_fast.input_gradient(model, x, y)")
        if self.needs_logits and (not isinstance(logits, Tensor) or logits.shape != (x.shape[0], self.num_classes)):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"{type(self).__name__} needs logits=(B, {self.num_classes}) clean logits "
                f"(rmix_fast.input_gradient(..., return_logits=True)), got {got}"
            )
        return soft_targets(y, self.num_classes, self.label_smoothing).to(x.device)

    def draw_applied(self) -> bool:
        """Whether this batch is mixed (probability ``prob``); no draw is made when ``prob`` is 1."""
        # the draw is a CPU tensor: reading it is no sync
        return self.prob >= 1.0 or float(torch.rand((), generator=self.generator)) < self.prob

    @staticmethod
    def mix_targets(targets: Tensor, params: MixParams) -> Tensor:
        """``lam_eff * targets + (1 - lam_eff) * targets[perm]`` per sample."""
        # lerp is exact where both targets agree (e.g. B = 1: a sample mixed with itself keeps its label)
        return torch.lerp(targets[params.perm], targets, params.lam_eff.unsqueeze(1))

    def mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        """The method: draw, mix the pixels, and say what was drawn (``perm`` and ``lam_eff`` at least)."""
        raise NotImplementedError

    def draw_lam(self, batch: int) -> Tensor:
        """(B,) float32 lam ~ Beta(alpha, alpha): one per batch, repeated, or one per sample."""
        lam = sample_beta(self.alpha, batch if self.per_sample_lam else 1, self.generator)
        return lam.to(torch.float32).expand(batch).contiguous()

    # -- a training loop's hooks, for a learned mixer (no-ops here) -----------------------------------
    def needs_grad_for(self, indices: Tensor | None = None) -> bool:
        """Whether this batch's mix needs the input gradient (the saliency pass): ``needs_grad``, or for a mixer
        that keeps saliency per sample, whether some sample of ``indices`` has none stored yet. Decided on the
        host, without reading the device."""
        return self.needs_grad

    def set_dataset_size(self, num_samples: int) -> None:
        """The training set's size (dataset indices lie in [0, num_samples)), for a mixer with per-sample state;
        called before the mixer is moved to its device or loads a state."""

    def attach(self, model: nn.Module, image_shape: tuple[int, int, int]) -> None:
        """Called once with the model and the (C, H, W) of its images, before training or loading a state: a
        mixer that reads the model (AdAutoMix's teacher and generator) builds its parts here."""

    def after_backward(self) -> None:
        """Called once the step's loss has run its backward (before the next call): a learned mixer reads
        what it needs from the step's gradients."""

    def end_epoch(self) -> None:
        """Called after an epoch's last step."""

    def set_total_steps(self, total_steps: int) -> None:
        """The run's number of training steps, for a mixer with a schedule."""

    def epoch_stats(self) -> dict[str, float]:
        """Numbers about the epoch just ended, for its log row (may wait for the device: once an epoch)."""
        return {}

    def saliency_map(self, grad: Tensor, params: MixParams) -> Tensor | None:
        """The (B, h, w) saliency the method's regions were built from, for pictures; None without one."""
        return None

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha={self.alpha}, prob={self.prob}, "
            f"label_smoothing={self.label_smoothing}, per_sample_lam={self.per_sample_lam}, backend={self.backend!r}"
        )


class RegionMixer(Mixer):
    """A method whose mix is a region code map drawn from lam and the image size (Mixup, CutMix): per batch
    lam, then the map (``draw_regions``), then the partners; the blend engine does the rest."""

    def draw_regions(self, lam: Tensor, height: int, width: int, device: torch.device) -> tuple[Tensor, dict[str, Any]]:
        """(B, gh, gw) int8 codes on ``device`` for the (B,) host ``lam``, and any further ``MixParams`` fields.
        Draw on the host and move with ``rmix_fast.sampling.to_device``, so the step never waits for the device."""
        raise NotImplementedError

    def mix(self, x: Tensor, grad: Tensor | None) -> tuple[Tensor, MixParams]:
        B, _, H, W = x.shape
        lam = self.draw_lam(B)
        regions, extra = self.draw_regions(lam, H, W, x.device)
        perm = torch.randperm(B, generator=self.generator)
        perm, lam = to_device(perm, x.device), to_device(lam, x.device)
        # the draws are valid by construction: skip the content checks and their sync
        mixed, lam_eff = blend_regions(x, perm=perm, lam=lam, regions=regions, backend=self.backend, validate=False)
        return mixed, MixParams(True, perm, lam, lam_eff, regions=regions, **extra)
