"""The mixing methods rmix-train knows, by name: each entry builds its mixer and may add its own option group.

Adding a method adds an entry here (``register_method``), not branches in the trainer or the parser. The
trainer runs every method through one code path: a method that needs the input gradient says so on its
mixer (``Mixer.needs_grad``), every mixer's mix wraps the model's forward (``Mixer.mixing``, which hands the
network's mixable layers to a mixer of hidden activations), and a mixer with state is checkpointed with the
run (``Mixer.state_dict``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from rmix_fast.mixers import SAGE, AdAutoMix, AmortisedRMix, CutMix, ManifoldMixup, Mixer, Mixup, RLMix, RMix
from rmix_fast.rl import POLICIES, PPOConfig

__all__ = ["METHODS", "Method", "OptionAdder", "mixer_options", "register_method"]

# Adds one option to the method's group: add("--name", type=..., default=..., help=...).
OptionAdder = Callable[..., None]
# Reports a bad option value and exits (argparse's ``parser.error``).
OptionError = Callable[[str], NoReturn]
SALIENCY_SOURCES = ("fresh", "amortised")


@dataclass(frozen=True)
class Method:
    """One mixing method of the CLI.

    Attributes:
        name: the ``--method`` value.
        help: one line for ``--help``.
        build: ``(options, num_classes) -> mixer`` (None: no mixing).
        add_options: adds the method's own options to its group (``add`` takes argparse's arguments).
        check: checks the option values as the method needs them, reporting through ``error``. It runs for
            every registered method whichever is chosen (all their options are in the config), so a check
            of a shared option tests ``args.method`` first.
        defaults: the method's own defaults of shared options (``{"alpha": 2.0}``): they replace the parser's
            and a preset's defaults when the option is not given.
    """

    name: str
    help: str
    build: Callable[[argparse.Namespace, int], Mixer | None]
    add_options: Callable[[OptionAdder], None] | None = None
    check: Callable[[argparse.Namespace, OptionError], None] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Adds ``method`` to the CLI's choices (in registration order)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


def mixer_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options every mixer takes (``Mixer``'s arguments) from the common mixing group."""
    return {
        "alpha": args.alpha,
        "prob": args.mix_prob,
        "label_smoothing": args.label_smoothing,
        "backend": args.backend,
    }


def _rmix_options(add: OptionAdder) -> None:
    add("--grids", type=int, nargs="+", default=[2, 4], help="grid sizes p drawn per batch")
    add("--levels", type=int, default=10, help="number of percentile levels in [0, 0.99]")
    add("--saliency-source", choices=SALIENCY_SOURCES, default="fresh", help="rmix: fresh, a saliency pass every "
        "step (the paper's); amortised, each sample's map stored from the training backward the last time it was "
        "trained on (a pass only for batches holding a sample not seen yet)")  # fmt: skip


def _check_rmix(args: argparse.Namespace, error: OptionError) -> None:
    if any(g < 1 for g in args.grids):
        error(f"--grids must all be >= 1, got {args.grids}")
    if args.levels < 1:
        error(f"--levels must be >= 1, got {args.levels}")
    if args.saliency_source == "amortised":
        if args.method != "rmix":
            error(f"--saliency-source amortised is an option of --method rmix, not {args.method}")
        if any(max(args.grids) % g for g in args.grids):
            error(f"--saliency-source amortised needs every --grids to divide the finest, got {args.grids}")


def _build_rmix(args: argparse.Namespace, num_classes: int) -> RMix:
    """R-Mix; with ``--saliency-source amortised`` its maps come from a per-sample store (the trainer gives it
    the dataset's size and each batch's indices)."""
    cls = AmortisedRMix if args.saliency_source == "amortised" else RMix
    return cls(num_classes, grids=tuple(args.grids), levels=args.levels, **mixer_options(args))


register_method(Method("vanilla", "no mixing", lambda args, k: None))
register_method(Method("mixup", "Mixup (Zhang et al. 2018)", lambda args, k: Mixup(k, **mixer_options(args))))
register_method(Method("cutmix", "CutMix (Yun et al. 2019)", lambda args, k: CutMix(k, **mixer_options(args))))
register_method(
    Method(
        "rmix",
        "R-Mix (Luu et al. 2023): thresholded input-gradient saliency",
        _build_rmix,
        add_options=_rmix_options,
        check=_check_rmix,
    )
)


def _check_manifold(args: argparse.Namespace, error: OptionError) -> None:
    # The mix is a forward hook, added per batch: a torch.compile'd forward would not run it (dynamo does not
    # guard on module hooks), so the run would train unmixed against mixed labels.
    if args.method == "manifold" and args.compile:
        error("--method manifold mixes through forward hooks, which a --compile'd model does not run")


register_method(
    Method(
        "manifold",
        "Manifold Mixup (Verma et al. 2019): mixup of the input or of the activations after stage 1 or 2",
        lambda args, k: ManifoldMixup(k, **mixer_options(args)),
        check=_check_manifold,
        defaults={"alpha": 2.0},  # the authors' CIFAR setting, as in the tables R-Mix copies
    )
)


# RL-Mix's agent: PPO's settings by option name (stable-baselines3's defaults, the authors' rollout sizes).
_AGENT_OPTIONS = {
    "agent_steps": ("n_steps", int, "training steps per PPO rollout (the authors': 1000)"),
    "agent_minibatch": ("minibatch", int, "steps per PPO minibatch (the authors': 250)"),
    "agent_epochs": ("epochs", int, "passes over a rollout per PPO update"),
    "agent_lr": ("lr", float, "the agent's Adam learning rate (ours: the authors' value is undefined in their code)"),
    "agent_lr_power": ("lr_power", float, "the agent's lr decays as lr * (remaining fraction of the run) ** power"),
    "agent_gamma": ("gamma", float, "discount"),
    "agent_gae_lambda": ("gae_lambda", float, "GAE lambda"),
    "agent_clip": ("clip", float, "PPO's clip range"),
    "agent_ent_coef": ("ent_coef", float, "entropy bonus weight"),
    "agent_vf_coef": ("vf_coef", float, "value loss weight"),
    "agent_max_grad_norm": ("max_grad_norm", float, "the agent's gradient-norm clip"),
}


def ppo_config(args: argparse.Namespace) -> PPOConfig:
    """The agent's PPO settings from the ``--agent-*`` options."""
    return PPOConfig(**{field: getattr(args, option) for option, (field, _, _) in _AGENT_OPTIONS.items()})


def _rlmix_options(add: OptionAdder) -> None:
    add("--obs-grid", type=int, default=8, help="the agent observes each sample's saliency pooled to N x N")
    add(
        "--agent-policy",
        choices=POLICIES,
        default="sample",
        help="sample: one network per sample (any batch size); batch-channels: the authors' (fixed batch size)",
    )
    defaults = PPOConfig()
    for option, (field_name, kind, help_text) in _AGENT_OPTIONS.items():
        add(f"--{option.replace('_', '-')}", type=kind, default=getattr(defaults, field_name), help=help_text)


def _check_rlmix(args: argparse.Namespace, error: OptionError) -> None:
    try:
        ppo_config(args)
    except ValueError as e:
        error(f"--agent-*: {e}")
    if args.obs_grid < 1:
        error(f"--obs-grid must be >= 1, got {args.obs_grid}")
    if args.method == "rlmix" and args.agent_policy == "batch-channels" and args.obs_grid < 3:
        error(f"--agent-policy batch-channels needs --obs-grid >= 3, got {args.obs_grid}")


def _build_rlmix(args: argparse.Namespace, num_classes: int) -> RLMix:
    return RLMix(
        num_classes,
        grids=tuple(args.grids),
        levels=args.levels,
        obs_grid=args.obs_grid,
        policy=args.agent_policy,
        batch=args.batch_size,
        ppo=ppo_config(args),
        **mixer_options(args),
    )


register_method(
    Method(
        "rlmix",
        "RL-Mix (Luu et al. 2023): R-Mix with each sample's percentile level chosen by a PPO agent "
        "(--grids and --levels as R-Mix)",
        _build_rlmix,
        add_options=_rlmix_options,
        check=_check_rlmix,
    )
)


def _sage_options(add: OptionAdder) -> None:
    add("--sage-upper", type=float, default=0.5, help="the saliency scale is Beta(alpha, alpha) times this (the "
        "authors': 0.5 CIFAR-100 PreActResNet-18, 0.6 CIFAR-10, 0.7 ResNeXt / WRN16-8)")  # fmt: skip
    add("--rand-pos", type=float, default=0.01, help="fraction of all (2H-1)(2W-1) shifts searched per batch")
    add("--blur-sigma", type=float, default=1.0, help="sigma of the saliency's Gaussian blur")
    add("--blur-kernel", type=int, default=5, help="size of the saliency's Gaussian blur (odd)")


def _check_sage(args: argparse.Namespace, error: OptionError) -> None:
    if not 0.0 < args.sage_upper <= 1.0:
        error(f"--sage-upper must lie in (0, 1], got {args.sage_upper}")
    if not 0.0 < args.rand_pos <= 1.0:
        error(f"--rand-pos must lie in (0, 1], got {args.rand_pos}")
    if not args.blur_sigma > 0:
        error(f"--blur-sigma must be > 0, got {args.blur_sigma}")
    if args.blur_kernel < 1 or args.blur_kernel % 2 == 0:
        error(f"--blur-kernel must be an odd int >= 1, got {args.blur_kernel}")


register_method(
    Method(
        "sage",
        "SAGE (Ma et al. 2022): smoothed-saliency soft mask after a search over shifts of the partner; with its "
        "published update, clean loss x 0.3 + mixed loss x 0.7 (update_ratio 0.7); --preset comixup for its "
        "recipe",
        lambda args, k: SAGE(
            k,
            upper=args.sage_upper,
            rand_pos=args.rand_pos,
            sigma=args.blur_sigma,
            kernel_size=args.blur_kernel,
            **mixer_options(args),
        ),
        add_options=_sage_options,
        check=_check_sage,
        # the authors' update for PreActResNet-18 (update_ratio r = 0.7): (1 - r) clean + r mixed
        defaults={"clean_loss_weight": 0.3, "mix_loss_weight": 0.7},
    )
)


def _adautomix_options(add: OptionAdder) -> None:
    add("--sources", type=int, default=3, help="images per mix (the authors': 3 on CIFAR, 2 on ImageNet)")
    add("--adversarial-beta", type=float, default=0.3, help="weight of the teacher's loss in the generator's "
        "adversarial objective (the authors': 0.3 CIFAR, 0.1 ImageNet)")  # fmt: skip
    add("--mixup-ratio", type=float, default=0.5, help="3+ sources: weight of the linear mix's loss against the "
        "clean batch's (the authors' mixup_radio)")  # fmt: skip
    add("--lam-margin", type=float, default=0.03, help="the classifier's mix is the constant lam when lam_0 <= "
        "this or >= 1 - this")  # fmt: skip
    add("--ema-momentum", type=float, default=0.999, help="the teacher's momentum for the first --ema-warmup of "
        "the steps")  # fmt: skip
    add("--ema-end-momentum", type=float, default=0.999999, help="the teacher's momentum at the end of the cosine "
        "(the authors': 0.999999 CIFAR, 0.99999 ImageNet)")  # fmt: skip
    add("--ema-warmup", type=float, default=0.1, help="fraction of the steps at --ema-momentum")
    add("--lam-concat", action="store_true", default=False, help="the generator sees each source's lam as an input "
        "channel (the authors': ImageNet yes, CIFAR no)")  # fmt: skip
    add("--generator-norm", choices=("none", "bn"), default="none", help="BatchNorm after the generator's query "
        "and key convs (the authors': ImageNet ResNet-50 only)")  # fmt: skip
    add("--mask-mode", choices=("bilinear", "nearest"), default="bilinear", help="upsampling of the masks")
    add("--reuse-teacher-logits", action="store_true", default=False, help="the cosine term reads the teacher's "
        "logits of the clean batch, permuted, instead of one more teacher pass per source (equal up to rounding; "
        "the teacher's BatchNorm running statistics see fewer updates)")  # fmt: skip


def _check_adautomix(args: argparse.Namespace, error: OptionError) -> None:
    if args.sources < 2:
        error(f"--sources must be >= 2, got {args.sources}")
    for name in ("adversarial_beta", "mixup_ratio", "ema_momentum", "ema_end_momentum", "ema_warmup"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            error(f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(args, name)}")
    if not 0.0 <= args.lam_margin < 0.5:
        error(f"--lam-margin must lie in [0, 0.5), got {args.lam_margin}")
    if args.ema_momentum > args.ema_end_momentum:
        error(f"--ema-momentum must be <= --ema-end-momentum, got {args.ema_momentum} > {args.ema_end_momentum}")
    if args.method != "adautomix":
        return
    if args.mix_prob != 1.0:
        error(f"--method adautomix mixes every batch: --mix-prob must be 1, got {args.mix_prob}")
    if args.compile:
        error("--method adautomix runs its forwards through forward_features and hooks: --compile is not supported")
    if args.clean_loss_weight or args.mix_loss_weight != 1.0:
        error("--method adautomix builds its own loss: --clean-loss-weight and --mix-loss-weight do not apply")


def _build_adautomix(args: argparse.Namespace, num_classes: int) -> AdAutoMix:
    return AdAutoMix(
        num_classes,
        alpha=args.alpha,
        n_sources=args.sources,
        beta=args.adversarial_beta,
        mixup_ratio=args.mixup_ratio,
        lam_margin=args.lam_margin,
        ema_momentum=args.ema_momentum,
        ema_end_momentum=args.ema_end_momentum,
        ema_warmup=args.ema_warmup,
        lam_concat=args.lam_concat,
        norm=None if args.generator_norm == "none" else args.generator_norm,
        mode=args.mask_mode,
        reuse_teacher_logits=args.reuse_teacher_logits,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        nesterov=args.nesterov,
        label_smoothing=args.label_smoothing,
        backend=args.backend,
    )


register_method(
    Method(
        "adautomix",
        "AdAutoMix (Qin et al. 2024): a mask generator on an EMA teacher's features mixes N images per pixel, "
        "trained adversarially against the classifier; --preset openmixup for its recipe",
        _build_adautomix,
        add_options=_adautomix_options,
        check=_check_adautomix,
    )
)
