"""Benchmark of the blend engine alone, ``rmix_fast.blend_regions``: every backend that runs on the device
(the reference among them) and a plain copy of the same bytes, over the region maps Mixup, CutMix and R-Mix
hand it.

    python bench/bench_blend_regions.py --device cpu
    python bench/bench_blend_regions.py --device cuda

Region maps (``--regions``), lam = 0.3, one partner permutation per case:

* ``mixup``: one ``BLEND`` cell (1x1), as ``rmix_fast.Mixup`` draws it;
* ``cutmix:G``: a ``PARTNER`` box of side round(G * sqrt(1 - lam)) cells, centred, ``OWN`` around it, on a
  G x G map, the same for the whole batch, as ``rmix_fast.CutMix`` draws it (one box per batch);
* ``rmix:P``: codes drawn uniformly from ``BLEND`` / ``OWN`` / ``PARTNER`` per sample and cell on P x P.

Byte model: bytes read + written per call by an op that reads each cell's sources once (two images for a
``BLEND`` cell, one for ``OWN`` and ``PARTNER``), the codes and the permutation, and writes ``mixed`` and
``lam_eff`` once. ``cutmix`` thus moves as many bytes as the copy; ``mixup`` 1.5 times as many.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import rmix_fast
from rmix_fast import BLEND, OWN, PARTNER

LAM = 0.3
KINDS = ("mixup", "cutmix", "rmix")


def region_spec(text: str) -> str:
    """``mixup``, ``cutmix:G`` or ``rmix:P``, G and P >= 1."""
    kind, _, cells = text.partition(":")
    ok = (kind == "mixup" and not cells) or (kind in KINDS[1:] and cells.isdigit() and int(cells) >= 1)
    if not ok:
        raise argparse.ArgumentTypeError(f"a region map is mixup, cutmix:G or rmix:P (G, P >= 1), got {text!r}")
    return text


def cells_of(spec: str) -> int:
    return 1 if spec == "mixup" else int(spec.partition(":")[2])


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--regions",
        nargs="+",
        type=region_spec,
        default=["mixup", "cutmix:8", "rmix:4", "rmix:32"],
        help="region maps: mixup, cutmix:G (box on a G x G map), rmix:P (random codes on P x P)",
    )


def params(args: argparse.Namespace, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    return [{"regions": r} for r in args.regions if shape[2] % cells_of(r) == 0 and shape[3] % cells_of(r) == 0]


def region_map(spec: str, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(B, n, n) int8 codes of a region map spec, on the CPU."""
    n = cells_of(spec)
    if spec == "mixup":
        return torch.full((batch, 1, 1), BLEND, dtype=torch.int8)
    if spec.startswith("cutmix"):
        side = round(n * math.sqrt(1 - LAM))
        start = (n - side) // 2
        codes = torch.full((batch, n, n), OWN, dtype=torch.int8)
        codes[:, start : start + side, start : start + side] = PARTNER
        return codes
    return torch.tensor([BLEND, OWN, PARTNER], dtype=torch.int8)[torch.randint(3, (batch, n, n), generator=generator)]


def setup(case: common.Case, providers: list[str], device: torch.device) -> common.CaseSetup:
    g = torch.Generator().manual_seed(0)
    B = case.shape[0]
    x = case.tensor(g, device)
    perm = torch.randperm(B, generator=g).to(device)
    codes = region_map(case.params["regions"], B, g)
    blend_share = float((codes == BLEND).double().mean())
    regions = codes.to(device)
    calls = {
        name: lambda name=name: rmix_fast.blend_regions(
            x, perm=perm, lam=LAM, regions=regions, backend=name, validate=False
        )
        for name in providers
    }
    read = round(x.nbytes * (1 + blend_share)) + regions.nbytes + perm.nbytes
    written = x.nbytes + 4 * B  # mixed, float32 lam_eff
    return common.CaseSetup(calls, nbytes=read + written, copy_of=x)


SPEC = common.OpBenchmark(
    name="blend_regions",
    script="bench_blend_regions.py",
    description=__doc__,
    byte_model="x * (1 + share of BLEND cells) + codes + perm + mixed + lam_eff",
    params=params,
    setup=setup,
    add_arguments=add_arguments,
    speedup_over=("reference",),
    default_shapes={"cpu": ["256x3x32x32", "16x3x224x224"], "cuda": ["256x3x32x32", "32x3x224x224"]},
    default_dtypes={"cpu": ["float32", "bfloat16"], "cuda": ["float32", "bfloat16"]},
    record={"lam": LAM},
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_op_benchmark(SPEC, argv)


if __name__ == "__main__":
    main()
