"""Benchmark of the mixing op: every backend of ``rmix_fast.rmix`` that runs on the device, the paper-style
PyTorch baseline, the reference under ``torch.compile`` and a plain copy of the same bytes, in one run.

    python bench/bench_rmix.py --device cpu          # C++ backend vs reference vs baseline on this CPU
    python bench/bench_rmix.py --device cuda         # Triton, the CUDA kernel, ... on a GPU

Per case (shape x dtype x layout x grid) and provider it records:

* ``time_ms``: eager median latency, what a training loop sees (allocation of ``mixed`` included;
  ``validate=False``, as the mixers call it), providers taking turns round by round;
* ``graph_ms`` (GPU only): median GPU time of the call replayed from a CUDA graph with L2 flushed before
  each replay, i.e. the kernels' own cost with inputs coming from DRAM;
* ``bytes`` of the op's byte model, GB/s and % of the bandwidth of ``out.copy_(x)`` measured in the same
  case (eager vs eager, graph vs graph), and % of the large-buffer copy bandwidth of the run;
* speed-ups over the paper-style baseline (``paper_baseline.py``) and over the reference backend;
* ``launches`` (GPU only): CUDA kernels one call launches.

Byte model: a fused op must read ``grad`` once, read each image as itself and as a partner, and write
``mixed`` once: ``bytes = grad + 2 * x + mixed``. (A copied cell reads one source only, so this is an upper
bound of what a fused kernel needs.) The copy yardstick ``out.copy_(x)`` moves ``2 * x`` bytes.

Writes bench/results/rmix-<device>-<date>.json and .png and prints a markdown table and the goals of the
benchmark issue (GPU only) for bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from paper_baseline import paper_rmix

import rmix_fast
from rmix_fast import reference
from rmix_fast.ops._backends import _max_grid, resolve_backend
from rmix_fast.sampling import paper_levels

DEFAULT_SHAPES = {
    "cpu": ["256x3x32x32", "16x3x224x224"],
    "cuda": ["100x3x32x32", "256x3x32x32", "64x3x224x224", "256x3x224x224"],
}
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}
EXTRA_PROVIDERS = ("paper", "compiled")  # beside the backends; "copy" is always timed
# torch.compile specialises on shape, dtype and strides: one compile per case (seconds each on a GPU). Only
# float32 cases get one, to keep a full GPU run inside one call of the device tool.
COMPILED_DTYPES = (torch.float32,)
LAM = 0.3

# The benchmark issue's goals, checked on the provider "auto" picks (GPU runs only).
GOALS = [
    # (name, shape, dtype, figure, threshold, what)
    ("imagenet_bandwidth", "256x3x224x224", "float32", "graph_pct_copy", 85.0, ">= 85 % of copy bandwidth"),
    ("imagenet_speedup", "256x3x224x224", "float32", "speedup_vs_paper", 10.0, ">= 10x over the baseline"),
    ("cifar_speedup", "100x3x32x32", "float32", "speedup_vs_paper", 15.0, ">= 15x over the baseline (eager)"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shapes", nargs="+", help="BxCxHxW (default: CIFAR and ImageNet shapes for the device)")
    ap.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16", "float16", "float64"])
    ap.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"],
                    choices=["contiguous", "channels_last"])  # fmt: skip
    ap.add_argument("--grids", nargs="+", type=int, default=[2, 4, 32])
    ap.add_argument(
        "--providers", nargs="+", help=f"backend names and/or {EXTRA_PROVIDERS} (default: all that run here)"
    )
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions per case (median reported)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads for a CPU run")
    ap.add_argument("--out", type=Path, help="stem of the output files (default: bench/results/rmix-<device>-<date>)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")
    return args


def providers_to_time(device: torch.device, wanted: list[str] | None) -> list[str]:
    infos = rmix_fast.available_backends(device)
    runnable = [
        name
        for name, info in infos.items()
        if info.available and "interpreter" not in info.reason  # the Triton interpreter is a test tool
    ]
    names = wanted or [*runnable, *EXTRA_PROVIDERS]
    for name in names:
        if name in EXTRA_PROVIDERS:
            continue
        if name not in infos:
            raise SystemExit(f"unknown provider {name!r}: choose from {[*infos, *EXTRA_PROVIDERS]}")
        if not infos[name].available:
            raise SystemExit(f"backend {name!r} cannot run on {device}: {infos[name].reason}")
    return names


def make_inputs(shape: tuple[int, ...], dtype: torch.dtype, layout: str, device: torch.device):
    """Random images and gradients (never zeros), a random partner, the paper's q levels."""
    g = torch.Generator().manual_seed(0)
    B = shape[0]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=g).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    perm = torch.randperm(B, generator=g).to(device)
    levels = paper_levels(10)
    q = levels[torch.randint(len(levels), (B,), generator=g)].to(device)
    return x, grad, perm, q


_compiled_reference: Callable | None = None


def compiled_reference() -> Callable:
    """``reference.rmix_forward`` under ``torch.compile`` (one compiled function, recompiled per case)."""
    global _compiled_reference
    if _compiled_reference is None:
        import torch._dynamo

        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, 256)
        _compiled_reference = torch.compile(reference.rmix_forward, dynamic=False)
    return _compiled_reference


def make_calls(names: list[str], x, grad, perm, q, grid: int, out) -> dict[str, Callable[[], object]]:
    B = x.shape[0]
    lam_t = torch.full((B,), LAM, dtype=reference.accumulate_dtype(x.dtype), device=x.device)
    q_t = q.to(reference.accumulate_dtype(grad.dtype))
    calls: dict[str, Callable[[], object]] = {}
    for name in names:
        if name == "paper":
            calls[name] = lambda: paper_rmix(x, grad, perm, lam_t, q_t, grid)
        elif name == "compiled":
            fn = compiled_reference()
            calls[name] = lambda fn=fn: fn(x, grad, perm, lam_t, q_t, grid)
        else:
            calls[name] = lambda name=name: rmix_fast.rmix(
                x, grad, perm=perm, lam=LAM, q=q, grid=grid, backend=name, validate=False
            )
    calls["copy"] = lambda: out.copy_(x)
    return calls


def run_case(shape, dtype, layout, grid, names, device, reps, peak_gbps) -> list[dict]:
    x, grad, perm, q = make_inputs(shape, dtype, layout, device)
    out = torch.empty_like(x)
    op_bytes = grad.nbytes + 2 * x.nbytes + x.nbytes
    copy_bytes = 2 * x.nbytes
    calls = make_calls(names, x, grad, perm, q, grid, out)
    ms = common.interleaved_medians(calls, device, reps=reps)
    graph_ms: dict[str, float | None] = dict.fromkeys(calls)
    graph_err: dict[str, str] = {}
    launches: dict[str, int | None] = dict.fromkeys(calls)
    if device.type == "cuda":
        for name, fn in calls.items():
            try:
                graph_ms[name] = common.cuda_graph_cold_ms(fn, device, reps=reps)
            except Exception as e:  # a provider that cannot be captured is reported, not fatal
                graph_err[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                torch.cuda.synchronize(device)
            launches[name] = common.kernel_launches(fn)
    base = {"shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."), "layout": layout,
            "grid": grid, "bytes": op_bytes}  # fmt: skip
    copy_gbps = copy_bytes / ms["copy"] / 1e6
    copy_graph_gbps = copy_bytes / graph_ms["copy"] / 1e6 if graph_ms["copy"] else None
    rows = []
    for name, t in ms.items():
        nbytes = copy_bytes if name == "copy" else op_bytes
        gbps = nbytes / t / 1e6
        tg = graph_ms[name]
        graph_gbps = nbytes / tg / 1e6 if tg else None
        rows.append({
            **base, "provider": name, "time_ms": t, "gbps": gbps, "pct_copy": 100 * gbps / copy_gbps,
            "pct_peak": 100 * gbps / peak_gbps, "graph_ms": tg, "graph_gbps": graph_gbps,
            "graph_pct_copy": 100 * graph_gbps / copy_graph_gbps if graph_gbps and copy_graph_gbps else None,
            "graph_pct_peak": 100 * graph_gbps / peak_gbps if graph_gbps else None,
            "graph_error": graph_err.get(name), "launches": launches[name],
            "speedup_vs_paper": ms["paper"] / t if "paper" in ms else None,
            "graph_speedup_vs_paper": graph_ms.get("paper") / tg if graph_ms.get("paper") and tg else None,
            "speedup_vs_reference": ms["reference"] / t if "reference" in ms else None,
        })  # fmt: skip
    return rows


def check_goals(rows: list[dict], device: torch.device) -> list[dict]:
    """Each goal of the benchmark issue against every matching case of the provider "auto" picks."""
    if device.type != "cuda":
        return []
    results = []
    for name, shape, dtype, figure, threshold, what in GOALS:
        for r in rows:
            if (r["shape"], r["dtype"]) != (shape, dtype) or r["provider"] != resolve_backend(
                "auto", device, r["grid"]
            ):
                continue
            value = r[figure]
            results.append({"goal": name, "what": what, "shape": shape, "dtype": dtype, "layout": r["layout"],
                            "grid": r["grid"], "provider": r["provider"], "figure": figure, "value": value,
                            "threshold": threshold, "met": value is not None and value >= threshold})  # fmt: skip
    return results


def plot(rows: list[dict], path: Path, title: str) -> None:
    plt = common.pyplot()
    cases = list(dict.fromkeys((r["shape"], r["dtype"], r["layout"], r["grid"]) for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(cases) + 3), 8), sharex=True)
    width = 0.8 / len(providers)
    gpu = any(r["graph_ms"] for r in rows)
    time_key, gbps_key = ("graph_ms", "graph_gbps") if gpu else ("time_ms", "gbps")
    for k, prov in enumerate(providers):
        by_case = {(r["shape"], r["dtype"], r["layout"], r["grid"]): r for r in rows if r["provider"] == prov}
        xs = [i + (k - (len(providers) - 1) / 2) * width for i in range(len(cases))]
        for ax, key in zip(axes, (time_key, gbps_key), strict=True):
            ax.bar(xs, [(by_case[c][key] or 0) if c in by_case else 0 for c in cases], width, label=prov)
    what = "GPU time, CUDA graph, cold L2" if gpu else "eager time"
    axes[0].set_ylabel(f"median {what} (ms, log)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("GB/s (op byte model)")
    axes[0].legend(ncol=len(providers))
    axes[0].set_title(title)
    labels = [f"{s}\n{d} {'NHWC' if lay == 'channels_last' else 'NCHW'} p={p}" for s, d, lay, p in cases]
    axes[1].set_xticks(range(len(cases)), labels, rotation=45, ha="right", fontsize=7)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, env = common.start_run("bench_rmix.py", args.device, args.threads, argv)
    names = providers_to_time(device, args.providers)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes or DEFAULT_SHAPES[device.type]]
    dtypes = [getattr(torch, d) for d in args.dtypes or DEFAULT_DTYPES[device.type]]
    peak = common.peak_copy_gbps(device)
    print(f"# {env['device_name']} | torch {env['torch']} | triton {env['triton']} | providers {names} | "
          f"large copy {peak:.1f} GB/s", flush=True)  # fmt: skip

    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in args.layouts:
                for grid in args.grids:
                    if shape[2] % grid or shape[3] % grid:
                        continue
                    usable = [n for n in names if n in EXTRA_PROVIDERS or _grid_ok(n, device, grid)]
                    if dtype not in COMPILED_DTYPES:
                        usable = [n for n in usable if n != "compiled"]
                    case_rows = run_case(shape, dtype, layout, grid, usable, device, args.reps, peak)
                    rows += case_rows
                    print(
                        " | ".join(f"{r['provider']} {r['time_ms']:.3f} ms" for r in case_rows),
                        f"<- {case_rows[0]['shape']} {case_rows[0]['dtype']} {layout} p={grid}",
                        flush=True,
                    )

    goals = check_goals(rows, device)
    stem = args.out or common.results_stem(device, "rmix")
    payload = {**env, "peak_copy_gbps": peak, "byte_model": "grad + 2*x + mixed", "validate": False,
               "lam": LAM, "reps": args.reps, "cases": rows, "goals": goals}  # fmt: skip
    common.write_json(stem.with_suffix(".json"), payload)
    plot(rows, stem.with_suffix(".png"), f"rmix: {env['device_name']}, torch {env['torch']}")
    columns = [
        ("shape", "shape"), ("dtype", "dtype"), ("layout", "layout"), ("grid", "p"), ("provider", "provider"),
        ("time_ms", "eager ms"), ("graph_ms", "graph ms"), ("gbps", "GB/s"), ("pct_copy", "% copy"),
        ("graph_pct_copy", "graph % copy"), ("launches", "kernels"), ("speedup_vs_paper", "× paper"),
        ("speedup_vs_reference", "× ref"),
    ]  # fmt: skip
    if device.type != "cuda":
        columns = [c for c in columns if c[0] not in ("graph_ms", "graph_pct_copy", "launches")]
    print(common.markdown_table(rows, columns))
    if goals:
        print(common.markdown_table(goals, [(k, k) for k in ("goal", "layout", "grid", "provider", "value", "met")]))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return payload


def _grid_ok(backend: str, device: torch.device, grid: int) -> bool:
    limit = _max_grid(backend, device)
    return limit is None or grid <= limit


if __name__ == "__main__":
    main()
