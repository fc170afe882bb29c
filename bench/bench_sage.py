"""Benchmark of the SAGE op, ``rmix_fast.sage``: every backend that runs SAGE on the device, the published code's
loop (``paper``) and a plain copy of the same bytes, in one run.

    python bench/bench_sage.py --device cpu          # cpp vs reference vs the published loop on this CPU (small)
    python bench/bench_sage.py --device cuda         # triton vs reference vs the published loop on a GPU

Cases: shape x dtype x layout, K = floor((2H - 1)(2W - 1) rand_pos) candidate shifts (``--rand-pos``, the
paper's 0.01: K = 39 at 32 px, 1998 at 224 px). GPU defaults: CIFAR 100x3x32x32 and ImageNet 64x3x224x224,
float32 and bfloat16. CPU defaults, smaller so a 2-core run takes minutes: 100x3x32x32 and 2x3x224x224
(not the ImageNet batch: at 224 px one call of the reference takes seconds per image there), float32, 5
timed calls after 1 warm-up.

Providers: the backends (``cpp`` runs SAGE on the CPU only), ``paper`` (bench/baselines/sage_paper.py: the
published loop over images with its (K, 1, 3W, 3W) canvases; float32 and square images only; the speed-ups
that matter are over it) and ``copy``. The baseline's peak memory grows with K x 9W^2 whatever the batch size
(28.9 GB at 224 px): each case records its prediction (``paper_peak_gb``), and the baseline is timed only where
that fits (``--paper-max-gb``; default: 90 % of the GPU's free memory, on the CPU 8 GiB and MemAvailable);
elsewhere ``paper_status`` says "skipped: needs X GB" and the case has no ``paper`` row: its memory wall.

Byte model: a fused op must read ``grad`` once, read each image as itself and as a partner, and write ``mixed``
once: ``bytes = grad + 2 * x + mixed``, an upper bound of what the blend needs (a shifted partner reads only
the overlap). The search over the K shifts works on the B x H x W saliency maps and is compute-bound
(``search_pixels`` = B K H W candidate pixels per call): GB/s and % copy say how far the whole op is from
a blend alone, not how well the search runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from baselines import sage_paper

import rmix_fast
from rmix_fast.sampling import sage_candidates, shift_of_index

LAM = 0.3
RAND_POS = 0.01  # the paper's runs (the code's argparse default, 0.5, is not what they used)
PAPER_DTYPES = (torch.float32,)  # the published code's dtype

GOALS = (
    common.Goal("cifar_speedup", ">= 50x over the published loop (eager)", {"shape": "100x3x32x32",
                "dtype": "float32"}, "speedup_vs_paper", 50.0),
)  # fmt: skip


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rand-pos", type=_fraction, default=RAND_POS,
                    help=f"share of the (2H - 1)(2W - 1) shifts searched: K = floor(total * rand_pos) "
                    f"(default {RAND_POS}, the paper's)")  # fmt: skip
    ap.add_argument("--paper-max-gb", type=float, help="time the published loop only where its predicted peak "
                    "memory is at most this many GB (default: 90 %% of the GPU's free memory; on the CPU "
                    f"{sage_paper.CPU_CAP_BYTES >> 30} GiB and MemAvailable)")  # fmt: skip


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def params(args: argparse.Namespace, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    H, W = shape[2], shape[3]
    return [{"candidates": max(1, int(sage_candidates(H, W) * args.rand_pos))}]  # sample_sage_params's K


def _paper_fields(case: common.Case, device: torch.device, max_bytes: int | None) -> tuple[bool, dict[str, Any]]:
    """Whether the baseline runs in this case, and the case's record of it: its predicted peak and status."""
    B, C, H, W = case.shape
    K = case.params["candidates"]
    needed = sage_paper.peak_bytes(B, C, W, K) if H == W else None
    fields = {"paper_peak_gb": needed / 1e9 if needed else None, "paper_measured_peak_gb": None}
    if H != W:
        return False, {**fields, "paper_status": "n/a: square images only"}
    if case.dtype not in PAPER_DTYPES:
        return False, {**fields, "paper_status": "n/a: float32 only (the published code's dtype)"}
    plan = sage_paper.plan(case.shape, K, device, max_bytes=max_bytes)
    return plan.fits, {**fields, "paper_status": plan.note}


def _measured_peak_gb(fn: Any, device: torch.device) -> float | None:
    """The CUDA allocator's peak above what was allocated before one call, in GB (None on the CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 1e9


def setup(
    case: common.Case, providers: list[str], device: torch.device, *, paper_max_bytes: int | None = None
) -> common.CaseSetup:
    """Random images and gradients (never zeros), a random partner, K distinct shifts drawn as
    ``sample_sage_params`` draws them; the baseline where it applies and its memory fits."""
    g = torch.Generator().manual_seed(0)
    B, _, H, W = case.shape
    K = case.params["candidates"]
    x, grad = case.tensor(g, device), case.tensor(g, device)
    perm = torch.randperm(B, generator=g).to(device)
    offsets = shift_of_index(torch.randperm(sage_candidates(H, W), generator=g)[:K], H, W).to(device)
    paper_runs, fields = _paper_fields(case, device, paper_max_bytes)
    calls = {}
    for name in providers:
        if name == "paper":
            if paper_runs:
                calls[name] = lambda: sage_paper.paper_sage(x, grad, perm, LAM, offsets)
                fields["paper_measured_peak_gb"] = _measured_peak_gb(calls[name], device)
        elif name != "cpp" or device.type == "cpu":  # the C++ SAGE kernel is CPU-only
            calls[name] = lambda name=name: rmix_fast.sage(
                x, grad, perm=perm, lam=LAM, offsets=offsets, backend=name, validate=False
            )
    if "paper" in providers and not paper_runs:
        print(f"# paper: {fields['paper_status']} <- {common.case_label(case.fields(), [*case.fields()], ' ')}")
    fields["search_pixels"] = B * K * H * W
    return common.CaseSetup(calls, nbytes=grad.nbytes + 2 * x.nbytes + x.nbytes, copy_of=x, fields=fields)


SPEC = common.OpBenchmark(
    name="sage",
    script="bench_sage.py",
    description=__doc__,
    byte_model="grad + 2*x + mixed",
    params=params,
    setup=setup,
    add_arguments=add_arguments,
    extras=("paper",),
    speedup_over=("paper", "reference"),
    goals=GOALS,
    default_shapes={"cpu": ["100x3x32x32", "2x3x224x224"], "cuda": ["100x3x32x32", "64x3x224x224"]},
    default_reps={"cpu": 5},
    default_warmup={"cpu": 1},
    record={"lam": LAM, "sigma": 1.0, "kernel_size": 5},
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.op_parser(SPEC).parse_args(argv)
    max_bytes = None if args.paper_max_gb is None else int(args.paper_max_gb * 1e9)
    spec = dataclasses.replace(
        SPEC,
        setup=functools.partial(setup, paper_max_bytes=max_bytes),
        record={**SPEC.record, "rand_pos": args.rand_pos, "paper_max_gb": args.paper_max_gb},
    )
    return common.run_op_benchmark(spec, argv)


if __name__ == "__main__":
    main()
