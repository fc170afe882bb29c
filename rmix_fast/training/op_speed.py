"""The mixing op's speed against the paper-style baseline, measured in the caller's process: the demo's
one-screen version of ``bench/bench_rmix.py`` (which has the full protocol, copy bandwidth and GPU timing)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import torch

from rmix_fast import rmix
from rmix_fast.ops import resolve_backend
from rmix_fast.sampling import sample_rmix_params
from rmix_fast.training.paper_rmix import paper_rmix

__all__ = ["SHAPES", "op_speed"]

SHAPES = ((100, 3, 32, 32), (32, 3, 224, 224))  # a CIFAR batch; an ImageNet-size batch


def _median_ms(calls: dict[str, Callable[[], object]], device: torch.device, reps: int) -> dict[str, float]:
    """Median ms of each call, the calls taking turns so a slow spell of the machine hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(reps + 2):  # two warm-up rounds
        for name, fn in calls.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if rep >= 2:
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def op_speed(
    shapes: Sequence[tuple[int, int, int, int]] = SHAPES,
    *,
    grid: int = 4,
    reps: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """Per image shape: median ms of ``rmix_fast.rmix`` (the backend "auto" picks) and of the paper-style
    ``paper_rmix`` on the same float32 inputs and draws, and the speed-up."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for shape in shapes:
        x = torch.rand(shape, generator=g).to(device)
        grad = torch.randn(shape, generator=g).to(device)
        p = sample_rmix_params(shape[0], grids=(grid,), generator=g, device=device)
        calls = {
            "rmix_fast": partial(rmix, x, grad, perm=p.perm, lam=p.lam, q=p.q, grid=grid, validate=False),
            "paper": partial(paper_rmix, x, grad, p.perm, p.lam, p.q, grid),
        }
        ms = _median_ms(calls, device, reps)
        rows.append({"shape": "x".join(map(str, shape)), "backend": resolve_backend("auto", device, grid),
                     "rmix_fast_ms": ms["rmix_fast"], "paper_ms": ms["paper"],
                     "speedup": ms["paper"] / ms["rmix_fast"]})  # fmt: skip
    return rows
