"""Argument checks for ``rmix`` and ``blend_regions``: every problem is a ValueError/TypeError naming
the argument.

Two tiers, so the hot path stays cheap:

* ``check_static`` / ``check_regions_static`` look only at types, shapes, dtypes and devices. No
  host-device sync, and they trace cleanly under ``torch.compile``.
* ``check_values`` looks at tensor *contents* (perm is a permutation of 0..B-1, lam and q lie in
  [0, 1], region codes are 0, 1 or 2). It fuses every test into one small device tensor and reads it back once: a single
  host-device sync per call. It runs inside the op's implementation, so it also runs under
  ``torch.compile``; pass ``validate=False`` to skip it.
"""

from __future__ import annotations

import operator
from numbers import Real

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def describe(value: object) -> str:
    """A short description of an argument for error messages."""
    if isinstance(value, Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    return f"{type(value).__name__} {value!r:.60}"


def _check_image_tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got dtype {t.dtype}")
    return t


def _check_level(name: str, value: object, batch: int, device: torch.device) -> None:
    """lam / q: a real number in [0, 1], or a float tensor of shape (B,) (or a 0-d tensor) on x's device."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
            raise ValueError(
                f"{name} must be a Python float or a tensor of shape ({batch},), got shape {tuple(value.shape)}"
            )
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but x is on {device}; all tensors must share a device")
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a Python float or a (B,) tensor, got {describe(value)}")
    if not (0.0 <= float(value) <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _is_integer_tensor(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _check_perm(perm: object, batch: int, device: torch.device) -> None:
    if not isinstance(perm, Tensor):
        raise TypeError(f"perm must be an integer torch.Tensor, got {describe(perm)}")
    if not _is_integer_tensor(perm):
        raise TypeError(f"perm must be an integer tensor, got dtype {perm.dtype}")
    if perm.shape != (batch,):
        raise ValueError(f"perm must have shape ({batch},) to match x's batch, got {tuple(perm.shape)}")
    if perm.device != device:
        raise ValueError(f"perm is on {perm.device} but x is on {device}; all tensors must share a device")


def check_regions_static(x: object, perm: object, lam: object, regions: object) -> None:
    """Checks of ``blend_regions`` that need no tensor contents."""
    x = _check_image_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    B, _, H, W = x.shape
    _check_perm(perm, B, x.device)
    _check_level("lam", lam, B, x.device)
    if not isinstance(regions, Tensor):
        raise TypeError(f"regions must be an integer torch.Tensor, got {describe(regions)}")
    if not _is_integer_tensor(regions):
        raise TypeError(f"regions must be an integer tensor, got dtype {regions.dtype}")
    if (
        regions.dim() != 3
        or regions.shape[0] != B
        or 0 in regions.shape[1:]
        or H % regions.shape[1]
        or W % regions.shape[2]
    ):
        raise ValueError(
            f"regions must have shape (B, gh, gw) with gh dividing H={H} and gw dividing W={W} of x "
            f"(shape {tuple(x.shape)}), got shape {tuple(regions.shape)}"
        )
    if regions.device != x.device:
        raise ValueError(f"regions is on {regions.device} but x is on {x.device}; all tensors must share a device")


def check_static(x: object, grad: object, perm: object, lam: object, q: object, grid: object) -> int:
    """Checks that need no tensor contents. Returns ``grid`` as a plain int."""
    x = _check_image_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    grad = _check_image_tensor("grad", grad)
    if grad.shape != x.shape:
        raise ValueError(f"grad must have x's shape {tuple(x.shape)}, got {tuple(grad.shape)}")
    if grad.device != x.device:
        raise ValueError(f"grad is on {grad.device} but x is on {x.device}; all tensors must share a device")
    B, _, H, W = x.shape
    _check_perm(perm, B, x.device)
    _check_level("lam", lam, B, x.device)
    _check_level("q", q, B, x.device)
    if isinstance(grid, bool):
        raise TypeError(f"grid must be an int, got {grid!r}")
    try:
        p = operator.index(grid)
    except TypeError:
        raise TypeError(f"grid must be an int, got {describe(grid)}") from None
    if p < 1:
        raise ValueError(f"grid must be >= 1, got {p}")
    if H % p or W % p:
        raise ValueError(f"grid={p} must divide both H={H} and W={W} of x (shape {tuple(x.shape)})")
    return p


def check_values(perm: Tensor, lam: Tensor, q: Tensor | None = None, regions: Tensor | None = None) -> None:
    """Content checks with one host-device sync: perm is a permutation, lam (and q) lie in [0, 1], the
    region codes are 0, 1 or 2."""
    B = perm.shape[0]
    if B == 0:
        return
    in_range = (perm >= 0) & (perm < B)
    # A permutation hits every index once: count hits of the in-range entries.
    hits = torch.zeros(B, dtype=torch.int32, device=perm.device)
    hits.index_add_(0, torch.where(in_range, perm, 0).long(), in_range.to(torch.int32))
    levels = [("lam", lam)] + ([("q", q)] if q is not None else [])
    flags = [in_range.all(), (hits == 1).all()]
    flags += [((t >= 0) & (t <= 1)).all() for _, t in levels]  # False for NaN
    if regions is not None:
        flags.append(((regions >= 0) & (regions <= 2)).all())
    flags = torch.stack(flags).tolist()  # the one sync
    if not flags[0]:
        lo, hi = int(perm.min()), int(perm.max())
        raise ValueError(f"perm must hold indices in [0, {B - 1}], got values in [{lo}, {hi}]")
    if not flags[1]:
        raise ValueError(f"perm must be a permutation of 0..{B - 1}; it repeats some indices and misses others")
    for (name, t), ok in zip(levels, flags[2:], strict=False):
        if not ok:
            bad = t[~((t >= 0) & (t <= 1))]
            raise ValueError(f"{name} must lie in [0, 1]; got {bad.numel()} value(s) outside, e.g. {bad[0].item()!r}")
    if regions is not None and not flags[-1]:
        lo, hi = int(regions.min()), int(regions.max())
        raise ValueError(f"regions must hold only 0 (blend), 1 (own) and 2 (partner), got values in [{lo}, {hi}]")


def as_level_tensor(value: float | Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """lam / q as a (B,) tensor: Python numbers become ``dtype``; tensors keep their dtype (kernels upcast)."""
    if isinstance(value, Tensor):
        return value.expand(batch) if value.dim() == 0 else value
    return torch.full((batch,), float(value), dtype=dtype, device=device)
