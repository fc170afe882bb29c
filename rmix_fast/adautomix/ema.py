"""AdAutoMix's EMA teacher k of the classifier q: the momentum schedule and the update.

Read from code:

* The update, ``AdAutoMix.momentum_update`` (JinXins/Adversarial-AutoMixup,
  ``openmixup/models/classifiers/AdAutoMix.py`` lines 174-196): ``k = k * m + q * (1 - m)`` over
  ``.parameters()`` of the backbone and both heads, nothing when ``m >= 1``. Buffers (BatchNorm running
  statistics) are never copied: k's evolve from k's own train-mode forwards.
* The teacher's start, ``init_weights`` (lines 132-159): k's parameters are copied from q and set to
  ``requires_grad = False``. k is built from the same config, so its buffers start at their initial values.
* The schedule, OpenMixup's ``CosineScheduleHook`` (Westlake-AI/openmixup, ``openmixup/core/hooks/momentum_hook.py``,
  as stored in the public code index; AdAutoMix's repository carries only its model and configs). Before
  iteration t (mmcv's 0-based ``runner.iter``) of T = ``runner.max_iters``, with t0 = int(T * adjust_scope[0]):

  - t < t0: m = base (``warming_up="constant"``, as both configs set);
  - t0 <= t <= T: m = end - (end - base) * (cos(pi * t / T) + 1) / 2, where t is the absolute iteration and
    T all iterations, not the time since t0: at t0 = 0.1 T the momentum jumps from base to
    end - (end - base) * (cos(0.1 pi) + 1) / 2 (0.999 -> 0.9990245 on CIFAR), and reaches ``end`` at t = T;
  - in that range ``t % restart_step == 0`` gives m = 0, with restart_step = int(min(max(1e11, 1), 1e10)) =
    1e10 by default: only t = 0 in practice, so only when t0 = 0 (warmup 0, or T * warmup < 1).

  The hook's ``after_train_iter`` then calls ``momentum_update()``; mmcv registers the optimizer hook at
  ABOVE_NORMAL and custom hooks at NORMAL, so the EMA of iteration t uses q after that iteration's step.
* The configs (``configs/classification/cifar100/basic/r18_adautomix_bilinear.py`` and
  ``configs/classification/imagenet/adautomix/basic/r50_adautomix_bilinear.py``): base ``momentum=0.999``,
  ``end_momentum`` 0.999999 (CIFAR) and 0.99999 (ImageNet), ``adjust_scope=[0.1, 1.0]``,
  ``warming_up="constant"``. Their ``interval=1`` is not an argument of the hook (it takes
  ``update_interval``, default 1) and lands in ``**kwargs``: the update runs every iteration either way.

From the project's notes only (``methods-as-coded.md`` section 3.1 step 8), and checked against the code
above: EMA over parameters only, 0.999 for the first 10 % of iterations. The notes write the cosine as
1 - (1 - 0.999) * (...), which would end at 1; the hook's formula ends at ``end``, and that is what is used.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["EmaTeacher", "ema_momentum", "ema_update_", "frozen_copy"]

# The hook's default restart_step, as it computes it: int(min(max(1e11, 1), 1e10)).
_RESTART_STEP = 10**10


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_unit(name: str, value: object) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def ema_momentum(
    step: int, total_steps: int, *, base: float = 0.999, end: float = 0.999999, warmup: float = 0.1
) -> float:
    """The teacher's momentum for iteration ``step`` (0-based) of ``total_steps``, as OpenMixup's
    ``CosineScheduleHook`` sets it with ``adjust_scope=[warmup, 1.0]`` and ``warming_up="constant"``.

    ``base`` for ``step < int(total_steps * warmup)``; from there ``end - (end - base) * (cos(pi * step /
    total_steps) + 1) / 2`` (the absolute step over all steps, so the value jumps slightly at the switch);
    0 where the hook's restart check fires (in practice only step 0 when the warmup is empty). Defaults: the
    CIFAR-100 config; ImageNet's is ``end=0.99999``. ``step`` may equal ``total_steps`` (the hook's range
    is closed); training's last iteration is ``total_steps - 1``.
    """
    total_steps = _check_int("total_steps", total_steps, 1)
    step = _check_int("step", step, 0)
    if step > total_steps:
        raise ValueError(f"step must be <= total_steps ({total_steps}), got {step}")
    base = _check_unit("base", base)
    end = _check_unit("end", end)
    warmup = _check_unit("warmup", warmup)
    if base > end:
        raise ValueError(f"base must be <= end (the hook asserts it), got base={base}, end={end}")
    # the hook's own float product and truncation, so the switch lands on the same iteration
    first = int(total_steps * warmup) if warmup > 0 else 0
    if step < first:
        return base
    if step % _RESTART_STEP == 0:
        return 0.0
    return end - (end - base) * (math.cos(math.pi * step / float(total_steps)) + 1) / 2


def _check_momentum(momentum: object) -> float:
    ok = isinstance(momentum, int | float) and not isinstance(momentum, bool) and math.isfinite(momentum)
    if not ok or momentum < 0:
        raise ValueError(f"momentum must be a finite number >= 0, got {momentum!r}")
    return float(momentum)


def _describe(t: Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}"


@torch.no_grad()
def ema_update_(
    teacher_params: Iterable[Tensor],
    student_params: Iterable[Tensor],
    momentum: float,
    *,
    names: Sequence[str] | None = None,
) -> None:
    """In place, every teacher tensor k becomes ``m * k + (1 - m) * q`` of its student tensor q.

    One ``torch._foreach_lerp_`` per (device, dtype) group of the teacher, with weight 1 - m
    (lerp(k, q, w) = k + w (q - k) = m k + (1 - m) q): a handful of fused launches where the published loop
    issues three per parameter. As ``momentum_update``, nothing happens when ``momentum >= 1``; m = 0
    copies q exactly. Pass parameters only: buffers are the teacher's own.

    Each pair must agree in shape, dtype and device (a ValueError names the pair, by ``names`` when given);
    different pairs may live on different devices or in different dtypes.
    """
    momentum = _check_momentum(momentum)
    teacher = list(teacher_params)
    student = list(student_params)
    if len(teacher) != len(student):
        raise ValueError(f"teacher and student must have as many tensors, got {len(teacher)} and {len(student)}")
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    for i, (k, q) in enumerate(zip(teacher, student, strict=True)):
        if k.shape != q.shape or k.dtype != q.dtype or k.device != q.device:
            label = names[i] if names is not None else f"#{i}"
            raise ValueError(
                f"teacher and student tensor {label} must match in shape, dtype and device, "
                f"got {_describe(k)} and {_describe(q)}"
            )
        if not (k.is_floating_point() or k.is_complex()):
            label = names[i] if names is not None else f"#{i}"
            raise ValueError(f"tensor {label} must be floating point to average, got {k.dtype}")
        ks, qs = groups.setdefault((k.device, k.dtype), ([], []))
        ks.append(k)
        qs.append(q)
    if momentum >= 1.0:
        return
    # foreach kernels take their fast, fused path only when every tensor shares a device and a dtype
    for ks, qs in groups.values():
        torch._foreach_lerp_(ks, qs, 1.0 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` for a teacher: parameters with ``requires_grad=False`` and no ``.grad``,
    buffers its own (copied once, then updated only by the copy's forwards), same train/eval mode."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


class EmaTeacher(nn.Module):
    """AdAutoMix's teacher k: a frozen copy of the classifier, moved towards it by ``update``.

    ``EmaTeacher(student)`` copies the student once (``frozen_copy``); ``teacher.update(student, m)`` after
    each optimiser step applies ``ema_update_`` over parameters only, pairing them by name. The student is
    passed each time, not kept: it is then neither a submodule (its parameters would appear twice in
    ``parameters()`` and the state dict) nor pinned alive. Calling the teacher calls the copy. Its mode
    follows ``train()``/``eval()`` as any module's; the published code runs k in train mode, so k's BatchNorm
    statistics come from the batches k sees.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.module = frozen_copy(student)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """k = m k + (1 - m) q over the parameters (buffers untouched); nothing when m >= 1."""
        mine = dict(self.module.named_parameters())
        theirs = dict(student.named_parameters())
        if mine.keys() != theirs.keys():
            missing = sorted(mine.keys() - theirs.keys())[:3]
            extra = sorted(theirs.keys() - mine.keys())[:3]
            raise ValueError(
                "student's parameters must be named as the teacher's (pass the bare model, not a DDP wrapper); "
                f"missing {missing}, unexpected {extra}"
            )
        names = list(mine)
        ema_update_([mine[n] for n in names], [theirs[n] for n in names], momentum, names=names)
