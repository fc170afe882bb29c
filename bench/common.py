"""What every benchmark shares, and the runner of the op benchmarks.

Shared by all scripts: timing (interleaved medians, CUDA-graph cold-L2 time, kernel counts, copy
bandwidth), the run's environment (device, versions, commit, command, allocator), JSON, PNG and markdown
output.

The op runner (``run_op_benchmark``): an op benchmark supplies only an ``OpBenchmark``, i.e. its own
case parameters, inputs, providers and byte model; the runner parses the shared options, checks the
providers, measures the copy bandwidth of the run and of every case, times every provider of a case side by
side, derives GB/s, % of copy bandwidth and speed-ups, checks the goals, and writes the JSON (after every
case, so a run cut short keeps what it measured) and the PNG.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import rmix_fast
from rmix_fast.ops import resolve_backend
from rmix_fast.training.runtime import versions

RESULTS = Path(__file__).resolve().parent / "results"
# The version of the op-benchmark JSON layout; files without "schema" come from the scripts before the runner.
SCHEMA = 2
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = ("float32", "bfloat16", "float16", "float64")
COPY = "copy"
DEFAULT_REPS = 30
DEFAULT_WARMUP = 5


# --------------------------------------------------------------------------------------------- timing


def time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time in ms of one call of ``fn``, synchronised with the device (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved_medians(
    calls: dict[str, Callable[[], object]], device: torch.device, *, warmup: int = 5, reps: int = 30
) -> dict[str, float]:
    """Median wall time in ms of each call, as a training loop sees it (eager, synchronised).

    The calls take turns, one repetition of each per round, so a slow spell of the machine (another
    process, frequency changes) hits every provider alike and the ratios of one run stay fair.
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            times[name].append(time_once_ms(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def cuda_graph_cold_ms(
    fn: Callable[[], object], device: torch.device, *, reps: int = 30, flush_bytes: int = 256 << 20
) -> float:
    """Median GPU time in ms of one call replayed from a CUDA graph, with L2 flushed before each replay.

    The graph removes Python and launch overhead (what the kernels themselves cost); writing a buffer larger
    than L2 before each replay makes every input come from DRAM, as it does in a training step.
    Raises whatever capture raises (e.g. an op that synchronises with the host).
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs recommends
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    flush = torch.empty(flush_bytes, dtype=torch.int8, device=device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    graph.replay()
    for start, end in events:
        flush.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def kernel_launches(fn: Callable[[], object]) -> int:
    """How many CUDA kernels one call launches (torch.profiler), after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def peak_copy_gbps(device: torch.device, *, nbytes: int | None = None, reps: int = 20) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second, in GB/s) of a buffer far larger
    than any cache: 1 GiB on a GPU, 256 MiB on the CPU. The yardstick for "% of peak"."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 256 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = interleaved_medians({COPY: lambda: dst.copy_(src)}, device, warmup=3, reps=reps)[COPY]
    return 2 * nbytes / ms / 1e6


def keep_freed_memory_in_heap() -> str:
    """Make glibc keep freed blocks up to 32 MiB in the heap instead of unmapping them.

    By default glibc serves large tensors with mmap and returns them with munmap, so every call of a CPU op
    page-faults its freshly allocated output, which can cost several times the op itself. Reusing freed
    memory is what jemalloc / tcmalloc (and on a GPU the caching allocator) do, so the timings show the op.
    Returns what was set, for the JSON.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default (no glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    return "glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB" if ok else "default (mallopt refused)"


# ---------------------------------------------------------------------------------------- environment


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def environment(device: torch.device, command: str) -> dict[str, Any]:
    """Device, versions and commit of this run (the versions and commit as rmix-train records them; without a git
    checkout, the commit named by ``RMIX_FAST_COMMIT``)."""
    try:
        # bench/results/ does not count: a run that follows another finds that one's fresh output there.
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"]
        done = subprocess.run(status, capture_output=True, text=True, check=True, cwd=RESULTS.parents[1])
        dirty = bool(done.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        dirty = None
    found = versions()
    # A lent GPU machine gets a copy of the working tree without .git: the caller names the commit there.
    found["commit"] = found["commit"] or os.environ.get("RMIX_FAST_COMMIT")
    return {
        "device": device.type,
        "device_name": device_name(device),
        **found,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "dirty_tree": dirty,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


def base_parser(description: str, name: str, reps_default: str) -> argparse.ArgumentParser:
    """The options of every benchmark: --device, --reps, --threads, --out."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--reps", type=positive_int, help=f"timed repetitions per case, median reported ({reps_default})")
    ap.add_argument("--threads", type=positive_int, help="torch.set_num_threads for a CPU run")
    default = f"bench/results/{name}-<device>-<date>"
    ap.add_argument("--out", type=Path, help=f"stem of the output files (default: {default})")
    return ap


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def start_run(script: str, device: str, threads: int | None, argv: list[str] | None) -> tuple[torch.device, dict]:
    """What every benchmark does first: the device (refusing CUDA without a GPU), the thread count, the
    allocator setting, and the environment record with the exact command."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    if threads:
        torch.set_num_threads(threads)
    allocator = keep_freed_memory_in_heap() if dev.type == "cpu" else "CUDA caching allocator"
    command = f"python bench/{script} " + shlex.join(sys.argv[1:] if argv is None else argv)
    return dev, {**environment(dev, command.strip()), "allocator": allocator}


# --------------------------------------------------------------------------------------------- output


def results_stem(device: torch.device, name: str) -> Path:
    """bench/results/<bench>-<device>-<date>, the stem of the JSON and PNG files of a run."""
    slug = "".join(c if c.isalnum() else "-" for c in device_name(device).lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return RESULTS / f"{name}-{slug[:48]}-{dt.date.today().isoformat()}"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write as PNG and release ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, header) pairs; floats are printed with 3 significant digits."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- the op runner


@dataclass(frozen=True)
class Case:
    """One point of an op benchmark: image shape, dtype, memory layout and the op's own parameters."""

    shape: tuple[int, int, int, int]
    dtype: torch.dtype
    layout: str
    params: dict[str, Any]

    def fields(self) -> dict[str, Any]:
        """The case as JSON fields: shape "BxCxHxW", dtype and layout names, then the op's parameters."""
        return {"shape": "x".join(map(str, self.shape)), "dtype": str(self.dtype).removeprefix("torch."),
                "layout": self.layout, **self.params}  # fmt: skip

    def tensor(self, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Normal random values (never all zeros) of the case's shape, dtype and layout on ``device``; drawn
        on the CPU from ``generator`` so every device and provider sees the same numbers."""
        t = torch.randn(self.shape, generator=generator).to(device=device, dtype=self.dtype)
        return t.contiguous(memory_format=LAYOUTS[self.layout])


@dataclass
class CaseSetup:
    """What an op benchmark hands the runner for one case."""

    calls: dict[str, Callable[[], object]]  # provider -> one call; the providers that apply to this case
    nbytes: int  # the op's byte model: bytes read + written by one call
    copy_of: torch.Tensor  # the yardstick is ``out.copy_(copy_of)``, timed in the same case
    # Figures of the case the op adds to each of its rows, e.g. a baseline's predicted memory and why it was not
    # timed: a provider left out of ``calls`` has no row, so its reason lives here.
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Goal:
    """A target of the benchmark issue: ``figure >= threshold`` on the cases matching ``match``, checked on
    the provider that "auto" picks, in runs on ``device``."""

    name: str
    what: str
    match: dict[str, Any]
    figure: str
    threshold: float
    device: str = "cuda"


def _auto_without_grid(fields: dict[str, Any], device: torch.device) -> str:
    return resolve_backend("auto", device, None)


@dataclass(frozen=True)
class OpBenchmark:
    """An op benchmark as the runner needs it.

    ``params(args, shape)`` lists the op's own parameter sets for an image shape (e.g. ``[{"grid": 2}]``;
    one that does not fit the shape is left out); ``setup(case, providers, device)`` builds the inputs and
    one call per provider that applies to the case, plus the byte model. Providers are the backends of
    ``rmix_fast.available_backends`` and the op's ``extras`` (baselines, the compiled reference).
    """

    name: str  # results/<name>-<device>-<date>.{json,png}; "bench" in the JSON
    script: str  # file name under bench/, for the recorded command
    description: str  # the script's docstring
    byte_model: str  # recorded in the JSON
    params: Callable[[argparse.Namespace, tuple[int, ...]], list[dict[str, Any]]]
    setup: Callable[[Case, list[str], torch.device], CaseSetup]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda ap: None
    extras: tuple[str, ...] = ()
    speedup_over: tuple[str, ...] = ("reference",)
    goals: tuple[Goal, ...] = ()
    auto_backend: Callable[[dict[str, Any], torch.device], str] = _auto_without_grid
    default_shapes: dict[str, list[str]] = field(
        default_factory=lambda: {"cpu": ["256x3x32x32", "16x3x224x224"], "cuda": ["256x3x32x32", "32x3x224x224"]}
    )
    default_dtypes: dict[str, list[str]] = field(
        default_factory=lambda: {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}
    )
    # --reps and --warmup per device where the op's calls are too slow for the defaults (DEFAULT_REPS, DEFAULT_WARMUP)
    default_reps: dict[str, int] = field(default_factory=dict)
    default_warmup: dict[str, int] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # the op's constants, for the JSON (e.g. lam)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a shape is BxCxHxW with positive integers, got {text!r}")
    b, c, h, w = (int(p) for p in parts)
    return b, c, h, w


def _per_device(default: int, by_device: dict[str, int]) -> str:
    """A default that some devices override, as help text: "cpu: 5, otherwise 30"."""
    return ", ".join(
        [*(f"{d}: {n}" for d, n in by_device.items()), f"otherwise {default}" if by_device else str(default)]
    )


def op_parser(spec: OpBenchmark) -> argparse.ArgumentParser:
    ap = base_parser(spec.description, spec.name, f"default {_per_device(DEFAULT_REPS, spec.default_reps)}")
    ap.add_argument("--warmup", type=positive_int, help="untimed calls of each provider before the timed ones "
                    f"(default {_per_device(DEFAULT_WARMUP, spec.default_warmup)})")  # fmt: skip
    defaults = "; ".join(f"{d}: {' '.join(v)}" for d, v in spec.default_shapes.items())
    ap.add_argument("--shapes", nargs="+", type=parse_shape, help=f"BxCxHxW (default {defaults})")
    defaults = "; ".join(f"{d}: {' '.join(v)}" for d, v in spec.default_dtypes.items())
    ap.add_argument("--dtypes", nargs="+", choices=DTYPES, help=f"default {defaults}")
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    names = [*rmix_fast.available_backends("cpu"), *spec.extras]
    ap.add_argument("--providers", nargs="+", help=f"any of {names} (default: all that run on the device; "
                    f"the Triton interpreter only when named); {COPY!r} is always timed")  # fmt: skip
    spec.add_arguments(ap)
    return ap


def select_providers(spec: OpBenchmark, device: torch.device, wanted: list[str] | None) -> list[str]:
    """The providers of the run, "copy" last: ``wanted``, or every backend that runs on ``device`` (not the
    Triton interpreter, a test tool) and the op's extras. Refuses unknown names and backends that cannot
    run here."""
    infos = rmix_fast.available_backends(device)
    known = [*infos, *spec.extras, COPY]
    if wanted is None:
        runnable = [n for n, i in infos.items() if i.available and "interpreter" not in i.reason.lower()]
        return [*runnable, *spec.extras, COPY]
    for name in wanted:
        if name not in known:
            raise SystemExit(f"unknown provider {name!r}: choose from {known}")
        if name in infos and not infos[name].available:
            raise SystemExit(f"backend {name!r} cannot run on {device}: {infos[name].reason}")
    return [*dict.fromkeys(n for n in wanted if n != COPY), COPY]


def backend_takes_grid(backend: str, device: torch.device, grid: int) -> bool:
    """Whether ``backend`` takes R-Mix grid ``grid`` on ``device`` (its ``max_grid``)."""
    limit = rmix_fast.available_backends(device)[backend].max_grid
    return limit is None or grid <= limit


_compiled: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """``fn`` under ``torch.compile`` (default mode, static shapes): one compiled function per ``fn``,
    recompiled per case, since torch.compile specialises on shape, dtype and strides."""
    if fn not in _compiled:
        import torch._dynamo

        limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, limit, 256)
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def measure_case(case: Case, setup: CaseSetup, device: torch.device, *, reps: int, peak_gbps: float,
                 speedup_over: Iterable[str], warmup: int = DEFAULT_WARMUP) -> list[dict[str, Any]]:  # fmt: skip
    """Every provider of one case and the same-size copy, side by side; one row per provider."""
    out = torch.empty_like(setup.copy_of)
    src = setup.copy_of
    calls = {**setup.calls, COPY: lambda: out.copy_(src)}
    copy_bytes = 2 * src.nbytes
    ms = interleaved_medians(calls, device, warmup=warmup, reps=reps)
    graph_ms: dict[str, float | None] = dict.fromkeys(calls)
    graph_err: dict[str, str] = {}
    launches: dict[str, int | None] = dict.fromkeys(calls)
    if device.type == "cuda":
        for name, fn in calls.items():
            try:
                graph_ms[name] = cuda_graph_cold_ms(fn, device, reps=reps)
            except Exception as e:  # a provider that cannot be captured is reported, not fatal
                graph_err[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                torch.cuda.synchronize(device)
            launches[name] = kernel_launches(fn)
    copy_gbps = copy_bytes / ms[COPY] / 1e6
    copy_graph_gbps = copy_bytes / graph_ms[COPY] / 1e6 if graph_ms[COPY] else None
    base = {**case.fields(), **setup.fields, "bytes": setup.nbytes, "copy_gbps": copy_gbps}
    rows = []
    for name, t in ms.items():
        nbytes = copy_bytes if name == COPY else setup.nbytes
        gbps = nbytes / t / 1e6
        tg = graph_ms[name]
        graph_gbps = nbytes / tg / 1e6 if tg else None
        row = {**base, "provider": name, "time_ms": t, "gbps": gbps, "pct_copy": 100 * gbps / copy_gbps,
               "pct_peak": 100 * gbps / peak_gbps, "graph_ms": tg, "graph_gbps": graph_gbps,
               "graph_pct_copy": 100 * graph_gbps / copy_graph_gbps if graph_gbps and copy_graph_gbps else None,
               "graph_pct_peak": 100 * graph_gbps / peak_gbps if graph_gbps else None,
               "graph_error": graph_err.get(name), "launches": launches[name]}  # fmt: skip
        for b in speedup_over:
            row[f"speedup_vs_{b}"] = ms[b] / t if b in ms else None
            row[f"graph_speedup_vs_{b}"] = graph_ms[b] / tg if b in ms and graph_ms[b] and tg else None
        rows.append(row)
    return rows


def check_goals(spec: OpBenchmark, rows: list[dict], keys: list[str], device: torch.device) -> list[dict]:
    """Each goal against every matching case of the provider "auto" picks for it."""
    results = []
    for goal in spec.goals:
        if goal.device != device.type:
            continue
        for r in rows:
            if any(r.get(k) != v for k, v in goal.match.items()) or r["provider"] != spec.auto_backend(r, device):
                continue
            value = r.get(goal.figure)
            results.append({"goal": goal.name, "what": goal.what, **{k: r[k] for k in keys},
                            "case": case_label(r, keys, ", "), "provider": r["provider"], "figure": goal.figure,
                            "value": value, "threshold": goal.threshold,
                            "met": value is not None and value >= goal.threshold})  # fmt: skip
    return results


def case_key(row: dict, keys: Iterable[str]) -> tuple:
    return tuple(row[k] for k in keys)


def case_label(row: dict, keys: list[str], sep: str = "\n") -> str:
    """The case as text, e.g. ``256x3x32x32<sep>float32 NCHW grid=4``: the shape, then dtype, layout and the
    op's parameters (``keys`` after shape, dtype and layout)."""
    layout = "NHWC" if row["layout"] == "channels_last" else "NCHW"
    params = " ".join(f"{k}={row[k]}" for k in keys[3:])
    return f"{row['shape']}{sep}{row['dtype']} {layout} {params}".rstrip()


def plot(rows: list[dict], keys: list[str], path: Path, title: str) -> None:
    """Two panels over the cases, one bar per provider: median time (log scale) and GB/s of the byte model.
    GPU runs show the CUDA-graph cold-L2 figures, CPU runs the eager ones."""
    plt = pyplot()
    cases = list(dict.fromkeys(case_key(r, keys) for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(cases) + 3), 8), sharex=True)
    width = 0.8 / len(providers)
    gpu = any(r["graph_ms"] for r in rows)
    time_key, gbps_key = ("graph_ms", "graph_gbps") if gpu else ("time_ms", "gbps")
    for k, prov in enumerate(providers):
        by_case = {case_key(r, keys): r for r in rows if r["provider"] == prov}
        xs = [i + (k - (len(providers) - 1) / 2) * width for i in range(len(cases))]
        for ax, key in zip(axes, (time_key, gbps_key), strict=True):
            ax.bar(xs, [(by_case[c][key] or 0) if c in by_case else 0 for c in cases], width, label=prov)
        # A provider the case skipped for a reason (``<provider>_status``, e.g. a baseline's memory wall): say so
        # where its bar would be.
        status = {case_key(r, keys): r.get(f"{prov}_status") for r in rows}
        for x, c in zip(xs, cases, strict=True):
            if c not in by_case and status.get(c) and status[c].startswith("skipped"):
                axes[0].text(x, 0.03, status[c].split(" (")[0], transform=axes[0].get_xaxis_transform(),
                             rotation=90, ha="center", va="bottom", fontsize=7)  # fmt: skip
    what = "GPU time, CUDA graph, cold L2" if gpu else "eager time"
    axes[0].set_ylabel(f"median {what} (ms, log)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("GB/s (op byte model)")
    axes[0].legend(ncol=len(providers))
    axes[0].set_title(title)
    labels = [case_label(dict(zip(keys, c, strict=True)), keys) for c in cases]
    axes[1].set_xticks(range(len(cases)), labels, rotation=45, ha="right", fontsize=7)
    save_figure(fig, path)


def run_op_benchmark(spec: OpBenchmark, argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the options, time every case and provider, write ``<stem>.json`` and ``<stem>.png``, print the
    tables; returns the JSON payload."""
    args = op_parser(spec).parse_args(argv)
    device, env = start_run(spec.script, args.device, args.threads, argv)
    providers = select_providers(spec, device, args.providers)
    reps = args.reps or spec.default_reps.get(device.type, DEFAULT_REPS)
    warmup = args.warmup or spec.default_warmup.get(device.type, DEFAULT_WARMUP)
    shapes = args.shapes or [parse_shape(s) for s in spec.default_shapes[device.type]]
    dtypes = [getattr(torch, d) for d in args.dtypes or spec.default_dtypes[device.type]]
    cases = [
        Case(shape, dtype, layout, params)
        for shape, dtype, layout in itertools.product(shapes, dtypes, args.layouts)
        for params in spec.params(args, shape)
    ]
    if not cases:
        raise SystemExit("no case fits: every parameter set was left out for these shapes")
    peak = peak_copy_gbps(device)
    print(f"# {env['device_name']} | torch {env['torch']} | triton {env['triton']} | providers {providers} | "
          f"large copy {peak:.1f} GB/s", flush=True)  # fmt: skip

    stem = args.out or results_stem(device, spec.name)
    payload: dict[str, Any] = {**env, "bench": spec.name, "schema": SCHEMA, "providers": providers,
                               "peak_copy_gbps": peak, "byte_model": spec.byte_model, "validate": False,
                               "reps": reps, "warmup": warmup, **spec.record, "speedup_over": list(spec.speedup_over),
                               "case_keys": [*cases[0].fields()], "complete": False, "cases": [],
                               "goals": []}  # fmt: skip
    rows: list[dict[str, Any]] = payload["cases"]
    for case in cases:
        setup = spec.setup(case, [p for p in providers if p != COPY], device)
        case_rows = measure_case(
            case, setup, device, reps=reps, peak_gbps=peak, speedup_over=spec.speedup_over, warmup=warmup
        )
        rows += case_rows
        write_json(stem.with_suffix(".json"), payload)  # a run cut short keeps its finished cases
        print(" | ".join(f"{r['provider']} {r['time_ms']:.3f} ms" for r in case_rows),
              f"<- {case_label(case.fields(), payload['case_keys'], ' ')}", flush=True)  # fmt: skip

    payload["goals"] = check_goals(spec, rows, payload["case_keys"], device)
    payload["complete"] = True
    write_json(stem.with_suffix(".json"), payload)
    title = f"{spec.name}: {env['device_name']}, torch {env['torch']}"
    plot(rows, payload["case_keys"], stem.with_suffix(".png"), title)
    columns = [(k, k) for k in payload["case_keys"]] + [
        ("provider", "provider"), ("time_ms", "eager ms"), ("graph_ms", "graph ms"), ("gbps", "GB/s"),
        ("pct_copy", "% copy"), ("graph_pct_copy", "graph % copy"), ("launches", "kernels"),
    ] + [(f"speedup_vs_{b}", f"× {b}") for b in spec.speedup_over]  # fmt: skip
    if device.type != "cuda":
        columns = [c for c in columns if c[0] not in ("graph_ms", "graph_pct_copy", "launches")]
    print(markdown_table(rows, columns))
    if payload["goals"]:
        print(markdown_table(payload["goals"], [(k, k) for k in ("goal", "case", "provider", "value", "met")]))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return payload
