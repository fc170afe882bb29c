"""rmix-train and rmix-eval end to end on tiny budgets: every method, the outputs, exact resume after a
SIGKILL, the evaluation CLI on a checkpoint, bad arguments and missing data folders, and torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rmix_fast.training import evaluate, train
from rmix_fast.training.checkpoint import load_checkpoint
from rmix_fast.training.methods import METHODS
from rmix_fast.training.options import parse_args

ROOT = Path(__file__).resolve().parents[2]
# A run small enough for CI: 2 steps of 40 images per epoch, a 40-image test set.
TINY = ["--dataset", "shapes", "--model", "small_cnn", "--train-size", "80", "--test-size", "40",
        "--batch-size", "40", "--no-progress"]  # fmt: skip
# What a resumed run must reproduce exactly (timings are not results).
TIMING_KEYS = ("seconds", "images_per_s")


def subprocess_env() -> dict[str, str]:
    """The package from this checkout, one thread per process (2 cores), the compiled backends."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("TRITON_INTERPRET", None)
    return env


def run_train(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    assert train.main([*TINY, "--out", str(out), *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def results_of(metrics: dict) -> tuple[list[dict], dict]:
    history = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in metrics["history"]]
    return history, metrics["final"]


@pytest.mark.slow
@pytest.mark.parametrize("method", tuple(METHODS))
def test_each_method_trains_and_writes_its_outputs(tmp_path, method, capsys):
    metrics = run_train(tmp_path, method, "--method", method, "--epochs", "2")
    out = tmp_path / method
    assert metrics["complete"] and metrics["config"]["method"] == method
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    final = metrics["final"]
    assert final["n"] == 40
    for key in ("top1", "top5", "ece", "fgsm_error", "loc_gt_known", "loc_top1"):
        assert 0.0 <= final[key] <= 100.0, (key, final[key])
    assert final["top1"] <= final["top5"]
    assert metrics["versions"]["torch"] == torch.__version__
    for png in ("curves.png", "reliability.png", "mixed_samples.png"):
        assert (out / png).stat().st_size > 1000, png
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and state["config"]["method"] == method
    log = (out / "train.log").read_text().splitlines()
    assert sum(line.startswith("epoch ") for line in log) == 2
    assert "top-1 accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_same_seed_same_results_and_eval_cli_agrees(tmp_path, capsys):
    first = run_train(tmp_path, "a", "--epochs", "1")
    second = run_train(tmp_path, "b", "--epochs", "1")
    assert results_of(first) == results_of(second)

    # rmix-eval on the checkpoint reproduces the final evaluation of training.
    assert evaluate.main(["--checkpoint", str(tmp_path / "a"), "--out", str(tmp_path / "eval")]) == 0
    got = json.loads((tmp_path / "eval" / "eval.json").read_text())["result"]
    for key in ("top1", "top5", "ece", "fgsm_error", "loc_gt_known", "loss"):
        assert got[key] == first["final"][key], key
    assert (tmp_path / "eval" / "reliability.png").is_file()
    assert "top-1 accuracy" in capsys.readouterr().out


@pytest.mark.slow
# R-Mix; Manifold Mixup (hooks inside the forward) with a clean loss (gradients kept from the saliency
# pass); and a test double of a learned mixer whose state (a counter, a network and its optimizer) drives
# every mix: the resumed run matches only if the checkpoint restores the mixer's state too; and RL-Mix, whose
# agent (policy, Adam, a rollout that spans the checkpoint) is that state.
@pytest.mark.parametrize(
    ("module", "method", "extra"),
    [
        ("rmix_fast.train", "rmix", []),
        ("rmix_fast.train", "manifold", ["--clean-loss-weight", "0.5"]),
        ("tests.helpers.stateful_method", "stateful", []),
        # RL-Mix: 5 steps an epoch, rollouts of 4, so the checkpoint falls inside a rollout
        ("rmix_fast.train", "rlmix", ["--agent-steps", "4", "--agent-minibatch", "2"]),
        # SAGE with its published update: the clean loss's gradients kept, both losses weighted
        ("rmix_fast.train", "sage", []),
        # AdAutoMix: generator, one-hot head, their SGD momentum, the EMA teacher and the iteration count
        # (16-pixel images: its step is five forward-backwards' worth)
        ("rmix_fast.train", "adautomix", ["--image-size", "16"]),
        # R-Mix with amortised saliency: the store (every sample's map, written every step) is the state
        ("rmix_fast.train", "rmix", ["--saliency-source", "amortised"]),
    ],
)
def test_resume_after_sigkill_is_exact(tmp_path, module, method, extra):
    args = [*TINY, "--method", method, "--epochs", "3", "--train-size", "200", *extra]
    env = subprocess_env()
    cmd = [sys.executable, "-m", module, *args]
    # The uninterrupted run beside the one to kill (one thread each, the machine's two cores)
    whole_run = subprocess.Popen([*cmd, "--out", str(tmp_path / "whole")], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)  # fmt: skip

    # Kill a second run without warning during its second epoch, after its first checkpoint.
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(killed / "checkpoint.pt")  # never a torn file
    assert state["epoch"] in (0, 1)
    if method == "stateful":
        assert int(state["mixer"]["steps"]) == 5 * (state["epoch"] + 1)  # 5 steps an epoch
    if "amortised" in extra:
        assert bool(state["mixer"]["store.seen"].all())  # an epoch stores every sample

    done = subprocess.run(
        [*cmd, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout
    assert whole_run.wait(timeout=300) == 0, whole_run.stderr.read().decode()
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert results_of(resumed) == results_of(whole)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--method", "puzzlemix"], "invalid choice: 'puzzlemix'"),
        (["--model", "vit"], "invalid choice: 'vit'"),
        (["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir"),
        (["--dataset", "cifar10", "--data-dir", "x", "--train-size", "5"], "apply to --dataset shapes only"),
        (["--mix-prob", "1.5"], "--mix-prob must lie in [0, 1]"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--saliency-resolution", "0"], "--saliency-resolution must lie in (0, 1]"),
        (["--clean-loss-weight", "-0.5"], "--clean-loss-weight must be a finite number >= 0"),
        (["--clean-loss-weight", "inf"], "--clean-loss-weight must be a finite number >= 0"),
        (["--method", "manifold", "--compile"], "a --compile'd model does not run"),
        (["--grids", "0"], "--grids must all be >= 1"),
        (["--saliency-source", "amortised", "--grids", "3", "4"], "needs every --grids to divide the finest"),
        (["--saliency-source", "amortised", "--method", "rlmix"], "is an option of --method rmix, not rlmix"),
        (["--scheduler", "multistep", "--epochs", "5", "--milestones", "9"], "--milestones must lie in [1"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_resume_checks(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--resume", "--out", str(tmp_path / "nothing")])
    assert "no checkpoint at" in capsys.readouterr().err
    run_train(tmp_path, "run", "--epochs", "1", "--method", "cutmix")
    with pytest.raises(SystemExit):
        parse_args(["--resume", "--out", str(tmp_path / "run"), "--method", "rmix"])
    assert "--method 'rmix' (run has 'cutmix')" in capsys.readouterr().err
    # Only --out given: everything else comes from the checkpoint.
    args = parse_args(["--resume", "--out", str(tmp_path / "run")])
    assert args.method == "cutmix" and args.train_size == 80
    assert args.alpha == 1.0 and args.clean_loss_weight == 0.0

    # A method's own default (Manifold Mixup's alpha 2) and the clean loss weight are the run's options too.
    metrics = run_train(tmp_path, "manifold", "--epochs", "1", "--method", "manifold", "--clean-loss-weight", "0.5")
    assert metrics["config"]["alpha"] == 2.0 and metrics["config"]["clean_loss_weight"] == 0.5
    args = parse_args(["--resume", "--out", str(tmp_path / "manifold")])
    assert args.method == "manifold" and args.alpha == 2.0 and args.clean_loss_weight == 0.5
    with pytest.raises(SystemExit):
        parse_args(["--resume", "--out", str(tmp_path / "manifold"), "--clean-loss-weight", "0"])
    assert "--clean-loss-weight 0.0 (run has 0.5)" in capsys.readouterr().err


def test_a_method_default_yields_to_the_option_given():
    base = ["--out", "unused"]
    assert parse_args([*base, "--method", "manifold"]).alpha == 2.0
    assert parse_args([*base, "--method", "manifold", "--alpha", "0.2"]).alpha == 0.2
    assert parse_args([*base, "--method", "mixup"]).alpha == 1.0
    assert parse_args([*base, "--method", "manifold", "--preset", "comixup"]).alpha == 2.0


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagefolder"])
def test_missing_data_folder_is_a_clear_error(tmp_path, dataset):
    with pytest.raises(SystemExit) as e:
        train.main(["--dataset", dataset, "--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    assert str(tmp_path / "absent") in str(e.value)
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_console_scripts_and_module_entry_points():
    help_text = subprocess.run(
        [sys.executable, "-m", "rmix_fast.train", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert "--method {" + ",".join(METHODS) + "}" in help_text
    assert "--clean-loss-weight" in help_text
    for script in ("rmix-train", "rmix-eval"):
        path = Path(sys.executable).parent / script
        if path.exists():  # installed with pip install -e .
            assert "usage:" in subprocess.run([str(path), "--help"], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "rmix_fast.train", *TINY, "--epochs", "1", "--out", str(out)]  # fmt: skip
    env = subprocess_env()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["complete"]
    assert metrics["final"]["n"] == 40  # every test image once across the two ranks
    assert done.stdout.count("epoch 1/1") == 1  # only rank 0 logs


@pytest.mark.slow
def test_an_existing_run_is_not_overwritten_by_accident(tmp_path, capsys):
    run_train(tmp_path, "run", "--epochs", "1")
    with pytest.raises(SystemExit):
        parse_args([*TINY, "--out", str(tmp_path / "run")])
    assert "pass --resume to continue that run or --overwrite" in capsys.readouterr().err
    metrics = run_train(tmp_path, "run", "--epochs", "1", "--method", "mixup", "--overwrite")
    assert metrics["config"]["method"] == "mixup"
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("rmix-train:") == 1  # the old run's log went with it
