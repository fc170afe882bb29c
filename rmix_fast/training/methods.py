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

from rmix_fast.mixers import SAGE, CutMix, ManifoldMixup, Mixer, Mixup, RLMix, RMix
from rmix_fast.rl import POLICIES, PPOConfig

__all__ = ["METHODS", "Method", "OptionAdder", "mixer_options", "register_method"]

# Adds one option to the method's group: add("--name", type=..., default=..., help=...).
OptionAdder = Callable[..., None]
# Reports a bad option value and exits (argparse's ``parser.error``).
OptionError = Callable[[str], NoReturn]


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


def _check_rmix(args: argparse.Namespace, error: OptionError) -> None:
    if any(g < 1 for g in args.grids):
        error(f"--grids must all be >= 1, got {args.grids}")
    if args.levels < 1:
        error(f"--levels must be >= 1, got {args.levels}")


register_method(Method("vanilla", "no mixing", lambda args, k: None))
register_method(Method("mixup", "Mixup (Zhang et al. 2018)", lambda args, k: Mixup(k, **mixer_options(args))))
register_method(Method("cutmix", "CutMix (Yun et al. 2019)", lambda args, k: CutMix(k, **mixer_options(args))))
register_method(
    Method(
        "rmix",
        "R-Mix (Luu et al. 2023): thresholded input-gradient saliency",
        lambda args, k: RMix(k, grids=tuple(args.grids), levels=args.levels, **mixer_options(args)),
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
