"""Draws R-Mix's random inputs (perm, lam, q, grid) from a ``torch.Generator``.

Randomness is an input to the op: draw once here, then hand the same tensors to any backend, and
the backends can be compared exactly. ``torch.distributions.Beta`` takes no generator, so Beta is
sampled from two Gamma draws (Marsaglia-Tsang) that use only the generator given.

The draws stay on the host until they are final, so reading one (the grid size, say) is a memory read,
never a wait for the device; ``to_device`` then moves them without blocking the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "RMixParams",
    "SageParams",
    "check_grids",
    "check_levels",
    "paper_levels",
    "sage_candidates",
    "sample_beta",
    "sample_rmix_params",
    "sample_sage_params",
    "shift_of_index",
    "to_device",
]


@dataclass(frozen=True)
class RMixParams:
    """One batch's draw: pass as ``rmix(x, grad, perm=p.perm, lam=p.lam, q=p.q, grid=p.grid)``."""

    perm: Tensor  # (B,) int64 permutation
    lam: Tensor  # (B,) float32; one value repeated unless drawn per sample
    q: Tensor  # (B,) float32 percentile levels
    grid: int


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """A host tensor (a draw) on ``device``, contiguous, without making the host wait for the device.

    To CUDA the copy goes from pinned memory with ``non_blocking=True``: a plain ``.to()`` waits for the
    copy to finish, and even a non-blocking copy from pageable memory synchronises the stream before it
    starts. The pinned buffer comes from PyTorch's caching host allocator, which keeps it until the copy
    has run. Elsewhere (the CPU) this is ``t.contiguous().to(device)``.
    """
    device = torch.device(device)
    # contiguous first: a broadcast (stride-0) view cannot be written into the pinned copy
    t = t.contiguous()
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def check_grids(grids: Sequence[int]) -> tuple[int, ...]:
    """R-Mix's grid sizes: a non-empty sequence of ints >= 1, as a tuple."""
    grids = tuple(grids)
    if not grids or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in grids):
        raise ValueError(f"grids must be a non-empty sequence of ints >= 1, got {grids!r}")
    return grids


def check_levels(levels: int) -> int:
    """R-Mix's number of percentile levels: an int >= 1."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an int >= 1, got {levels!r}")
    return levels


def paper_levels(levels: int = 10, top: float = 0.99) -> Tensor:
    """The paper's percentile space: ``levels`` equally spaced values in [0, top] (0, 0.11, ..., 0.99)."""
    check_levels(levels)
    return torch.linspace(0.0, top, levels, dtype=torch.float64) if levels > 1 else torch.zeros(1, dtype=torch.float64)


def _sample_gamma(shape: float, n: int, generator: torch.Generator | None) -> Tensor:
    """n draws from Gamma(shape, 1) in float64 (Marsaglia & Tsang 2000; boosted for shape < 1)."""
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(n, dtype=torch.float64)
    pending = torch.arange(n)
    while pending.numel():
        k = pending.numel()
        z = torch.randn(k, dtype=torch.float64, generator=generator)
        u = torch.rand(k, dtype=torch.float64, generator=generator)
        v = (1.0 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[pending[ok]] = d * v[ok]
        pending = pending[~ok]
    if boost:
        out *= torch.rand(n, dtype=torch.float64, generator=generator) ** (1.0 / shape)
    return out


def sample_beta(alpha: float, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n draws of Beta(alpha, alpha) as float64, reproducible from ``generator``."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    g1 = _sample_gamma(float(alpha), n, generator)
    g2 = _sample_gamma(float(alpha), n, generator)
    total = g1 + g2
    # both gammas can underflow to 0 for tiny alpha; the draw is then a fair coin's 0.5
    return torch.where(total > 0, g1 / torch.where(total > 0, total, 1.0), torch.full_like(total, 0.5))


def sample_rmix_params(
    batch_size: int,
    *,
    alpha: float = 1.0,
    grids: Sequence[int] = (2, 4),
    levels: int = 10,
    per_sample_lam: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> RMixParams:
    """Draws one batch's R-Mix parameters the paper's way.

    grid uniformly from ``grids`` (one per batch), lam ~ Beta(alpha, alpha) (one per batch unless
    ``per_sample_lam``), q per sample uniformly from ``levels`` equally spaced values in [0, 0.99],
    perm a uniform random permutation. Draws happen on the CPU ``generator`` and are then moved to
    ``device`` (``to_device``: no host-device sync), so a seed gives the same parameters on every device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an int >= 0, got {batch_size!r}")
    grids = check_grids(grids)
    space = paper_levels(levels)
    grid = grids[int(torch.randint(len(grids), (1,), generator=generator))]  # a CPU draw: no sync
    lam = sample_beta(alpha, batch_size if per_sample_lam else 1, generator)
    lam = lam.expand(batch_size) if not per_sample_lam else lam
    q = space[torch.randint(len(space), (batch_size,), generator=generator)]
    perm = torch.randperm(batch_size, generator=generator)
    return RMixParams(
        perm=to_device(perm, device),
        lam=to_device(lam.to(torch.float32), device),
        q=to_device(q.to(torch.float32), device),
        grid=grid,
    )


@dataclass(frozen=True)
class SageParams:
    """One batch's SAGE draw: pass as ``sage(x, grad, perm=p.perm, lam=p.lam, offsets=p.offsets)``."""

    perm: Tensor  # (B,) int64 permutation
    lam: Tensor  # (B,) float32 saliency scale: Beta(alpha, alpha) * upper, one value repeated unless per sample
    offsets: Tensor  # (K, 2) int64 candidate shifts (dy, dx)


def sage_candidates(height: int, width: int) -> int:
    """How many integer shifts of an H x W image keep some overlap: (2H - 1)(2W - 1)."""
    return (2 * height - 1) * (2 * width - 1)


def shift_of_index(index: Tensor, height: int, width: int) -> Tensor:
    """(K,) indices in [0, (2H - 1)(2W - 1)) -> (K, 2) shifts (dy, dx): dy = (H - 1) - index mod (2H - 1),
    dx = (W - 1) - index div (2H - 1). For square images this is the order of the SAGE code's candidate grid
    (``coord``), so the same random prefix picks the same shifts as the authors'."""
    rows = 2 * height - 1
    return torch.stack([(height - 1) - index % rows, (width - 1) - index // rows], dim=1).to(torch.int64)


def sample_sage_params(
    batch_size: int,
    height: int,
    width: int,
    *,
    alpha: float = 1.0,
    upper: float = 0.5,
    rand_pos: float = 0.01,
    per_sample_lam: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> SageParams:
    """Draws one batch's SAGE parameters the published code's way.

    lam = Beta(alpha, alpha) * ``upper`` (one per batch unless ``per_sample_lam``), a random partner, and
    K = max(1, floor((2H - 1)(2W - 1) * rand_pos)) candidate shifts drawn without replacement from all
    shifts (the zero shift is then not always among them; the code's K = 0 would fail at the argmax). The
    draws are made on the CPU ``generator`` and moved to ``device`` without blocking the host.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an int >= 0, got {batch_size!r}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, value in (("upper", upper), ("rand_pos", rand_pos)):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    total = sage_candidates(height, width)
    k = max(1, int(total * rand_pos))
    lam = sample_beta(alpha, batch_size if per_sample_lam else 1, generator) * upper
    lam = lam.expand(batch_size) if not per_sample_lam else lam
    perm = torch.randperm(batch_size, generator=generator)
    offsets = shift_of_index(torch.randperm(total, generator=generator)[:k], height, width)
    return SageParams(
        perm=to_device(perm, device),
        lam=to_device(lam.to(torch.float32), device),
        offsets=to_device(offsets, device),
    )
