"""Benchmark of a whole training step: what R-Mix costs on top of vanilla training, the paper's way and
``rmix_fast``'s way, and what RL-Mix costs on top of R-Mix, side by side in one run, plus the half-resolution
saliency option's mask agreement.

    python bench/bench_step.py --device cuda     # ResNet-50 @ 224 (B=128, bf16, channels_last), PreActResNet-18 @ 32
    python bench/bench_step.py --device cpu      # small shapes on the CPU

Methods, each one optimizer step on a random batch (SGD with momentum, soft-target cross-entropy):

* ``vanilla``: forward, backward, step;
* ``cutmix``: ``rmix_fast.CutMix`` then the step (the cost R-Mix is meant to match, apart from saliency);
* ``paper``: R-Mix as the paper's code does it: a full ``loss.backward()`` for the saliency (weight
  gradients included, then zeroed), the one-op-per-formula mixing of ``baselines/rmix_paper.py``, then the step;
* ``rmix_fast``: ``rmix_fast.input_gradient`` (gradient w.r.t. the input only) and ``rmix_fast.RMix``;
* ``rmix_fast_half``: the same with ``input_gradient(..., resolution=0.5)``;
* ``rmix_amortised``: ``rmix_fast.AmortisedRMix`` as ``rmix-train --saliency-source amortised`` runs it, in its
  steady state (every sample of the batch stored, as from the second epoch on: a step before timing stores
  them): no saliency pass, the mix from the stored maps, the batch requiring grad so that the training backward
  also computes d loss / d x, and ``after_backward()`` storing the maps. Its goal: at most 1.1x vanilla;
* ``rlmix``: RL-Mix's step as rmix-train runs it: ``input_gradient(..., return_logits=True)``,
  ``rmix_fast.mixers.RLMix`` (the agent observes the batch and picks each sample's level), the step, with
  ``mixer.after_backward()`` (the reward, from the gradient the loss sends to the mixed images) between the
  backward and the optimizer step; rmix-train's default policy (``sample``);
* ``sage``: SAGE's step as its code and ``rmix-train --method sage`` run it: the clean batch's loss times
  0.3 runs a full backward (its weight gradients are kept: ``clean_loss_backward``) and gives the saliency,
  ``rmix_fast.SAGE`` mixes (39 candidate shifts at 32 px, 1998 at 224 px), the mixed loss times 0.7 adds its
  gradients, one optimizer step. Its goal: at most 2.1x vanilla (the clean pass's full backward is part of it).
* ``adautomix``: AdAutoMix's step as ``rmix-train --method adautomix`` runs it (``AdAutoMix.training_loss``:
  the teacher on the clean batch for the generator's features, the generator twice, two fused blends, the
  teacher on the generator's mix and on each source, the classifier on the clean batch, the linear mix and
  the generated mix; one backward; the classifier's step, the generator's and the one-hot head's step, the
  ``_foreach`` EMA). The published CIFAR configuration below 128 px (3 sources), the ImageNet one from 128 px
  (2 sources, lam channel, BatchNorm in the generator). Its goal: at most 4x vanilla (the published step costs
  about 5x vanilla in FLOPs).
* ``adautomix_reuse``: the same with ``reuse_teacher_logits=True`` (the cosine term from the teacher's pass
  over the clean batch, permuted: N teacher passes fewer).

Each is reported as time per step and as a ratio to vanilla measured in the same run (methods take turns,
one step each per round), and RL-Mix also as a ratio to ``rmix_fast`` (R-Mix): the paper's RL-Mix step took
twice its R-Mix step; the goal here is at most 1.1x. On a GPU the peak memory of a step is recorded too.

RL-Mix's PPO update runs once per rollout of ``--rl-steps`` steps (default: the authors' 1000 steps in
minibatches of 250, 10 epochs), far more steps than a benchmark times, and a median would drop the one
step in a thousand that runs it anyway. So its cost is amortised at that real frequency: RL-Mix's time per
step is the median of its steps (a rollout that never fills while they are timed, so none of them updates)
plus the median time of one update divided by ``--rl-steps``. The update is timed on its own agent, on a
rollout of ``--rl-steps`` steps recorded through the agent's own ``act`` / ``record`` from the benchmark
batch's observation (the update's cost depends on the rollout's shapes and the settings, not on its
values), ``--rl-update-reps`` times after a warm-up on a GPU. Both parts are in the JSON (``rl_step_ms``,
``rl_update_ms``). A smaller ``--rl-steps`` with the same steps / minibatch ratio costs about the same per
step, the quick way on the CPU: an update's work grows with its rollout, and only its fixed costs per
minibatch (40 minibatches at the defaults) are spread over fewer steps, so a small rollout overstates the
cost slightly (on a 2-core CPU at B=32: 26 ms of update per step at 100 / 25, 20 ms at 1000 / 250).

Beside the timings it runs ``studies/mask_agreement.py`` (``--agreement``). Writes
bench/results/step-<device>-<date>.json and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
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

from rmix_fast import (
    SAGE,
    AmortisedRMix,
    CutMix,
    RMix,
    SoftTargetCrossEntropy,
    clean_loss_backward,
    input_gradient,
    soft_targets,
)
from rmix_fast.mixers import AdAutoMix, RLMix
from rmix_fast.rl import PPOConfig, observe
from rmix_fast.sampling import sample_rmix_params
from rmix_fast.training.models import build_model

METHODS = ("vanilla", "cutmix", "paper", "rmix_fast", "rmix_fast_half", "rmix_amortised", "rlmix", "sage", "adautomix",
           "adautomix_reuse")  # fmt: skip
# The goals on a GPU: method -> (the method its time is a ratio to, the ratio). R-Mix's are the issue's, to
# vanilla; RL-Mix's is to R-Mix (the paper's RL-Mix step cost 2x its R-Mix step).
GOALS = {
    "rmix_fast": ("vanilla", 1.6),
    "rmix_fast_half": ("vanilla", 1.25),
    "rmix_amortised": ("vanilla", 1.1),
    "rlmix": ("rmix_fast", 1.1),
    "sage": ("vanilla", 2.1),
    "adautomix": ("vanilla", 4.0),
    "adautomix_reuse": ("vanilla", 4.0),
}


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
    defaults = PPOConfig()
    ap.add_argument("--rl-steps", type=common.positive_int, default=defaults.n_steps,
                    help="RL-Mix: steps per PPO rollout, i.e. per update (default: the authors' 1000)")  # fmt: skip
    ap.add_argument("--rl-minibatch", type=common.positive_int, default=defaults.minibatch,
                    help="RL-Mix: steps per PPO minibatch (default: the authors' 250)")  # fmt: skip
    ap.add_argument("--rl-update-reps", type=common.positive_int,
                    help="RL-Mix: timed PPO updates (median; default 3 on a GPU, 1 on the CPU)")  # fmt: skip
    args = ap.parse_args(argv)
    gpu = args.device == "cuda"
    args.cases = args.cases or [StepCase.parse(c) for c in DEFAULT_CASES[args.device]]
    args.reps = args.reps or (20 if gpu else 5)
    args.rl_update_reps = args.rl_update_reps or (3 if gpu else 1)
    try:
        args.ppo = PPOConfig(n_steps=args.rl_steps, minibatch=args.rl_minibatch)
    except ValueError as e:
        ap.error(f"--rl-steps / --rl-minibatch: {e}")
    args.agreement = DEFAULT_AGREEMENT[args.device] if args.agreement is None else args.agreement
    args.agreement_steps = args.agreement_steps or (400 if gpu else 600)
    if "vanilla" not in args.methods:
        ap.error("--methods must include vanilla: every ratio is to vanilla")
    return args


class StepRunner:
    """One model, optimizer and random batch; ``step(method)`` runs one training step of that method.

    ``rl_steps_timed``: how many RL-Mix steps will be run; its rollout is made at least that long, so that
    no timed step runs an update (``time_rl_update`` times that on its own)."""

    def __init__(
        self,
        case: StepCase,
        device: torch.device,
        seed: int = 0,
        *,
        ppo: PPOConfig | None = None,
        rl_steps_timed: int = 0,
    ) -> None:
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
        self.ppo = ppo or PPOConfig()
        rollout = dataclasses.replace(self.ppo, n_steps=max(self.ppo.n_steps, rl_steps_timed))
        self.rlmix = RLMix(case.num_classes, generator=self.gen, ppo=rollout).to(device)
        self.sage = SAGE(case.num_classes, generator=self.gen)
        # a store for the batch's samples, filled lazily by the first amortised step (the only one that runs the
        # pass): time_case runs it once before timing
        self.indices = torch.arange(case.batch)
        self.amortised = AmortisedRMix(case.num_classes, generator=self.gen, num_samples=case.batch).to(device)
        self.adautomix = {m: self._adautomix(reuse=m.endswith("_reuse")) for m in ("adautomix", "adautomix_reuse")}
        self.autocast: Callable[[], object] = (
            partial(torch.autocast, device.type, dtype=torch.bfloat16) if case.amp == "bf16" else nullcontext
        )

    def _adautomix(self, *, reuse: bool) -> AdAutoMix:
        """The published CIFAR configuration for small images, the ImageNet ResNet-50 one from 128 px."""
        imagenet = self.case.image_size >= 128
        mixer = AdAutoMix(
            self.case.num_classes, n_sources=2 if imagenet else 3, beta=0.1 if imagenet else 0.3,
            lam_concat=imagenet, norm="bn" if imagenet else None, reuse_teacher_logits=reuse, lr=1e-4,
            generator=self.gen,
        )  # fmt: skip
        mixer.attach(self.model, (3, self.case.image_size, self.case.image_size))
        mixer.set_total_steps(10**6)
        return mixer

    def _train_on(
        self,
        x: torch.Tensor,
        y_soft: torch.Tensor,
        after_backward: Callable[[], None] | None = None,
        *,
        weight: float = 1.0,
        keep_grads: bool = False,
    ) -> None:
        with self.autocast():
            loss = self.loss(self.model(x), y_soft)
        if not keep_grads:  # SAGE keeps the clean pass's weight gradients for this step
            self.opt.zero_grad(set_to_none=True)
        (loss * weight if weight != 1 else loss).backward()
        if after_backward is not None:
            after_backward()  # as rmix-train: between the backward and the optimizer step
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
        elif method == "rmix_amortised":
            grad = None
            if self.amortised.needs_grad_for(self.indices):  # the first step only: then every sample is stored
                with self.autocast():
                    grad = input_gradient(self.model, x, y)
            mixed = self.amortised(x, y, grad, indices=self.indices)
            self._train_on(*mixed, after_backward=self.amortised.after_backward)
        elif method == "rlmix":
            with self.autocast():
                grad, logits = input_gradient(self.model, x, y, return_logits=True)
            self._train_on(*self.rlmix(x, y, grad, logits=logits), after_backward=self.rlmix.after_backward)
        elif method == "sage":
            self.opt.zero_grad(set_to_none=True)
            with self.autocast():
                grad, _ = clean_loss_backward(self.model, x, soft_targets(y, K), weight=0.3, loss_fn=self.loss)
            self._train_on(*self.sage(x, y, grad), weight=0.7, keep_grads=True)
        elif method in ("adautomix", "adautomix_reuse"):
            mixer = self.adautomix[method]
            self.opt.zero_grad(set_to_none=True)
            with self.autocast():
                out = mixer.training_loss(self.model, x, y, self.loss)
            out.loss.backward()
            self.opt.step()
            mixer.after_optimizer_step(self.model, lr=1e-4)
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


def time_rl_update(runner: StepRunner, device: torch.device, reps: int, warmup: int) -> dict[str, float | None]:
    """The median time of one PPO update of ``runner.ppo`` (and on a GPU its peak memory), on a fresh agent
    whose rollout is recorded through ``act`` / ``record`` from the runner's batch: its observation (the
    clean pass's saliency and logits) and a reward of that batch's order of magnitude."""
    case, x, y = runner.case, runner.x, runner.y
    with runner.autocast():
        grad, logits = input_gradient(runner.model, x, y, return_logits=True)
    mixer = RLMix(case.num_classes, generator=torch.Generator().manual_seed(2), ppo=runner.ppo).to(device)
    agent, gen = mixer.agent, mixer.generator
    obs = observe(grad, logits, mixer.obs_grid)
    reward = torch.full((), 0.5, device=device)
    last_value = torch.zeros((), device=device)
    times, peak = [], None
    for i in range(warmup + reps):
        for _ in range(runner.ppo.n_steps):  # a full rollout: the next act would update first
            agent.act(obs, torch.rand(x.shape[0], generator=gen), gen)
            agent.record(reward)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        ms = common.time_once_ms(partial(agent.update, last_value, gen), device)
        if i >= warmup:
            times.append(ms)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
    del mixer, agent
    return {"update_ms": statistics.median(times), "update_peak_memory_mb": peak}


def time_case(
    case: StepCase,
    methods: list[str],
    device: torch.device,
    reps: int,
    warmup: int,
    ppo: PPOConfig | None = None,
    rl_update_reps: int = 1,
) -> list[dict]:
    # every timed step, the warm-up's and the peak-memory step too, fits in RL-Mix's rollout: none updates
    runner = StepRunner(case, device, ppo=ppo, rl_steps_timed=warmup + reps + 1)
    if "rmix_amortised" in methods:
        runner.step("rmix_amortised")  # stores the batch's maps: every timed step mixes from the store
    calls = {m: partial(runner.step, m) for m in methods}
    ms = common.interleaved_medians(calls, device, warmup=warmup, reps=reps)
    rl: dict[str, float | None] = {}
    if "rlmix" in methods:
        # the update at its real frequency: one per rollout of ppo.n_steps steps
        rl = time_rl_update(runner, device, rl_update_reps, warmup=1 if device.type == "cuda" else 0)
        rl["step_ms"] = ms["rlmix"]
        ms["rlmix"] += rl["update_ms"] / runner.ppo.n_steps
    rows = []
    for m in methods:
        ratios = {f"ratio_to_{base}": ms[m] / ms[base] for base in ("vanilla", "rmix_fast") if base in ms}
        goal_to, goal = GOALS.get(m, (None, None))
        ratio = ratios.get(f"ratio_to_{goal_to}")
        row = {**asdict(case), "case": case.label, "method": m, "time_ms": ms[m], **ratios,
               "images_per_s": case.batch / ms[m] * 1e3, "peak_memory_mb": runner.peak_memory_mb(m),
               "goal_to": goal_to, "goal_ratio": goal,
               "goal_met": ratio <= goal if goal is not None and ratio is not None else None}  # fmt: skip
        if m == "rlmix":
            row.update({"rl_step_ms": rl["step_ms"], "rl_update_ms": rl["update_ms"],
                        "rl_update_peak_memory_mb": rl["update_peak_memory_mb"], "rl_steps": runner.ppo.n_steps,
                        "rl_minibatch": runner.ppo.minibatch, "rl_epochs": runner.ppo.epochs})  # fmt: skip
        rows.append(row)
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
        goal_to, goal = GOALS.get(m, (None, None))
        if goal_to not in (None, "vanilla"):  # a goal relative to another method: a tick at its height per case
            label: str | None = f"{m} goal: {goal}x {goal_to}"
            for x, c in zip(xs, cases, strict=True):
                base = next((r for r in rows if r["case"] == c and r["method"] == goal_to), None)
                if base is not None:
                    level = goal * base["ratio_to_vanilla"]
                    ax.plot([x - width / 2, x + width / 2], [level, level], color="black", linewidth=1, label=label)
                    label = None  # one legend entry
    # one dashed line per distinct goal of the methods shown, labelled on the right
    vanilla_goals = sorted({goal for m, (goal_to, goal) in GOALS.items() if goal_to == "vanilla" and m in methods})
    for goal in vanilla_goals:
        ax.axhline(goal, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"goal {goal}x", (1, goal), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                    ha="right", va="bottom")  # fmt: skip
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
        case_rows = time_case(case, args.methods, device, args.reps, args.warmup, args.ppo, args.rl_update_reps)
        rows += case_rows
        print(" | ".join(f"{r['method']} {r['time_ms']:.1f} ms ({r['ratio_to_vanilla']:.2f}x)" for r in case_rows),
              f"<- {case.label}", flush=True)  # fmt: skip
        for r in case_rows:
            if r["method"] == "rlmix":
                vs_rmix = f", {r['ratio_to_rmix_fast']:.2f}x rmix_fast" if "ratio_to_rmix_fast" in r else ""
                print(f"  rlmix: step {r['rl_step_ms']:.1f} ms + update {r['rl_update_ms']:.0f} ms / "
                      f"{r['rl_steps']} steps = {r['time_ms']:.1f} ms per step{vs_rmix}", flush=True)  # fmt: skip

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
    payload = {**env, "reps": args.reps, "warmup": args.warmup, "rl_update_reps": args.rl_update_reps,
               "cases": rows, "mask_agreement": agreement}  # fmt: skip
    common.write_json(stem.with_suffix(".json"), payload)
    plot(rows, stem.with_suffix(".png"), f"training step: {env['device_name']}, torch {env['torch']}")
    columns = [("case", "case"), ("method", "method"), ("time_ms", "ms / step"), ("ratio_to_vanilla", "× vanilla"),
               ("ratio_to_rmix_fast", "× rmix_fast"), ("images_per_s", "images/s"), ("peak_memory_mb", "peak MiB"),
               ("goal_met", "goal met")]  # fmt: skip
    if "rmix_fast" not in args.methods:
        columns = [c for c in columns if c[0] != "ratio_to_rmix_fast"]
    if device.type != "cuda":
        columns = [c for c in columns if c[0] not in ("peak_memory_mb", "goal_met")]
    print(common.markdown_table(rows, columns))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    main()
