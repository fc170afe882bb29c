"""What every benchmark shares: timing with medians, the run's environment, JSON and table output."""

from __future__ import annotations

import datetime as dt
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _time_once_ms(fn: Callable[[], object], device: torch.device) -> float:
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
            times[name].append(_time_once_ms(fn, device))
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
    ms = interleaved_medians({"copy": lambda: dst.copy_(src)}, device, warmup=3, reps=reps)["copy"]
    return 2 * nbytes / ms / 1e6


def keep_freed_memory_in_heap() -> str:
    """Make glibc keep freed blocks up to 32 MiB in the heap instead of unmapping them.

    By default glibc serves large tensors with mmap and returns them with munmap, so every call of a CPU op
    page-faults its freshly allocated output: measured here, 2-3x the op's own time for a 9.6 MB output
    when other large allocations run in between. Reusing freed memory is what jemalloc / tcmalloc (and on a
    GPU the caching allocator) do, so the timings show the op. Returns what was set, for the JSON.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default (no glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    return "glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB" if ok else "default (mallopt refused)"


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


def environment(device: torch.device, command: str) -> dict:
    """Device, versions and commit of this run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=RESULTS.parent
        ).stdout.strip()
        # bench/results/ does not count: a run that follows another finds that one's fresh output there.
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"]
        dirty = bool(subprocess.run(status, capture_output=True, text=True, cwd=RESULTS.parents[1]).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "commit": commit,
        "dirty_tree": dirty,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


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


def results_stem(device: torch.device, name: str) -> Path:
    """bench/results/<bench>-<device>-<date>, the stem of the JSON and PNG files of a run."""
    slug = "".join(c if c.isalnum() else "-" for c in device_name(device).lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return RESULTS / f"{name}-{slug[:48]}-{dt.date.today().isoformat()}"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
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
