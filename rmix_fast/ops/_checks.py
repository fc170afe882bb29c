"""Argument checks of the ops, as parts each op composes: every problem is a ValueError/TypeError naming
the argument.

Two tiers, so the hot path stays cheap:

* Static checks (``check_image``, ``check_perm``, ``check_level``, ``check_grid``, ``check_regions``,
  ``check_cell_map``) look only at types, shapes, dtypes and devices: no host-device sync, and they trace
  under ``torch.compile``.
* Content checks (``permutation_checks``, ``permutation_rows_checks``, ``unit_interval_check``,
  ``region_code_check``, ``finite_check``) each give a 0-d
  bool device tensor and the error to raise when it is False; ``run_content_checks`` stacks all of an
  op's flags and reads them back once: one host-device sync per call. They run inside the op's forward,
  so also under ``torch.compile``; ``validate=False`` skips them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

from rmix_fast.ops._dtypes import FLOAT_DTYPES

__all__ = [
    "ContentCheck",
    "as_level_tensor",
    "check_cell_map",
    "check_float_tensor",
    "check_grid",
    "check_image",
    "check_level",
    "check_perm",
    "check_positive_int",
    "check_regions",
    "check_same_device",
    "describe",
    "finite_check",
    "is_integer_tensor",
    "permutation_checks",
    "permutation_rows_checks",
    "region_code_check",
    "run_content_checks",
    "unit_interval_check",
]


def describe(value: object) -> str:
    """A short description of an argument for error messages."""
    if isinstance(value, Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    return f"{type(value).__name__} {value!r:.60}"


def is_integer_tensor(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_same_device(name: str, t: Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}; all tensors must share a device")


def check_float_tensor(name: str, t: object) -> Tensor:
    """A float16/bfloat16/float32/float64 tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got dtype {t.dtype}")
    return t


def check_image(name: str, t: object) -> Tensor:
    """A (B, C, H, W) float16/bfloat16/float32/float64 tensor."""
    t = check_float_tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}")
    return t


def check_level(name: str, value: object, batch: int, device: torch.device) -> None:
    """lam / q: a real number in [0, 1], or a float tensor of shape (B,) (or a 0-d tensor) on x's device."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
            raise ValueError(
                f"{name} must be a Python float or a tensor of shape ({batch},), got shape {tuple(value.shape)}"
            )
        check_same_device(name, value, device)
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a Python float or a (B,) tensor, got {describe(value)}")
    if not (0.0 <= float(value) <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def check_perm(perm: object, batch: int, device: torch.device) -> None:
    if not isinstance(perm, Tensor):
        raise TypeError(f"perm must be an integer torch.Tensor, got {describe(perm)}")
    if not is_integer_tensor(perm):
        raise TypeError(f"perm must be an integer tensor, got dtype {perm.dtype}")
    if perm.shape != (batch,):
        raise ValueError(f"perm must have shape ({batch},) to match x's batch, got {tuple(perm.shape)}")
    check_same_device("perm", perm, device)


def check_positive_int(name: str, value: object) -> int:
    """An int >= 1 (numpy integers too; not bool), returned as a plain int."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    try:
        as_int = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {describe(value)}") from None
    if as_int < 1:
        raise ValueError(f"{name} must be >= 1, got {as_int}")
    return as_int


def check_grid(grid: object, H: int, W: int, shape: Sequence[int]) -> int:
    """An int p >= 1 dividing H and W; returned as a plain int."""
    p = check_positive_int("grid", grid)
    if H % p or W % p:
        raise ValueError(f"grid={p} must divide both H={H} and W={W} of x (shape {tuple(shape)})")
    return p


def check_cell_map(name: str, t: Tensor, x: Tensor) -> None:
    """A (B, gh, gw) map of cells over x's images, on x's device: gh dividing H and gw dividing W, so cell
    (i, j) covers an (H/gh, W/gw) block (region codes, cell or pixel saliency, top masks)."""
    B, _, H, W = x.shape
    if t.dim() != 3 or t.shape[0] != B or 0 in t.shape[1:] or H % t.shape[1] or W % t.shape[2]:
        raise ValueError(
            f"{name} must have shape (B, gh, gw) with gh dividing H={H} and gw dividing W={W} of x "
            f"(shape {tuple(x.shape)}), got shape {tuple(t.shape)}"
        )
    check_same_device(name, t, x.device)


def check_regions(regions: object, x: Tensor) -> None:
    """A (B, gh, gw) integer code map on x's device, gh dividing H and gw dividing W."""
    if not isinstance(regions, Tensor):
        raise TypeError(f"regions must be an integer torch.Tensor, got {describe(regions)}")
    if not is_integer_tensor(regions):
        raise TypeError(f"regions must be an integer tensor, got dtype {regions.dtype}")
    check_cell_map("regions", regions, x)


@dataclass(frozen=True)
class ContentCheck:
    """A 0-d bool device tensor that is True when the content is fine, and the error to raise otherwise
    (built only then: it may read tensor values for its message)."""

    ok: Tensor
    error: Callable[[], Exception]


def permutation_checks(perm: Tensor) -> list[ContentCheck]:
    """perm holds indices in [0, B) and hits each once."""
    B = perm.shape[0]
    in_range = (perm >= 0) & (perm < B)
    # A permutation hits every index once: count hits of the in-range entries.
    hits = torch.zeros(B, dtype=torch.int32, device=perm.device)
    hits.index_add_(0, torch.where(in_range, perm, 0).long(), in_range.to(torch.int32))

    def out_of_range() -> Exception:
        return ValueError(
            f"perm must hold indices in [0, {B - 1}], got values in [{int(perm.min())}, {int(perm.max())}]"
        )

    def repeats() -> Exception:
        return ValueError(f"perm must be a permutation of 0..{B - 1}; it repeats some indices and misses others")

    return [ContentCheck(in_range.all(), out_of_range), ContentCheck((hits == 1).all(), repeats)]


def permutation_rows_checks(name: str, rows: Tensor) -> list[ContentCheck]:
    """Every row of the (N, B) tensor ``rows`` holds indices in [0, B) and hits each once: N permutations
    checked together, so they cost no more syncs than one."""
    B = rows.shape[1]
    in_range = (rows >= 0) & (rows < B)
    hits = torch.zeros(rows.shape, dtype=torch.int32, device=rows.device)
    hits.scatter_add_(1, torch.where(in_range, rows, 0).long(), in_range.to(torch.int32))
    per_row = (hits == 1).all(dim=1)

    def out_of_range() -> Exception:
        return ValueError(
            f"{name} must hold indices in [0, {B - 1}], got values in [{int(rows.min())}, {int(rows.max())}]"
        )

    def repeats() -> Exception:
        row = int((~per_row).nonzero()[0, 0])
        return ValueError(
            f"{name} row {row} must be a permutation of 0..{B - 1}; it repeats some indices and misses others"
        )

    return [ContentCheck(in_range.all(), out_of_range), ContentCheck(per_row.all(), repeats)]


def finite_check(name: str, t: Tensor) -> ContentCheck:
    """Every value of ``t`` is finite (no NaN, no ±inf)."""
    finite = torch.isfinite(t)

    def error() -> Exception:
        bad = t[~finite]
        return ValueError(f"{name} must be finite; got {bad.numel()} non-finite value(s), e.g. {bad[0].item()!r}")

    return ContentCheck(finite.all(), error)


def unit_interval_check(name: str, t: Tensor) -> ContentCheck:
    """Every value of ``t`` lies in [0, 1] (NaN does not)."""
    inside = (t >= 0) & (t <= 1)

    def error() -> Exception:
        bad = t[~inside]
        return ValueError(f"{name} must lie in [0, 1]; got {bad.numel()} value(s) outside, e.g. {bad[0].item()!r}")

    return ContentCheck(inside.all(), error)


def region_code_check(regions: Tensor) -> ContentCheck:
    """Every code is BLEND (0), OWN (1) or PARTNER (2)."""

    def error() -> Exception:
        lo, hi = int(regions.min()), int(regions.max())
        return ValueError(f"regions must hold only 0 (blend), 1 (own) and 2 (partner), got values in [{lo}, {hi}]")

    return ContentCheck(((regions >= 0) & (regions <= 2)).all(), error)


def assert_in_range_async(t: Tensor, upper: int, name: str) -> None:
    """That every value of the integer tensor ``t`` lies in [0, upper), as an assertion ``t``'s device
    evaluates: on the CPU it runs at once and raises a ValueError naming ``name`` and the values; on CUDA it is
    queued like any kernel (never read back: a bad value fails as a device-side assert at the next sync).
    Devices without the assertion kernel are not checked here."""
    if t.device.type not in ("cpu", "cuda"):
        return
    message = f"{name} must lie in [0, {upper - 1}]"
    try:
        torch._assert_async(((t >= 0) & (t < upper)).all(), message)
    except RuntimeError:  # raised here only where the check ran on the host, so the read below is free
        raise ValueError(f"{message}, got values in [{int(t.min())}, {int(t.max())}]") from None


def run_content_checks(checks: Sequence[ContentCheck]) -> None:
    """Reads every flag back in one host-device sync; raises the first failing check's error."""
    if not checks:
        return
    flags = torch.stack([c.ok for c in checks]).tolist()  # the one sync
    for check, ok in zip(checks, flags, strict=True):
        if not ok:
            raise check.error()


def as_level_tensor(value: float | Tensor, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """lam / q as a (B,) tensor: Python numbers become ``dtype``; tensors keep their dtype (kernels upcast)."""
    if isinstance(value, Tensor):
        return value.expand(batch) if value.dim() == 0 else value
    return torch.full((batch,), float(value), dtype=dtype, device=device)
