"""rmix-compare: run methods x seeds under one protocol as rmix-train runs, then a table and plots.

    rmix-compare --out runs/cmp --method vanilla --method cutmix --method rmix-g2="--method rmix --grids 2" \\
        --seeds 0 1 2 --parallel 2 --threads 1 -- --dataset shapes --epochs 15

Each ``--method LABEL=ARGS`` names one arm of the comparison: ARGS (split like a shell line) are its own
rmix-train options; a bare ``--method NAME`` means ``NAME=--method NAME``. Everything after ``--`` is the
protocol every arm shares. Each (label, seed) is one subprocess

    rmix-train ARGS COMMON --seed K --out DIR/LABEL/seedK --no-progress

``--parallel`` of them at a time (``--threads`` sets their OMP_NUM_THREADS). Rerunning the same command
resumes a comparison: a run whose metrics.json is complete is skipped, a run with a checkpoint continues with
``rmix-train --resume``, a folder without one starts afresh (``--overwrite``). An existing run whose
options differ from what the command asks for stops the comparison before anything runs: the table would
otherwise mix protocols. ``--report-only`` aggregates what is there and lists what is missing.

Writes to DIR: ``comparison.json`` (the command, the arms, per run its final metrics and history, per label
mean ± sample std over seeds), ``comparison.md`` (the table, also printed), ``accuracy_vs_epoch.png`` and
``accuracy_vs_cost.png``; each run's console output goes to ``DIR/LABEL/seedK/rmix-train.out``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from rmix_fast.training.checkpoint import atomic_write_bytes, atomic_write_json, load_checkpoint
from rmix_fast.training.options import NOT_RUN_DEFINING, build_parser, config_value, parse_args
from rmix_fast.training.progress import format_duration
from rmix_fast.training.run_dir import CHECKPOINT, METRICS

__all__ = ["Spec", "cli", "main", "parse_spec"]

T = TypeVar("T")

REPORT_JSON = "comparison.json"
REPORT_MD = "comparison.md"
EPOCH_PLOT = "accuracy_vs_epoch.png"
COST_PLOT = "accuracy_vs_cost.png"
RUN_OUTPUT = "rmix-train.out"  # a run's stdout and stderr, appended on every attempt
REFERENCE = "vanilla"  # the label times are relative to when present (else the first label)
# rmix-compare sets these rmix-train options itself; an arm or the protocol giving one is an error rather
# than silently overridden (argparse's last-one-wins) or breaking the folder layout.
RESERVED = ("out", "seed", "resume", "overwrite")
# What a run of each (label, seed) has on disk.
COMPLETE, CHECKPOINTED, PARTIAL, ABSENT = "complete", "checkpoint", "partial", "absent"
# Per-run numbers the summary averages over seeds: key in the summary, where it comes from.
FINAL_METRICS = ("top1", "top5", "ece", "fgsm_error", "loc_gt_known")
# The table: summary key, column header, decimals.
COLUMNS = (
    ("top1", "top-1", 2),
    ("top5", "top-5", 2),
    ("ece", "ECE", 2),
    ("fgsm_error", "FGSM err", 2),
    ("loc_gt_known", "loc", 2),
    ("train_top1", "train top-1", 2),
    ("images_per_s", "img/s", 0),
    ("time_vs_reference", "time × {reference}", 2),
)


@dataclass(frozen=True)
class Spec:
    """One arm of the comparison: its label (the folder name) and its own rmix-train arguments."""

    label: str
    args: tuple[str, ...]


def parse_spec(text: str) -> Spec:
    """``LABEL=ARGS`` (ARGS split like a shell line) or a bare method name ``NAME`` (``NAME=--method NAME``).

    Raises:
        ValueError: an empty label or argument list, a label that is no plain folder name, unbalanced quotes.
    """
    label, sep, rest = text.partition("=")
    if not sep:
        rest = f"--method {label}"
    if not label.strip():
        raise ValueError(f"--method {text!r}: the label before '=' is empty")
    if label != label.strip() or label in (".", "..") or label.startswith(".") or any(c in label for c in "/\\\0"):
        raise ValueError(
            f"--method {text!r}: the label {label!r} names the run folder DIR/{label}/: it must be a plain folder name "
            "(no '/', '\\', leading '.', or surrounding spaces)"
        )
    try:
        args = tuple(shlex.split(rest))
    except ValueError as e:
        raise ValueError(f"--method {text!r}: cannot split its arguments: {e}") from None
    if not args:
        raise ValueError(f"--method {text!r}: no rmix-train arguments after '=' (write {label}=--method ...)")
    return Spec(label, args)


def _rmix_train_parse(parse: Callable[[], T]) -> T:
    """Run one of rmix-train's parsers; its usage error (printed, then SystemExit) becomes a ValueError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse()
    except SystemExit as e:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise ValueError(lines[-1].removeprefix("rmix-train: error: ") if lines else f"exit {e.code}") from None


def _given(argv: Sequence[str]) -> set[str]:
    """The rmix-train options ``argv`` sets (abbreviations resolved, as rmix-train would read them)."""
    return set(vars(_rmix_train_parse(lambda: build_parser(suppress=True).parse_args(list(argv)))))


def run_argv(spec: Spec, common: Sequence[str], seed: int, path: Path) -> list[str]:
    """The rmix-train arguments of one fresh run."""
    return [*spec.args, *common, "--seed", str(seed), "--out", str(path), "--no-progress"]


def expected_config(argv: Sequence[str]) -> dict[str, Any]:
    """The config rmix-train records for a fresh run with ``argv`` (defaults filled, options checked)."""
    # --overwrite: only so that parsing does not refuse an --out that already holds a checkpoint.
    args = _rmix_train_parse(lambda: parse_args([*argv, "--overwrite"]))
    return {k: config_value(v) for k, v in vars(args).items()}


def config_clashes(expected: dict[str, Any], found: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Run-defining options whose values differ: ``{name: (expected, found)}``. Options missing on either side
    (a run from an rmix-train that predates them) are not compared."""
    return {
        k: (v, found[k])
        for k, v in expected.items()
        if k not in NOT_RUN_DEFINING and k in found and config_value(found[k]) != v
    }


def _describe_clashes(clashes: dict[str, tuple[Any, Any]], other: str = "asked") -> str:
    return ", ".join(f"--{k.replace('_', '-')} {found!r} ({other}: {want!r})" for k, (want, found) in clashes.items())


# ----------------------------------------------------------------------------------------------- runs on disk
@dataclass
class RunState:
    """A (label, seed) folder as found: what it holds, its metrics.json (if readable) and its config."""

    path: Path
    state: str
    metrics: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    checkpoint_epochs: int | None = None  # epochs the checkpoint holds, when it was read

    @property
    def epochs_done(self) -> int:
        # The checkpoint is what --resume continues from; metrics.json, written after it, may lag by one
        # epoch when the run was killed between the two writes.
        if self.checkpoint_epochs is not None:
            return self.checkpoint_epochs
        return len(self.metrics["history"]) if self.metrics else 0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or not (yet) JSON: treated as no result
    return value if isinstance(value, dict) else None


def inspect_run(path: Path, read_config: bool = True) -> RunState:
    """What ``path`` holds: a complete run, a checkpoint to resume, a partial folder, or nothing."""
    metrics = _read_json(path / METRICS)
    if metrics is not None and metrics.get("complete") and metrics.get("final"):
        return RunState(path, COMPLETE, metrics, metrics.get("config"))
    if (path / CHECKPOINT).is_file():
        # metrics.json follows each checkpoint and holds the same config; a kill between the two writes
        # leaves it one epoch behind (or absent), so the checkpoint is read for its epoch and config.
        config = metrics.get("config") if metrics else None
        epochs = None
        if read_config:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                state = load_checkpoint(path / CHECKPOINT)
                epochs = int(state["epoch"]) + 1
                config = state.get("config", config)
        return RunState(path, CHECKPOINTED, metrics, config, epochs)
    return RunState(path, PARTIAL if path.exists() else ABSENT, metrics, None)


@dataclass
class Job:
    """One rmix-train subprocess to run."""

    label: str
    seed: int
    path: Path
    argv: list[str]
    action: str  # "start", "restart" or "resume", for the log

    @property
    def name(self) -> str:
        return f"{self.label} seed{self.seed}"


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    skipped: list[RunState] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)


def plan_runs(out: Path, specs: Sequence[Spec], seeds: Sequence[int], common: Sequence[str]) -> Plan:
    """The subprocesses that bring every (label, seed) to a complete run, and the runs to skip; a run on
    disk whose options differ from what its arm asks for is a clash instead.

    Raises:
        ValueError: an arm whose arguments rmix-train rejects.
    """
    plan = Plan()
    # Seed-major order: after the first len(specs) runs every arm has a result, so a comparison stopped
    # early still compares all of them.
    for seed in seeds:
        for spec in specs:
            path = out / spec.label / f"seed{seed}"
            argv = run_argv(spec, common, seed, path)
            try:
                expected = expected_config(argv)
            except ValueError as e:
                raise ValueError(f"--method {spec.label}: rmix-train rejects {shlex.join(argv)}: {e}") from None
            run = inspect_run(path)
            if run.config is not None and (clashes := config_clashes(expected, run.config)):
                plan.clashes.append(f"{path} was run with {_describe_clashes(clashes)}")
            elif run.state == COMPLETE:
                plan.skipped.append(run)
            elif run.state == CHECKPOINTED:
                resume = ["--resume", "--out", str(path), "--no-progress"]
                plan.jobs.append(Job(spec.label, seed, path, resume, f"resume after epoch {run.epochs_done}"))
            elif run.state == PARTIAL:
                plan.jobs.append(Job(spec.label, seed, path, [*argv, "--overwrite"], "restart"))
            else:
                plan.jobs.append(Job(spec.label, seed, path, argv, "start"))
    return plan


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def execute(jobs: Sequence[Job], parallel: int, threads: int | None) -> list[Job]:
    """Run ``jobs`` as rmix-train subprocesses, ``parallel`` at a time; returns the ones that failed.

    On an interrupt (Ctrl-C, or SIGTERM through ``cli``) the running subprocesses are terminated: their last
    checkpoint stays, and the same command continues them.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    pending = deque(jobs)
    running: list[tuple[Job, subprocess.Popen[bytes], IO[bytes], float]] = []
    failed: list[Job] = []
    total, started = len(jobs), 0
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.popleft()
                started += 1
                job.path.mkdir(parents=True, exist_ok=True)
                log = open(job.path / RUN_OUTPUT, "ab")  # closed when the process ends
                cmd = [sys.executable, "-m", "rmix_fast.train", *job.argv]
                log.write(f"\n=== rmix-compare: {shlex.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                running.append((job, proc, log, time.monotonic()))
                print(f"[{started}/{total}] {job.action:<7} {job.name}", flush=True)
            time.sleep(0.2)
            for entry in list(running):
                job, proc, log, start = entry
                if proc.poll() is None:
                    continue
                running.remove(entry)
                log.close()
                took = format_duration(time.monotonic() - start)
                run = inspect_run(job.path, read_config=False)
                if proc.returncode == 0 and run.state == COMPLETE:
                    top1 = run.metrics["final"].get("top1") if run.metrics else None
                    print(f"  done    {job.name} in {took}" + ("" if top1 is None else f": top-1 {top1:.2f}%"))
                else:
                    failed.append(job)
                    print(
                        f"  FAILED  {job.name} (exit {proc.returncode}) after {took}; end of {job.path / RUN_OUTPUT}:"
                    )
                    print("    " + _tail(job.path / RUN_OUTPUT).replace("\n", "\n    "), flush=True)
    finally:
        for _, proc, _, _ in running:  # only on an interrupt or an error of our own
            proc.terminate()
        for _, proc, log, _ in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    return failed


# ------------------------------------------------------------------------------------------------- the report
def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1) of the values that are not None; std is None below two
    values (no spread to estimate), mean is None without any."""
    xs = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "std": statistics.stdev(xs) if len(xs) > 1 else None,
        "n": len(xs),
    }


def _run_numbers(metrics: dict[str, Any]) -> dict[str, float | None]:
    """One run's numbers that the summary averages: final metrics, the last epoch's train top-1, and the
    mean over epochs of images/s and seconds per epoch."""
    final, history = metrics["final"], metrics.get("history") or []
    numbers: dict[str, float | None] = {k: final.get(k) for k in FINAL_METRICS}
    numbers["train_top1"] = history[-1].get("train_top1") if history else None
    for key, name in (("images_per_s", "images_per_s"), ("seconds", "seconds_per_epoch")):
        values = [row[key] for row in history if row.get(key) is not None]
        numbers[name] = statistics.fmean(values) if values else None
    return numbers


def _discover(out: Path) -> tuple[list[Spec], list[int]]:
    """The arms and seeds under ``out``, for --report-only without --method: the arms of the last report
    (comparison.json) in its order with their arguments, then any other folder holding seed<K>/ folders
    (sorted, arguments unknown); the seeds of every seed<K>/ folder found."""
    earlier = _read_json(out / REPORT_JSON) or {}
    specs = [Spec(s["label"], tuple(s.get("args") or ())) for s in earlier.get("specs") or []]
    known, seeds = {s.label for s in specs}, set()
    for folder in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        found = []
        for sub in folder.iterdir():
            with contextlib.suppress(ValueError):
                seed = int(sub.name.removeprefix("seed"))
                if sub.is_dir() and sub.name == f"seed{seed}":  # the exact name rmix-compare gives: not seed007
                    found.append(seed)
        seeds.update(found)
        if found and folder.name not in known:
            specs.append(Spec(folder.name, ()))
    return specs, sorted(seeds)


def _epoch_curve(runs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Test top-1 per epoch, mean and sample std over the runs that reached that epoch."""
    by_epoch: dict[int, list[float | None]] = {}
    for run in runs:
        for row in run["history"]:
            by_epoch.setdefault(int(row["epoch"]), []).append(row.get("test_top1"))
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return {"epoch": epochs, "mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats]}


def build_report(
    out: Path, specs: Sequence[Spec], seeds: Sequence[int], common: Sequence[str] | None, command: str
) -> dict[str, Any]:
    """Everything comparison.json holds, from the runs on disk. With ``common`` given (the arms and protocol
    are known) a run whose options differ from its arm's is reported in ``warnings``; runs of one label
    whose options differ from each other (beyond the seed) are too."""
    labels: dict[str, Any] = {}
    missing: list[dict[str, Any]] = []
    warnings: list[str] = []
    for spec in specs:
        runs, first_config, first_seed = [], None, None
        for seed in seeds:
            run = inspect_run(out / spec.label / f"seed{seed}", read_config=False)
            if run.state != COMPLETE:
                done = f", {run.epochs_done} epoch(s) done" if run.epochs_done else ""
                missing.append({"label": spec.label, "seed": seed, "state": run.state + done})
                continue
            config = run.config or {}
            if common is not None:
                with contextlib.suppress(ValueError):  # arguments rmix-train rejects cannot have made this run
                    expected = expected_config(run_argv(spec, common, seed, run.path))
                    if clashes := config_clashes(expected, config):
                        warnings.append(f"{run.path} was run with {_describe_clashes(clashes)}")
            without_seed = {k: v for k, v in config.items() if k != "seed"}
            if first_config is None:
                first_config, first_seed = without_seed, seed
            elif clashes := config_clashes(first_config, without_seed):
                warnings.append(f"{run.path} was run with {_describe_clashes(clashes, f'seed{first_seed}')}")
            final = {k: v for k, v in run.metrics["final"].items() if k != "calibration"}  # bins: in metrics.json
            runs.append(
                {
                    "seed": seed,
                    "path": str(run.path.relative_to(out)),
                    "final": final,
                    "history": run.metrics.get("history") or [],
                    "numbers": _run_numbers(run.metrics),
                }
            )
        summary = {
            key: mean_std([r["numbers"][key] for r in runs])
            for key in (*FINAL_METRICS, "train_top1", "images_per_s", "seconds_per_epoch")
        }
        labels[spec.label] = {
            "args": list(spec.args) or None,
            "seeds_done": len(runs),
            "seeds_asked": len(seeds),
            "runs": runs,
            "summary": summary,
            "test_top1_by_epoch": _epoch_curve(runs),
        }
    # The reference: "vanilla", else the first label; one with complete runs, as only those have times.
    timed = [label for label, e in labels.items() if e["seeds_done"]]
    reference = REFERENCE if REFERENCE in timed else (timed[0] if timed else None)
    # Time relative to the reference: each label's mean seconds per epoch over the reference's; the std is
    # the label's spread over seeds on the same scale (the reference's mean taken as exact).
    ref_seconds = labels[reference]["summary"]["seconds_per_epoch"]["mean"] if reference else None
    for entry in labels.values():
        seconds = entry["summary"]["seconds_per_epoch"]
        ok = ref_seconds and seconds["mean"] is not None
        entry["summary"]["time_vs_reference"] = {
            "mean": seconds["mean"] / ref_seconds if ok else None,
            "std": seconds["std"] / ref_seconds if ok and seconds["std"] is not None else None,
            "n": seconds["n"] if ok else 0,
        }
    return {
        "command": command,
        "out": str(out),
        "seeds": list(seeds),
        "common_args": None if common is None else list(common),
        "specs": [{"label": s.label, "args": list(s.args) or None} for s in specs],
        "reference": reference,
        "statistics": "mean and sample std (ddof=1) over the complete seeds; std null with one seed",
        "labels": labels,
        "missing": missing,
        "warnings": warnings,
    }


def _cell(stat: dict[str, Any], decimals: int) -> str:
    if stat["mean"] is None:
        return "–"
    std = "–" if stat["std"] is None else f"{stat['std']:.{decimals}f}"
    return f"{stat['mean']:.{decimals}f} ± {std}"


def markdown(report: dict[str, Any]) -> str:
    """comparison.md: the protocol, the table (mean ± std over seeds), missing runs and warnings."""
    reference = report["reference"] or "reference"
    headers = ["label", "seeds", *(title.format(reference=reference) for _, title, _ in COLUMNS)]
    rows = []
    for label, entry in report["labels"].items():
        seeds = f"{entry['seeds_done']}/{entry['seeds_asked']}"
        rows.append([label, seeds, *(_cell(entry["summary"][key], d) for key, _, d in COLUMNS)])
    common = report["common_args"]
    lines = [
        f"# rmix-compare: {report['out']}",
        "",
        f"Protocol (every arm): `{shlex.join(common) if common else '(rmix-train defaults)'}`"
        if common is not None
        else "Protocol: not given (--report-only without --method)",
        f"Seeds: {' '.join(map(str, report['seeds'])) or '–'}. Cells: mean ± sample std over the complete seeds "
        f"(– for one seed); accuracies, ECE and errors in %, loc = localisation GT-known, train top-1 = last "
        f"epoch's, img/s = mean over epochs, time = seconds per epoch as a multiple of {reference}'s.",
        "",
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    args = [(label, e["args"]) for label, e in report["labels"].items() if e["args"]]
    if args:
        lines += ["", "Arms: " + "; ".join(f"{label} = `{shlex.join(a)}`" for label, a in args) + "."]
    if report["missing"]:
        lines += [
            "",
            "Missing runs: " + ", ".join(f"{m['label']} seed{m['seed']} ({m['state']})" for m in report["missing"]),
        ]
    if report["warnings"]:
        lines += ["", "Warnings:", *(f"- {w}" for w in report["warnings"])]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> list[Path]:
    from rmix_fast.training.plots import plot_accuracy_vs_cost, plot_accuracy_vs_epoch

    labels = report["labels"]
    points = {
        label: {
            "time": e["summary"]["time_vs_reference"]["mean"],
            "time_std": e["summary"]["time_vs_reference"]["std"],
            "top1": e["summary"]["top1"]["mean"],
            "top1_std": e["summary"]["top1"]["std"],
        }
        for label, e in labels.items()
    }
    return [
        atomic_write_json(out / REPORT_JSON, report),
        atomic_write_bytes(out / REPORT_MD, markdown(report).encode()),
        plot_accuracy_vs_epoch({label: e["test_top1_by_epoch"] for label, e in labels.items()}, out / EPOCH_PLOT),
        plot_accuracy_vs_cost(points, out / COST_PLOT, report["reference"]),
    ]


# -------------------------------------------------------------------------------------------------- the command
def build_parser_compare() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rmix-compare",
        usage="rmix-compare --out DIR --method LABEL[=RMIX_TRAIN_ARGS] [--method ...] [--seeds K ...] "
        "[--parallel N] [--threads T] [--report-only] [-- COMMON_RMIX_TRAIN_ARGS]",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder of the comparison: DIR/LABEL/seedK/ per run, and the report")  # fmt: skip
    p.add_argument("--method", action="append", default=[], metavar="LABEL[=ARGS]", help="one arm: a label "
                   "(its folder) and its own rmix-train arguments, quoted as one word; a bare NAME means "
                   "NAME='--method NAME'; repeat for each arm")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="K",
                   help="seeds of every arm (default: 0; with --report-only: the seed<K> folders found)")  # fmt: skip
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="runs at a time (default: 1); times "
                   "compare fairly only when the runs do not compete for cores or the GPU")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="OMP_NUM_THREADS of each run (default: inherited)")  # fmt: skip
    p.add_argument("--report-only", action="store_true", help="run nothing: aggregate the complete runs in DIR "
                   "and list the missing ones (without --method: every DIR/LABEL/seedK/ found)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is rmix-train's, never rmix-compare's (argparse would take "--out" in
    # there for its own).
    own, common = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None)
    parser = build_parser_compare()
    args = parser.parse_args(own)
    if args.parallel < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--parallel and --threads must be >= 1")
    if not args.method and not args.report_only:
        parser.error("give at least one --method LABEL[=ARGS]")
    try:
        specs = [parse_spec(text) for text in args.method]
        labels = [s.label for s in specs]
        if dupes := sorted({label for label in labels if labels.count(label) > 1}):
            raise ValueError(f"--method labels must differ (each is a folder): {', '.join(dupes)} given twice")
        for where, words in [*((f"--method {s.label}", s.args) for s in specs), ("the arguments after --", common)]:
            try:
                given = _given(words or [])
            except ValueError as e:
                raise ValueError(f"{where}: rmix-train rejects {shlex.join(words or [])}: {e}") from None
            if taken := sorted(given & set(RESERVED)):
                raise ValueError(
                    f"{where} sets {', '.join('--' + t for t in taken)}: rmix-compare sets --out, --seed, "
                    "--resume and --overwrite of each run itself (seeds: --seeds)"
                )
    except ValueError as e:
        parser.error(str(e))
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must differ, got {args.seeds}")
    out = Path(args.out)
    command = shlex.join(["rmix-compare", *argv])

    if args.report_only:
        if not out.is_dir():
            parser.error(f"--report-only: {out} is no folder")
        if specs:
            seeds = args.seeds if args.seeds is not None else _discover(out)[1]
        else:
            specs, found = _discover(out)
            seeds = args.seeds if args.seeds is not None else found
            if not specs:
                print(f"rmix-compare: no runs (DIR/LABEL/seedK/ folders) in {out}", file=sys.stderr)
                return 1
        # Without --method the arms' arguments are unknown, so runs are not checked against them.
        report = build_report(out, specs, seeds, (common or []) if args.method else None, command)
        failed: list[Job] = []
    else:
        seeds = args.seeds if args.seeds is not None else [0]
        try:
            plan = plan_runs(out, specs, seeds, common or [])
        except ValueError as e:
            parser.error(str(e))
        if plan.clashes:
            listed = "\n  ".join(plan.clashes)
            print(
                f"rmix-compare: runs in {out} differ from what this command asks for:\n  {listed}\n"
                "Remove those folders (or use another --out) to run them again under this protocol.",
                file=sys.stderr,
            )
            return 2
        print(
            f"rmix-compare: {len(specs)} arm(s) x {len(seeds)} seed(s) in {out}: {len(plan.skipped)} complete, "
            f"{len(plan.jobs)} to run, {args.parallel} at a time",
            flush=True,
        )
        out.mkdir(parents=True, exist_ok=True)
        failed = execute(plan.jobs, args.parallel, args.threads)
        report = build_report(out, specs, seeds, common or [], command)

    written = write_report(out, report)
    print()
    print(markdown(report), end="")
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    if failed:
        print(f"rmix-compare: {len(failed)} run(s) failed: {', '.join(j.name for j in failed)}", file=sys.stderr)
        return 1
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C: running subprocesses are stopped


def cli() -> None:
    """The ``rmix-compare`` command: ``main()``; SIGTERM stops the running rmix-train processes too."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = main()
    except KeyboardInterrupt:
        print("rmix-compare: interrupted; the same command continues from the runs' checkpoints", file=sys.stderr)
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    cli()
