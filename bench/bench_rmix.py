"""Benchmark of the mixing op: every backend of ``rmix_fast.rmix`` that runs on the device, side by side in
one run, against a plain copy of the same bytes as the bandwidth yardstick.

    python bench/bench_rmix.py --device cpu          # the C++ backend vs the reference on this CPU
    python bench/bench_rmix.py --device cuda         # Triton, the CUDA kernel and the reference on a GPU

Per case it records the eager median latency (what a training loop sees), the bytes of the op's byte model,
GB/s, % of the copy bandwidth measured in the same run, and the speed-up over the reference backend. Writes
bench/results/rmix-<device>-<date>.json and .png and prints a markdown table for bench/README.md.

Byte model: a fused op must read ``grad`` once, read each image as itself and as a partner, and write
``mixed`` once: ``bytes = grad + 2 * x + mixed``. (A copied cell reads one source only, so this is an upper
bound of what a fused kernel needs.) The copy yardstick is ``out.copy_(x)``: 2 * x bytes per call.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import rmix_fast
from rmix_fast.sampling import paper_levels

DEFAULT_SHAPES = {
    "cpu": ["256x3x32x32", "16x3x224x224"],
    "cuda": ["100x3x32x32", "256x3x32x32", "64x3x224x224", "256x3x224x224"],
}
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shapes", nargs="+", help="BxCxHxW (default: CIFAR and ImageNet shapes for the device)")
    ap.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16", "float64"])
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"],
                    choices=["contiguous", "channels_last"])  # fmt: skip
    ap.add_argument("--grids", nargs="+", type=int, default=[2, 4, 32])
    ap.add_argument("--backends", nargs="+", help="backends to time (default: every one available on the device)")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions per case (median reported)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads for a CPU run")
    ap.add_argument("--out", type=Path, help="stem of the output files (default: bench/results/rmix-<device>-<date>)")
    return ap.parse_args(argv)


def backends_to_time(device: torch.device, wanted: list[str] | None) -> list[str]:
    infos = rmix_fast.available_backends(device)
    names = wanted or [
        name
        for name, info in infos.items()
        if info.available and "interpreter" not in info.reason  # the Triton interpreter is a test tool
    ]
    for name in names:
        if not infos[name].available:
            raise SystemExit(f"backend {name!r} cannot run on {device}: {infos[name].reason}")
    return names


def make_inputs(shape: tuple[int, ...], dtype: torch.dtype, layout: str, device: torch.device):
    g = torch.Generator().manual_seed(0)
    B = shape[0]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    perm = torch.randperm(B, generator=g).to(device)
    levels = paper_levels(10)
    q = levels[torch.randint(len(levels), (B,), generator=g)].to(device)
    return x, grad, perm, q


def run_case(shape, dtype, layout, grid, backends, device, reps) -> list[dict]:
    x, grad, perm, q = make_inputs(shape, dtype, layout, device)
    out = torch.empty_like(x)
    op_bytes = grad.nbytes + 2 * x.nbytes + x.nbytes
    calls = {
        name: (lambda name=name: rmix_fast.rmix(x, grad, perm=perm, lam=0.3, q=q, grid=grid, backend=name,
                                                 validate=False))
        for name in backends
    }  # fmt: skip
    calls["copy"] = lambda: out.copy_(x)
    ms = common.interleaved_medians(calls, device, reps=reps)
    copy_gbps = 2 * x.nbytes / ms["copy"] / 1e6
    base = {"shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."), "layout": layout,
            "grid": grid, "bytes": op_bytes, "copy_gbps": copy_gbps}  # fmt: skip
    rows = []
    for name, t in ms.items():
        gbps = (2 * x.nbytes if name == "copy" else op_bytes) / t / 1e6
        rows.append({**base, "provider": name, "time_ms": t, "gbps": gbps, "pct_copy": 100 * gbps / copy_gbps})
    for r in rows:
        r["speedup_vs_reference"] = ms["reference"] / r["time_ms"] if "reference" in ms else None
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["shape"], r["dtype"], r["layout"], r["grid"]) for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(cases) + 3), 8), sharex=True)
    width = 0.8 / len(providers)
    for k, prov in enumerate(providers):
        by_case = {(r["shape"], r["dtype"], r["layout"], r["grid"]): r for r in rows if r["provider"] == prov}
        xs = [i + (k - (len(providers) - 1) / 2) * width for i in range(len(cases))]
        for ax, key in zip(axes, ("time_ms", "gbps"), strict=True):
            ax.bar(xs, [by_case[c][key] if c in by_case else 0 for c in cases], width, label=prov)
    axes[0].set_ylabel("median time (ms, log)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("GB/s (op byte model)")
    axes[0].legend()
    axes[0].set_title(title)
    labels = [f"{s}\n{d} {'NHWC' if lay == 'channels_last' else 'NCHW'} p={p}" for s, d, lay, p in cases]
    axes[1].set_xticks(range(len(cases)), labels, rotation=45, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = backends_to_time(device, args.backends)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes or DEFAULT_SHAPES[device.type]]
    dtypes = [getattr(torch, d) for d in args.dtypes or DEFAULT_DTYPES[device.type]]
    command = "python bench/bench_rmix.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    env = common.environment(device, command.strip())
    print(f"# {env['device_name']} | torch {env['torch']} | triton {env['triton']} | backends {backends}", flush=True)

    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in args.layouts:
                for grid in args.grids:
                    if shape[2] % grid or shape[3] % grid:
                        continue
                    usable = [b for b in backends if _grid_ok(b, device, grid)]
                    case_rows = run_case(shape, dtype, layout, grid, usable, device, args.reps)
                    rows += case_rows
                    print(
                        " | ".join(f"{r['provider']} {r['time_ms']:.3f} ms" for r in case_rows),
                        f"<- {case_rows[0]['shape']} {case_rows[0]['dtype']} {layout} p={grid}",
                        flush=True,
                    )

    stem = args.out or common.results_stem(device, "rmix")
    payload = {**env, "byte_model": "grad + 2*x + mixed", "validate": False, "reps": args.reps, "cases": rows}
    common.write_json(stem.with_suffix(".json"), payload)
    plot(rows, stem.with_suffix(".png"), f"rmix: {env['device_name']}, torch {env['torch']}")
    columns = [
        ("shape", "shape"), ("dtype", "dtype"), ("layout", "layout"), ("grid", "p"), ("provider", "provider"),
        ("time_ms", "ms"), ("gbps", "GB/s"), ("pct_copy", "% copy"), ("speedup_vs_reference", "× ref"),
    ]  # fmt: skip
    print(common.markdown_table(rows, columns))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return payload


def _grid_ok(backend: str, device: torch.device, grid: int) -> bool:
    from rmix_fast._backends import _max_grid

    limit = _max_grid(backend, device)
    return limit is None or grid <= limit


if __name__ == "__main__":
    main()
