"""The demo: what rmix_fast does and what can honestly be said of it in a few minutes on a CPU.

    python -m rmix_fast.training.demo --out demo

Three parts, one table each:

1. **Speed**: the mixing op (``rmix_fast.rmix``) against R-Mix written the paper's way, timed side by side
   in this run on this machine (``bench/bench_rmix.py`` has the full benchmark).
2. **A short training run** of each method (vanilla, Mixup, CutMix as published with p = 0.5, R-Mix; RL-Mix
   with ``--methods ... rlmix``) with the same model (small_cnn), data, seed and schedule. The budget is a
   few hundred SGD steps, far below the paper's (about 150,000): the table shows that the pipeline runs and
   where each method stands at this budget, not which method is better; ``bench/README.md`` has the
   comparison at longer budgets.
3. **Label evidence**: on the embedded ``shapes`` data every object's mask is known, so for each method
   the demo measures how far the label weights are from the share of each object that stays visible in
   the mixed image (``rmix_fast.training.evidence``), R-Mix with an untrained model's saliency, with the
   model it just trained, and with the true object masks: what saliency buys, in seconds.

Writes, per method, ``<out>/<method>/`` (metrics.json, train.log, curves.png, reliability.png,
mixed_samples.png, checkpoint.pt), and ``<out>/comparison.png`` and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from rmix_fast.training import train
from rmix_fast.training.checkpoint import atomic_write_json
from rmix_fast.training.methods import METHODS

__all__ = ["main"]

DEFAULT_METHODS = ("vanilla", "mixup", "cutmix", "rmix")
# The methods as their papers' baselines run them: CutMix mixes a batch with probability 0.5.
PUBLISHED_OPTIONS = {"cutmix": ["--mix-prob", "0.5"]}


def method_options(method: str, steps_per_epoch: int) -> list[str]:
    """A method's options as published; RL-Mix's rollout is two epochs in minibatches of a quarter of it, as
    the authors' 1000 / 250 steps at 500 steps an epoch (their 1000 would never update in a short run)."""
    if method == "rlmix":
        rollout = max(2, 2 * steps_per_epoch)
        return ["--agent-steps", str(rollout), "--agent-minibatch", str(max(1, rollout // 4))]
    return PUBLISHED_OPTIONS.get(method, [])


COLUMNS = (
    ("top1", "top-1 %"),
    ("ece", "ECE %"),
    ("fgsm_error", "FGSM err %"),
    ("loc_gt_known", "loc %"),
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rmix_fast.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo", help="output folder (default: %(default)s)")
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(DEFAULT_METHODS), help="methods to run")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per method (default: %(default)s)")
    p.add_argument("--train-size", type=int, default=TRAIN_SIZE, help="training images (default: %(default)s)")
    p.add_argument("--test-size", type=int, default=TEST_SIZE, help="test images (default: %(default)s)")
    p.add_argument("--lr", type=float, default=LR, help="OneCycleLR max LR (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed shared by every method (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    args = p.parse_args(argv)
    for name in ("epochs", "train_size", "test_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


# The budget: the four default methods train in about three minutes on 2 CPU cores. A shorter schedule
# than the paper's wants a lower peak LR than its 0.3 (measured: 0.3 barely leaves chance in 5 epochs).
EPOCHS = 6
TRAIN_SIZE = 4000
TEST_SIZE = 1000
LR = 0.1
EVIDENCE_BATCHES = 10


def _row(name: str, values: Sequence[str], widths: Sequence[int]) -> str:
    return f"{name:<10}" + "".join(f"{v:>{w + 2}}" for v, w in zip(values, widths, strict=True))


def _speed_section(args: argparse.Namespace) -> list[dict]:
    from rmix_fast.training.op_speed import op_speed

    rows = op_speed(device=args.device or ("cuda" if _cuda() else "cpu"))
    print("\n1. Speed of the mixing op: rmix_fast vs R-Mix written the paper's way (median of 10, this run)")
    print(f"{'images':<14}{'backend':>9}{'rmix_fast ms':>14}{'paper ms':>10}{'speed-up':>10}")
    for r in rows:
        print(f"{r['shape']:<14}{r['backend']:>9}{r['rmix_fast_ms']:>14.2f}{r['paper_ms']:>10.1f}{r['speedup']:>9.0f}x")
    return rows


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _train_section(args: argparse.Namespace, out: Path) -> tuple[dict[str, dict], dict[str, float]]:
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    steps = args.epochs * (args.train_size // 100)
    print(f"\n2. A short training run: {args.epochs} epochs x {args.train_size} shapes images ({steps} SGD steps; "
          "the paper trains about 150,000)")  # fmt: skip
    for method in args.methods:
        start = time.perf_counter()
        run_args = [
            "--dataset", "shapes", "--model", "small_cnn", "--method", method,
            *method_options(method, args.train_size // 100),
            "--epochs", str(args.epochs), "--train-size", str(args.train_size), "--test-size", str(args.test_size),
            "--seed", str(args.seed), "--lr", str(args.lr),
            "--out", str(out / method), "--overwrite", "--progress" if args.progress else "--no-progress",
        ]  # fmt: skip
        if args.device:
            run_args += ["--device", args.device]
        # the run's log is in <out>/<method>/train.log; here one line per method
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            train.main(run_args)
        seconds[method] = time.perf_counter() - start
        results[method] = json.loads((out / method / "metrics.json").read_text())["final"]
        print(f"  trained {method:<8} in {seconds[method]:3.0f} s (log: {out / method / 'train.log'})", flush=True)
    headers = [h for _, h in COLUMNS] + ["train s"]
    widths = [len(h) for h in headers]
    print(_row("method", headers, widths))
    for method, r in results.items():
        cells = [("-" if r.get(k) is None else f"{r[k]:.2f}") for k, _ in COLUMNS] + [f"{seconds[method]:.0f}"]
        print(_row(method, cells, widths))
    print(
        "A budget this short shows that training runs end to end, not which method is better (chance is 10 %).\n"
        "Three seeds at longer budgets, and whether the paper's ordering holds there: bench/README.md,\n"
        "'Methods compared on shapes'."
    )
    return results, seconds


def _evidence_section(args: argparse.Namespace, out: Path) -> None:
    from rmix_fast.training import evidence

    print("\n3. Label evidence: do the label weights match what each mixed image shows?")
    argv = ["--methods", "mixup", "cutmix", "rmix", "rmix-oracle", "--batches", str(EVIDENCE_BATCHES),
            "--out", str(out / "evidence.json")]  # fmt: skip
    if "rmix" in args.methods:
        argv += ["--checkpoint", str(out / "rmix")]
    if args.device:
        argv += ["--device", args.device]
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        evidence.main(argv)
    results = json.loads((out / "evidence.json").read_text())["results"]
    evidence.print_table(results)
    print(
        "mismatch: mean |own label weight - own share of the visible object evidence| (0: labels say what the\n"
        "image shows). rmix: saliency of an untrained model; rmix-checkpoint: of the model trained above;\n"
        "rmix-oracle: the true object masks as saliency. CutMix mixes every batch here (p = 1)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    out = Path(args.out)
    speed = _speed_section(args)
    results, seconds = _train_section(args, out)
    _evidence_section(args, out)

    from rmix_fast.training.plots import plot_comparison

    plot_comparison(results, out / "comparison.png")
    atomic_write_json(
        out / "results.json",
        {"config": vars(args), "speed": speed, "seconds": seconds,
         "results": {m: {k: v for k, v in r.items() if k != "calibration"} for m, r in results.items()}},
    )  # fmt: skip
    print(f"\nwrote {out / 'comparison.png'}, {out / 'results.json'}, and per method {out}/<method>/ "
          "(mixed_samples.png: the first mixed batch; curves, reliability diagram, log)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
