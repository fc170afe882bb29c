"""Benchmark of a whole training step: what R-Mix costs on top of vanilla training, the paper's way and
``rmix_fast``'s way, side by side in one run, plus the half-resolution saliency option's mask agreement.

    python bench/bench_step.py --device cuda     # ResNet-50 @ 224 (B=128, bf16, channels_last), PreActResNet-18 @ 32
    python bench/bench_step.py --device cpu      # small shapes on the CPU

Methods, each one optimizer step on a random batch (SGD with momentum, soft-target cross-entropy):

* ``vanilla``: forward, backward, step;
* ``cutmix``: ``rmix_fast.CutMix`` then the step (the cost R-Mix is meant to match, apart from saliency);
* ``paper``: R-Mix as the paper's code does it: a full ``loss.backward()`` for the saliency (weight
  gradients included, then zeroed), the one-op-per-formula mixing of ``baselines/rmix_paper.py``, then the step;
* ``rmix_fast``: ``rmix_fast.input_gradient`` (gradient w.r.t. the input only) and ``rmix_fast.RMix``;
* ``rmix_fast_half``: the same with ``input_gradient(..., resolution=0.5)``.

Each is reported as time per step and as a ratio to vanilla measured in the same run (methods take turns,
one step each per round). On a GPU the peak memory of a step is recorded too. Beside the timings it runs
``studies/mask_agreement.py`` (``--agreement``). Writes bench/results/step-<device>-<date>.json and .png.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from baselines.rmix_paper import paper_input_gradient, paper_rmix
from studies import mask_agreement

from rmix_fast import CutMix, RMix, SoftTargetCrossEntropy, input_gradient, soft_targets
from rmix_fast.sampling import sample_rmix_params
from rmix_fast.training.models import build_model

METHODS = ("vanilla", "cutmix", "paper", "rmix_fast", "rmix_fast_half")
# The goals for rmix_fast on a GPU, as ratios to vanilla.
GOALS = {"rmix_fast": 1.6, "rmix_fast_half": 1.25}


@dataclass(frozen=True)
class StepCase:
    model: str
    image_size: int
    batch: int
    amp: str  # "none" or "bf16"
    layout: str  # "contiguous" or "channels_last"
    num_classes: int

    @classmethod
    def parse(cls, text: str) -> StepCase:
        """``model:image_size:batch:amp:layout[:classes]``, e.g. ``resnet50:224:128:bf16:channels_last``."""
        parts = text.split(":")
        if len(parts) not in (5, 6):
            raise argparse.ArgumentTypeError(f"a case is model:image_size:batch:amp:layout[:classes], got {text!r}")
        model, size, batch, amp, layout = parts[:5]
        if amp not in ("none", "bf16") or layout not in ("contiguous", "channels_last"):
            raise argparse.ArgumentTypeError(f"amp must be none|bf16 and layout contiguous|channels_last: {text!r}")
        classes = int(parts[5]) if len(parts) == 6 else (1000 if int(size) >= 128 else 100)
        return cls(model, int(size), int(batch), amp, layout, classes)

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.image_size}, B={self.batch}, {self.amp}, {self.layout}"


DEFAULT_CASES = {
    "cuda": ["resnet50:224:128:bf16:channels_last", "preactresnet18:32:100:none:contiguous"],
    "cpu": ["preactresnet18:32:32:none:contiguous", "resnet50:64:8:none:channels_last"],
}
# Brief training on shapes; on the CPU a small network, which learns shapes within a minute there.
DEFAULT_AGREEMENT = {"cuda": ["preactresnet18:32", "resnet50:224"], "cpu": ["small_cnn:32"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = common.base_parser(__doc__, "step", "default: 20 on a GPU, 5 on the CPU")
    ap.add_argument("--cases", nargs="+", type=StepCase.parse, help="model:image_size:batch:amp:layout[:classes]")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--agreement", nargs="*", metavar="MODEL:SIZE",
                    help="half-resolution mask agreement on these models (none: skip; default per device)")  # fmt: skip
    ap.add_argument("--agreement-steps", type=int, help="brief training steps (default 400 on a GPU, 600 on the CPU)")
    ap.add_argument("--agreement-images", type=int, nargs=2, default=[3000, 512], metavar=("TRAIN", "TEST"))
    args = ap.parse_args(argv)
    gpu = args.device == "cuda"
    args.cases = args.cases or [StepCase.parse(c) for c in DEFAULT_CASES[args.device]]
    args.reps = args.reps or (20 if gpu else 5)
    args.agreement = DEFAULT_AGREEMENT[args.device] if args.agreement is None else args.agreement
    args.agreement_steps = args.agreement_steps or (400 if gpu else 600)
    if "vanilla" not in args.methods:
        ap.error("--methods must include vanilla: every ratio is to vanilla")
    return args


class StepRunner:
    """One model, optimizer and random batch; ``step(method)`` runs one training step of that method."""

    def __init__(self, case: StepCase, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format
        self.case, self.device = case, device
        self.model = build_model(case.model, case.num_classes).to(device=device, memory_format=fmt)
        # A tiny learning rate: the cost of a step does not depend on it, and the weights stay finite.
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(seed)
        shape = (case.batch, 3, case.image_size, case.image_size)
        self.x = torch.randn(shape, generator=g).to(device).contiguous(memory_format=fmt)
        self.y = torch.randint(case.num_classes, (case.batch,), generator=g).to(device)
        self.loss = SoftTargetCrossEntropy()
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.rmix = RMix(case.num_classes, generator=self.gen)
        self.cutmix = CutMix(case.num_classes, generator=self.gen)
        self.autocast: Callable[[], object] = (
            partial(torch.autocast, device.type, dtype=torch.bfloat16) if case.amp == "bf16" else nullcontext
        )

    def _train_on(self, x: torch.Tensor, y_soft: torch.Tensor) -> None:
        with self.autocast():
            loss = self.loss(self.model(x), y_soft)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def step(self, method: str) -> None:
        x, y, K = self.x, self.y, self.case.num_classes
        if method == "vanilla":
            self._train_on(x, soft_targets(y, K))
        elif method == "cutmix":
            self._train_on(*self.cutmix(x, y))
        elif method == "paper":
            grad = paper_input_gradient(self.model, x, y, F.cross_entropy, self.opt, self.autocast)
            p = sample_rmix_params(x.shape[0], generator=self.gen, device=x.device)
            mixed, lam_eff = paper_rmix(x, grad, p.perm, p.lam, p.q, p.grid)
            t = soft_targets(y, K)
            self._train_on(mixed, torch.lerp(t[p.perm], t, lam_eff.unsqueeze(1)))
        elif method in ("rmix_fast", "rmix_fast_half"):
            with self.autocast():
                grad = input_gradient(self.model, x, y, resolution=0.5 if method == "rmix_fast_half" else 1.0)
            self._train_on(*self.rmix(x, y, grad))
        else:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    def peak_memory_mb(self, method: str) -> float | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step(method)
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def time_case(case: StepCase, methods: list[str], device: torch.device, reps: int, warmup: int) -> list[dict]:
    runner = StepRunner(case, device)
    calls = {m: partial(runner.step, m) for m in methods}
    ms = common.interleaved_medians(calls, device, warmup=warmup, reps=reps)
    rows = []
    for m in methods:
        ratio = ms[m] / ms["vanilla"]
        rows.append({**asdict(case), "case": case.label, "method": m, "time_ms": ms[m], "ratio_to_vanilla": ratio,
                     "images_per_s": case.batch / ms[m] * 1e3, "peak_memory_mb": runner.peak_memory_mb(m),
                     "goal_ratio": GOALS.get(m), "goal_met": ratio <= GOALS[m] if m in GOALS else None})  # fmt: skip
    del runner
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    plt = common.pyplot()
    cases = list(dict.fromkeys(r["case"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(7, 3.5 * len(cases)), 4.5))
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        by_case = {r["case"]: r for r in rows if r["method"] == m}
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(cases))]
        vals = [by_case[c]["ratio_to_vanilla"] if c in by_case else 0 for c in cases]
        bars = ax.bar(xs, vals, width, label=m)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    for goal, style in zip(GOALS.values(), ("--", ":"), strict=True):
        ax.axhline(goal, color="grey", linestyle=style, linewidth=0.8)
    ax.set_ylabel("time per step / vanilla (same run)")
    ax.set_xticks(range(len(cases)), cases, fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device, env = common.start_run("bench_step.py", args.device, args.threads, argv)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"# {env['device_name']} | torch {env['torch']} | triton {env['triton']}", flush=True)

    rows = []
    for case in args.cases:
        case_rows = time_case(case, args.methods, device, args.reps, args.warmup)
        rows += case_rows
        print(" | ".join(f"{r['method']} {r['time_ms']:.1f} ms ({r['ratio_to_vanilla']:.2f}x)" for r in case_rows),
              f"<- {case.label}", flush=True)  # fmt: skip

    agreement = []
    for spec in args.agreement:
        name, size = spec.split(":")
        train_n, test_n = args.agreement_images
        r = mask_agreement.measure(name, int(size), device, steps=args.agreement_steps, batch=64,
                                   train_images=train_n, test_images=test_n)  # fmt: skip
        agreement.append(r)
        print(f"half-resolution mask agreement, {name} @ {size} (test accuracy {r['test_accuracy']:.1f} %): "
              f"{100 * r['agreement']:.1f} % of cells (another image's mask: {100 * r['other_image']:.1f} %; "
              f"full resolution, batch regrouped: {100 * r['regrouped_batch']:.1f} %)", flush=True)  # fmt: skip

    stem = args.out or common.results_stem(device, "step")
    payload = {**env, "reps": args.reps, "warmup": args.warmup, "cases": rows, "mask_agreement": agreement}
    common.write_json(stem.with_suffix(".json"), payload)
    plot(rows, stem.with_suffix(".png"), f"training step: {env['device_name']}, torch {env['torch']}")
    columns = [("case", "case"), ("method", "method"), ("time_ms", "ms / step"), ("ratio_to_vanilla", "× vanilla"),
               ("images_per_s", "images/s"), ("peak_memory_mb", "peak MiB"), ("goal_met", "goal met")]  # fmt: skip
    if device.type != "cuda":
        columns = [c for c in columns if c[0] not in ("peak_memory_mb", "goal_met")]
    print(common.markdown_table(rows, columns))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    main()
