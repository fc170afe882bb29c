"""rmix-train's protocol presets and the options they set: a preset fills the defaults of the options it
names, an option given on the command line wins, and the run's config records what ran."""

from __future__ import annotations

import math

import pytest
import torch

from rmix_fast.training.options import PRESETS, parse_args
from rmix_fast.training.trainer import _make_scheduler


def test_rmix_preset_is_the_paper_recipe(tmp_path):
    a = parse_args(["--out", str(tmp_path / "r")])
    assert (a.preset, a.scheduler, a.lr, a.loss, a.crop_padding, a.batch_size) == ("rmix", "onecycle", 0.3,
                                                                                    "soft_ce", 4, 100)  # fmt: skip


def test_comixup_preset(tmp_path):
    a = parse_args(["--preset", "comixup", "--dataset", "shapes", "--epochs", "300", "--out", str(tmp_path / "c")])
    assert (a.scheduler, a.lr, a.milestones, a.gamma, a.nesterov, a.weight_decay) == ("multistep", 0.2, [100, 200],
                                                                                      0.1, True, 1e-4)  # fmt: skip
    assert (a.loss, a.crop_padding, a.batch_size) == ("softmax_bce", 2, 100)
    short = parse_args(["--preset", "comixup", "--epochs", "30", "--out", str(tmp_path / "s")])
    assert short.milestones == [10, 20]  # the same fractions of a shorter schedule


def test_given_options_win_over_the_preset(tmp_path):
    a = parse_args(["--preset", "comixup", "--lr", "0.05", "--loss", "soft_ce", "--crop-padding", "0",
                    "--out", str(tmp_path / "g")])  # fmt: skip
    assert (a.lr, a.loss, a.crop_padding, a.scheduler) == (0.05, "soft_ce", 0, "multistep")


def test_presets_name_only_real_options():
    from rmix_fast.training.options import build_parser

    known = {action.dest for action in build_parser()._actions}
    for name, values in PRESETS.items():
        assert set(values) <= known, name


def test_bad_crop_padding(tmp_path):
    with pytest.raises(SystemExit):
        parse_args(["--crop-padding", "-1", "--out", str(tmp_path / "b")])


def test_openmixup_preset_and_its_by_epoch_cosine(tmp_path):
    a = parse_args(["--preset", "openmixup", "--method", "adautomix", "--epochs", "4", "--out", str(tmp_path / "o")])
    assert (a.scheduler, a.lr, a.min_lr, a.momentum, a.nesterov, a.weight_decay) == ("cosine", 0.1, 0.05, 0.9,
                                                                                     False, 1e-4)  # fmt: skip
    assert (a.loss, a.crop_padding, a.batch_size) == ("soft_ce", 4, 100)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=a.lr)
    scheduler = _make_scheduler(a, optimizer, steps_per_epoch=3)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # mmcv's CosineAnnealingLrUpdaterHook by epoch: min + (base - min) (1 + cos(pi e / E)) / 2, constant per epoch
    want = [0.05 + 0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs == pytest.approx([w for w in want for _ in range(3)], rel=1e-12)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "adautomix", "--mix-prob", "0.5"], "--mix-prob"),
        (["--method", "adautomix", "--compile"], "--compile"),
        (["--method", "adautomix", "--clean-loss-weight", "0.3"], "--clean-loss-weight"),
        (["--sources", "1"], "--sources"),
        (["--lam-margin", "0.5"], "--lam-margin"),
        (["--ema-momentum", "0.9999", "--ema-end-momentum", "0.999"], "--ema-momentum"),
        (["--preset", "openmixup", "--min-lr", "0.2"], "--min-lr"),
    ],
)
def test_adautomix_and_cosine_options_are_checked(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_args([*argv, "--out", str(tmp_path / "x")])
    assert message in capsys.readouterr().err
