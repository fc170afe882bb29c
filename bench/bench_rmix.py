"""Benchmark of the R-Mix op, ``rmix_fast.rmix``: every backend that runs on the device, the paper-style
PyTorch baseline, the reference under ``torch.compile`` and a plain copy of the same bytes, in one run.

    python bench/bench_rmix.py --device cpu          # cpp vs reference vs baseline vs compiled on this CPU
    python bench/bench_rmix.py --device cuda         # triton, cpp's CUDA kernel, ... on a GPU

Cases: shape x dtype x layout x grid p (grids that do not divide the image are left out; a backend is
left out of the grids above its ``max_grid``). Providers: the backends, ``paper`` (bench/baselines/
rmix_paper.py, the speed-ups that matter are over it), ``compiled`` (``reference.rmix_forward`` under
``torch.compile``, float32 cases only: one compile per case) and ``copy``.

Byte model: a fused op must read ``grad`` once, read each image as itself and as a partner, and write
``mixed`` once: ``bytes = grad + 2 * x + mixed`` (a copied cell reads one source only, so this is an upper
bound of what it needs). Figures per case and provider: see bench/common.py and bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from baselines.rmix_paper import paper_rmix

import rmix_fast
from rmix_fast import reference
from rmix_fast.ops import resolve_backend
from rmix_fast.sampling import paper_levels

LAM = 0.3
COMPILED_DTYPES = (torch.float32,)  # one compile per case costs seconds on a GPU: float32 cases only

GOALS = (
    common.Goal("imagenet_bandwidth", ">= 85 % of copy bandwidth", {"shape": "256x3x224x224", "dtype": "float32"},
                "graph_pct_copy", 85.0),
    common.Goal("imagenet_speedup", ">= 10x over the baseline", {"shape": "256x3x224x224", "dtype": "float32"},
                "speedup_vs_paper", 10.0),
    common.Goal("cifar_speedup", ">= 15x over the baseline (eager)", {"shape": "100x3x32x32", "dtype": "float32"},
                "speedup_vs_paper", 15.0),
)  # fmt: skip


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--grids", nargs="+", type=common.positive_int, default=[2, 4, 32], help="R-Mix grids p")


def params(args: argparse.Namespace, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    return [{"grid": p} for p in args.grids if shape[2] % p == 0 and shape[3] % p == 0]


def setup(case: common.Case, providers: list[str], device: torch.device) -> common.CaseSetup:
    """Random images and gradients (never zeros), a random partner, the paper's q levels."""
    g = torch.Generator().manual_seed(0)
    B, grid = case.shape[0], case.params["grid"]
    x, grad = case.tensor(g, device), case.tensor(g, device)
    perm = torch.randperm(B, generator=g).to(device)
    levels = paper_levels(10)
    q = levels[torch.randint(len(levels), (B,), generator=g)].to(device)
    lam_t = torch.full((B,), LAM, dtype=reference.accumulate_dtype(x.dtype), device=device)
    q_t = q.to(reference.accumulate_dtype(grad.dtype))
    calls = {}
    for name in providers:
        if name == "paper":
            calls[name] = lambda: paper_rmix(x, grad, perm, lam_t, q_t, grid)
        elif name == "compiled":
            if case.dtype in COMPILED_DTYPES:
                fn = common.compiled(reference.rmix_forward)
                calls[name] = lambda fn=fn: fn(x, grad, perm, lam_t, q_t, grid)
        elif common.backend_takes_grid(name, device, grid):
            calls[name] = lambda name=name: rmix_fast.rmix(
                x, grad, perm=perm, lam=LAM, q=q, grid=grid, backend=name, validate=False
            )
    return common.CaseSetup(calls, nbytes=grad.nbytes + 2 * x.nbytes + x.nbytes, copy_of=x)


SPEC = common.OpBenchmark(
    name="rmix",
    script="bench_rmix.py",
    description=__doc__,
    byte_model="grad + 2*x + mixed",
    params=params,
    setup=setup,
    add_arguments=add_arguments,
    extras=("paper", "compiled"),
    speedup_over=("paper", "reference"),
    goals=GOALS,
    auto_backend=lambda row, device: resolve_backend("auto", device, row["grid"]),
    default_shapes={
        "cpu": ["256x3x32x32", "16x3x224x224"],
        "cuda": ["100x3x32x32", "256x3x32x32", "64x3x224x224", "256x3x224x224"],
    },
    record={"lam": LAM},
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_op_benchmark(SPEC, argv)


if __name__ == "__main__":
    main()
