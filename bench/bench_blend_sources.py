"""Benchmark of AdAutoMix's multi-source mix, ``rmix_fast.blend_sources``: every backend that runs on the device
(the reference among them), the published code's separate ops (``published``) and a plain copy of the same
bytes, in one run. Forward only: the time a training step spends on the mix.

    python bench/bench_blend_sources.py --device cpu     # cpp vs reference vs the published ops on this CPU
    python bench/bench_blend_sources.py --device cuda    # triton vs reference vs the published ops on a GPU

Cases: shape x dtype x layout, with AdAutoMix's settings by resolution (Qin et al., ICLR 2024): at 32 px
(CIFAR) N = 3 sources and 8 x 8 logits (scale 4), at 224 px (ImageNet) N = 2 and 14 x 14 logits (scale 16);
``--sources`` and ``--scale`` override them (a scale that does not divide the image leaves the shape out).
Bilinear upsampling, softmax over the sources; row 0 of ``index`` the identity, the others random
permutations, as AdAutoMix draws them. GPU defaults: CIFAR 100x3x32x32 and ImageNet 64x3x224x224, float32 and
bfloat16; CPU: 100x3x32x32 and 16x3x224x224 (a smaller ImageNet batch so a 2-core run takes a minute), float32.

Providers: the backends, ``published`` (bench/baselines/blend_sources_paper.py: ``F.interpolate``, softmax,
then ``sum_i mask[:, i:i+1] * x[index[i]]``, materialising the (B, N, H, W) masks and N products; no goal
is published for the op, the speed-ups reported are over it) and ``copy``.

Byte model: an op that reads each of the N sources once, the logits once and writes ``mixed`` once:
``bytes = N * x + mixed + logits`` (the index rows, N x B integers, left out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from baselines.blend_sources_paper import paper_blend_sources

import rmix_fast

# AdAutoMix's settings: (sources N, logits upsampling scale) at CIFAR's 32 px and ImageNet's 224 px
CIFAR, IMAGENET = (3, 4), (2, 16)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sources", type=common.positive_int,
                    help="N, sources per mix (default: AdAutoMix's, 3 up to 64 px, 2 above)")  # fmt: skip
    ap.add_argument("--scale", type=common.positive_int,
                    help="logits upsampling factor (default: AdAutoMix's, 4 up to 64 px, 16 above)")  # fmt: skip


def params(args: argparse.Namespace, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    H, W = shape[2], shape[3]
    sources, scale = CIFAR if max(H, W) <= 64 else IMAGENET
    sources, scale = args.sources or sources, args.scale or scale
    return [{"sources": sources, "scale": scale}] if H % scale == 0 and W % scale == 0 else []


def setup(case: common.Case, providers: list[str], device: torch.device) -> common.CaseSetup:
    """Random images and logits (in x's dtype, as the mask generator hands them), ``index`` as AdAutoMix
    draws it: the batch itself, then N - 1 random permutations."""
    g = torch.Generator().manual_seed(0)
    B, _, H, W = case.shape
    N, s = case.params["sources"], case.params["scale"]
    x = case.tensor(g, device)
    index = torch.stack([torch.arange(B), *(torch.randperm(B, generator=g) for _ in range(N - 1))]).to(device)
    logits = torch.randn(B, N, H // s, W // s, generator=g).to(device=device, dtype=case.dtype)
    calls = {}
    for name in providers:
        if name == "published":
            calls[name] = lambda: paper_blend_sources(x, index, logits, s)
        else:
            calls[name] = lambda name=name: rmix_fast.blend_sources(
                x, index=index, logits=logits, scale=s, backend=name, validate=False
            )
    fields = {"logits": f"{H // s}x{W // s}"}
    return common.CaseSetup(calls, nbytes=N * x.nbytes + x.nbytes + logits.nbytes, copy_of=x, fields=fields)


SPEC = common.OpBenchmark(
    name="blend_sources",
    script="bench_blend_sources.py",
    description=__doc__,
    byte_model="N*x + mixed + logits",
    params=params,
    setup=setup,
    add_arguments=add_arguments,
    extras=("published",),
    speedup_over=("published", "reference"),
    default_shapes={"cpu": ["100x3x32x32", "16x3x224x224"], "cuda": ["100x3x32x32", "64x3x224x224"]},
    default_dtypes={"cpu": ["float32"], "cuda": ["float32", "bfloat16"]},
    record={"mode": "bilinear", "normalize": "softmax"},
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_op_benchmark(SPEC, argv)


if __name__ == "__main__":
    main()
