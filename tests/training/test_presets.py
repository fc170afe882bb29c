"""rmix-train's protocol presets and the options they set: a preset fills the defaults of the options it
names, an option given on the command line wins, and the run's config records what ran."""

from __future__ import annotations

import pytest

from rmix_fast.training.options import PRESETS, parse_args


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
