"""rmix-compare: arms and their errors, what it does with each run folder (skip, resume, restart, start,
refuse a clash), the aggregation over seeds against hand-computed numbers on hand-written runs, and end to
end on tiny budgets: methods x seeds run in parallel, a second seed added later, a killed run resumed."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rmix_fast.training import compare
from rmix_fast.training.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# The protocol of the end-to-end runs: 2 steps of 32 images, 32 test images, no FGSM pass.
TINY = ["--train-size", "64", "--test-size", "32", "--epochs", "1", "--batch-size", "32", "--fgsm-eps", "0"]
OUTPUTS = ("comparison.json", "comparison.md", "accuracy_vs_epoch.png", "accuracy_vs_cost.png")


@pytest.fixture
def child_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """rmix-train subprocesses import this checkout, without the Triton interpreter that conftest sets."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def report_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "comparison.json").read_text())


# ------------------------------------------------------------------------------------------------------ arms
@pytest.mark.parametrize(
    ("text", "label", "args"),
    [
        ("vanilla", "vanilla", ("--method", "vanilla")),
        ("r2=--method rmix --grids 2", "r2", ("--method", "rmix", "--grids", "2")),
        ("a=--method=cutmix", "a", ("--method=cutmix",)),  # only the first '=' ends the label
        ("q='--method' \"rmix\"", "q", ("--method", "rmix")),  # split like a shell line
        ("rmix (q=.5)=--method rmix", "rmix (q", (".5)=--method", "rmix")),  # first '=' wins, even here
    ],
)
def test_parse_spec(text: str, label: str, args: tuple[str, ...]) -> None:
    assert compare.parse_spec(text) == compare.Spec(label, args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "a=--method vanilla", "--method", "a=--method rmix"], "labels must differ"),
        (["--method", "a="], "no rmix-train arguments after '='"),
        (["--method", "a=   "], "no rmix-train arguments after '='"),
        (["--method", "=--method rmix"], "the label before '=' is empty"),
        (["--method", "x/y=--method rmix"], "must be a plain folder name"),
        (["--method", "..=--method rmix"], "must be a plain folder name"),
        (["--method", ".hidden=--method rmix"], "must be a plain folder name"),
        (["--method", "a=--method 'rmix"], "cannot split its arguments"),
        (["--method", "puzzlemix"], "--method puzzlemix: rmix-train rejects --method puzzlemix"),
        (["--method", "a=--method rmix --seed 3"], "--method a sets --seed"),
        (["--method", "a=--method rmix --ou x"], "--method a sets --out"),  # abbreviations as rmix-train reads them
        (["--method", "vanilla", "--", "--resume"], "the arguments after -- sets --resume"),
        (["--method", "vanilla", "--", "--epochs", "0"], "--epochs must be >= 1"),
        (["--method", "vanilla", "--seeds", "1", "1"], "--seeds must differ"),
        (["--method", "vanilla", "--parallel", "0"], "--parallel and --threads must be >= 1"),
        ([], "give at least one --method"),
        (["--report-only"], "is no folder"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        compare.main(["--out", str(tmp_path / "cmp"), *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()  # nothing ran, nothing was written


def test_report_only_without_runs_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    assert compare.main(["--out", str(tmp_path / "empty"), "--report-only"]) == 1
    assert "no runs (DIR/LABEL/seedK/ folders)" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "comparison.json").exists()


def test_help_names_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        compare.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "rmix-compare --out DIR --method LABEL[=RMIX_TRAIN_ARGS]" in text
    assert "rmix-train ARGS COMMON --seed K --out DIR/LABEL/seedK --no-progress" in text


def test_mean_std_is_the_sample_std() -> None:
    assert compare.mean_std([1.0, 2.0, 4.0]) == {"mean": 7 / 3, "std": statistics.stdev([1, 2, 4]), "n": 3}
    assert math.isclose(compare.mean_std([80.0, 84.0])["std"], math.sqrt(8))  # ddof=1: sqrt((4 + 4) / 1)
    assert compare.mean_std([5.0, None]) == {"mean": 5.0, "std": None, "n": 1}  # one value: no spread
    assert compare.mean_std([None]) == {"mean": None, "std": None, "n": 0}


# ------------------------------------------------------------------------------------- runs written by hand
def write_run(
    path: Path,
    final: dict[str, Any] | None,
    history: list[tuple[float, float, float, float]],
    config: dict[str, Any] | None = None,
    checkpoint: bool = False,
) -> None:
    """A run folder as rmix-train leaves it: ``history`` rows are (train_top1, test_top1, images/s, seconds);
    ``final`` None: an incomplete run. ``checkpoint``: an (unreadable) checkpoint.pt beside it."""
    rows = [
        {"epoch": i + 1, "train_loss": 1.0, "train_top1": tr, "images_per_s": ips, "seconds": sec,
         "test_loss": 1.0, "test_top1": te, "test_top5": 99.0, "lr": 0.1}
        for i, (tr, te, ips, sec) in enumerate(history)
    ]  # fmt: skip
    metrics = {"config": config or {}, "history": rows, "complete": final is not None, "final": final}
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    if checkpoint:
        (path / "checkpoint.pt").write_bytes(b"not read: metrics.json holds the config")


def final(top1: float, ece: float, fgsm: float | None = 50.0) -> dict[str, Any]:
    return {"top1": top1, "top5": 99.0, "ece": ece, "fgsm_error": fgsm, "loc_gt_known": 10.0, "loss": 1.0, "n": 32,
            "calibration": {"edges": [0, 1]}}  # fmt: skip


def test_report_only_aggregates_the_runs_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    # vanilla: two complete seeds and an incomplete third; rmix: one complete seed. Each history row is
    # (train top-1, test top-1, images/s, seconds).
    write_run(out / "vanilla" / "seed0", final(80.0, 4.0), [(50.0, 60.0, 100.0, 2.0), (70.0, 80.0, 120.0, 4.0)])
    write_run(out / "vanilla" / "seed1", final(84.0, 6.0), [(60.0, 70.0, 200.0, 1.0), (72.0, 84.0, 180.0, 1.0)])
    write_run(out / "vanilla" / "seed2", None, [(55.0, 65.0, 150.0, 2.0)], checkpoint=True)
    write_run(out / "rmix" / "seed0", final(90.0, 3.0, None), [(40.0, 70.0, 50.0, 6.0), (60.0, 90.0, 40.0, 6.0)])
    (out / "rmix" / "seed007").mkdir()  # not a name rmix-compare gives: no seed
    (out / "notes").mkdir()  # no seed<K> folders: no arm

    assert compare.main(["--out", str(out), "--report-only"]) == 0
    report = report_of(out)
    assert list(report["labels"]) == ["rmix", "vanilla"]  # found, sorted
    assert report["seeds"] == [0, 1, 2] and report["reference"] == "vanilla"
    v, r = report["labels"]["vanilla"]["summary"], report["labels"]["rmix"]["summary"]
    assert v["top1"] == {"mean": 82.0, "std": pytest.approx(math.sqrt(8)), "n": 2}
    assert v["ece"] == {"mean": 5.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert v["train_top1"]["mean"] == 71.0  # the last epoch's: (70 + 72) / 2
    assert v["images_per_s"]["mean"] == pytest.approx((110.0 + 190.0) / 2)  # per seed the mean over epochs
    assert v["images_per_s"]["std"] == pytest.approx(statistics.stdev([110.0, 190.0]))
    assert v["seconds_per_epoch"]["mean"] == pytest.approx((3.0 + 1.0) / 2)
    assert v["time_vs_reference"]["mean"] == 1.0
    assert v["time_vs_reference"]["std"] == pytest.approx(statistics.stdev([3.0, 1.0]) / 2.0)
    assert r["time_vs_reference"] == {"mean": 3.0, "std": None, "n": 1}  # 6 s an epoch against vanilla's 2 s
    assert r["top1"] == {"mean": 90.0, "std": None, "n": 1}
    assert r["fgsm_error"] == {"mean": None, "std": None, "n": 0}  # no FGSM pass in that run
    assert report["labels"]["vanilla"]["test_top1_by_epoch"] == {
        "epoch": [1, 2],
        "mean": [65.0, 82.0],
        "std": [pytest.approx(statistics.stdev([60.0, 70.0])), pytest.approx(math.sqrt(8))],
    }
    run = report["labels"]["vanilla"]["runs"][1]
    assert run["seed"] == 1 and run["path"] == "vanilla/seed1" and "calibration" not in run["final"]
    assert [row["epoch"] for row in run["history"]] == [1, 2]
    assert report["labels"]["vanilla"]["seeds_done"] == 2
    missing = {(m["label"], m["seed"]): m["state"] for m in report["missing"]}
    assert missing == {("vanilla", 2): "checkpoint, 1 epoch(s) done", ("rmix", 1): "absent", ("rmix", 2): "absent"}

    md = (out / "comparison.md").read_text()
    assert "| label | seeds | top-1 | top-5 | ECE | FGSM err | loc | train top-1 | img/s | time × vanilla |" in md
    assert (
        "| vanilla | 2/3 | 82.00 ± 2.83 | 99.00 ± 0.00 | 5.00 ± 1.41 | 50.00 ± 0.00 | 10.00 ± 0.00 | 71.00 ± 1.41 "
        in md
    )
    assert "| rmix | 1/3 | 90.00 ± – | 99.00 ± – | 3.00 ± – | – | 10.00 ± – | 60.00 ± – | 45 ± – | 3.00 ± – |" in md
    assert "vanilla seed2 (checkpoint, 1 epoch(s) done)" in md
    assert md in capsys.readouterr().out  # printed too
    for name in OUTPUTS[2:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A later --report-only keeps the arms' order of the last report, then adds new folders.
    write_run(out / "base" / "seed0", final(70.0, 1.0), [(1.0, 2.0, 3.0, 4.0)])
    assert compare.main(["--out", str(out), "--report-only"]) == 0
    assert list(report_of(out)["labels"]) == ["rmix", "vanilla", "base"]

    # Without vanilla, the first label is the reference; the first with complete runs, as only those have times.
    def reference(*argv: str) -> tuple[str | None, float | None]:
        assert compare.main(["--out", str(out), "--report-only", *argv]) == 0
        report = report_of(out)
        return report["reference"], report["labels"]["rmix"]["summary"]["time_vs_reference"]["mean"]

    assert reference("--method", "base=--method vanilla", "--method", "rmix", "--seeds", "0") == ("base", 6.0 / 4.0)
    assert reference("--method", "new=--method vanilla", "--method", "rmix", "--seeds", "0") == ("rmix", 1.0)
    assert reference("--method", "vanilla", "--method", "rmix", "--seeds", "2") == (None, None)  # none complete


def test_report_only_with_the_arms_checks_each_run_against_them(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    spec = compare.parse_spec("vanilla")
    for seed, epochs in ((0, "1"), (1, "2")):
        path = out / "vanilla" / f"seed{seed}"
        config = compare.expected_config(compare.run_argv(spec, [*TINY[:4], "--epochs", epochs], seed, path))
        write_run(path, final(50.0, 1.0), [(1.0, 2.0, 3.0, 4.0)], config=config)
    argv = ["--out", str(out), "--method", "vanilla", "--seeds", "0", "1", "--report-only", "--", *TINY[:4]]
    assert compare.main([*argv, "--epochs", "1"]) == 0
    warnings = report_of(out)["warnings"]
    # Against the arm's options, and against the label's first seed.
    assert warnings == [f"{out / 'vanilla' / 'seed1'} was run with --epochs 2 (asked: 1)",
                        f"{out / 'vanilla' / 'seed1'} was run with --epochs 2 (seed0: 1)"]  # fmt: skip
    assert "Warnings:" in (out / "comparison.md").read_text()


def test_each_folder_is_skipped_resumed_restarted_or_started(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    specs = [compare.parse_spec("vanilla"), compare.parse_spec("r=--method rmix --grids 2")]
    common = TINY[:4]

    def config(spec: compare.Spec, seed: int) -> dict[str, Any]:
        return compare.expected_config(compare.run_argv(spec, common, seed, out / spec.label / f"seed{seed}"))

    write_run(out / "vanilla" / "seed0", final(1.0, 1.0), [(1.0, 1.0, 1.0, 1.0)], config(specs[0], 0))
    write_run(out / "r" / "seed0", None, [(1.0, 1.0, 1.0, 1.0)] * 2, config(specs[1], 0), checkpoint=True)
    (out / "vanilla" / "seed1").mkdir(parents=True)
    (out / "vanilla" / "seed1" / "train.log").write_text("a run killed before its first checkpoint\n")
    plan = compare.plan_runs(out, specs, [0, 1], common)

    assert [run.path for run in plan.skipped] == [out / "vanilla" / "seed0"]
    assert not plan.clashes
    jobs = {(j.label, j.seed): j for j in plan.jobs}
    assert list(jobs) == [("r", 0), ("vanilla", 1), ("r", 1)]  # seed-major: every arm gets a first seed early
    r0, v1, r1 = jobs.values()
    assert r0.argv == ["--resume", "--out", str(out / "r" / "seed0"), "--no-progress"]
    assert r0.action == "resume after epoch 2"
    fresh = ["--method", "vanilla", *common, "--seed", "1", "--out", str(out / "vanilla" / "seed1"), "--no-progress"]
    assert v1.argv == [*fresh, "--overwrite"] and v1.action == "restart"
    assert r1.argv == ["--method", "rmix", "--grids", "2", *common, "--seed", "1", "--out", str(out / "r" / "seed1"),
                       "--no-progress"]  # fmt: skip
    assert r1.action == "start"

    # A run on disk under other options than its arm's is refused before anything runs.
    write_run(out / "r" / "seed0", final(1.0, 1.0), [(1.0, 1.0, 1.0, 1.0)], {**config(specs[1], 0), "grids": [4]})
    plan = compare.plan_runs(out, specs, [0, 1], common)
    assert plan.clashes == [f"{out / 'r' / 'seed0'} was run with --grids [4] (asked: [2])"]
    assert ("r", 0) not in {(j.label, j.seed) for j in plan.jobs}


def test_the_epochs_done_come_from_the_checkpoint_when_metrics_lag(tmp_path: Path) -> None:
    # A kill between the checkpoint write and the metrics.json write leaves metrics.json one epoch behind;
    # --resume continues from the checkpoint, so the plan reports the checkpoint's epoch.
    out = tmp_path / "cmp"
    spec = compare.parse_spec("vanilla")
    common = TINY[:4]
    path = out / "vanilla" / "seed0"
    config = compare.expected_config(compare.run_argv(spec, common, 0, path))
    write_run(path, None, [(1.0, 1.0, 1.0, 1.0)], config)
    save_checkpoint(path / "checkpoint.pt", {"model": {}, "epoch": 1, "config": config})
    (job,) = compare.plan_runs(out, [spec], [0], common).jobs
    assert job.action == "resume after epoch 2"
    (path / "metrics.json").unlink()  # killed before the first metrics.json: the checkpoint alone
    (job,) = compare.plan_runs(out, [spec], [0], common).jobs
    assert job.action == "resume after epoch 2"


def test_a_clash_stops_the_comparison_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    spec = compare.parse_spec("vanilla")
    path = out / "vanilla" / "seed0"
    config = compare.expected_config(compare.run_argv(spec, [*TINY[:4], "--epochs", "2"], 0, path))
    write_run(path, final(1.0, 1.0), [(1.0, 1.0, 1.0, 1.0)], config)
    assert compare.main(["--out", str(out), "--method", "vanilla", "--seeds", "0", "1", "--", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{path} was run with --epochs 2 (asked: 1)" in err and "Remove those folders" in err
    assert not (out / "vanilla" / "seed1").exists() and not (out / "comparison.json").exists()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_methods_by_seeds_run_resume_and_aggregate(
    tmp_path: Path, child_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    arms = ["--method", "vanilla", "--method", "mix=--method mixup --alpha 0.5"]
    run = ["--out", str(out), *arms, "--parallel", "2", "--threads", "1"]
    assert compare.main([*run, "--seeds", "0", "--", *TINY]) == 0
    first = {label: (out / label / "seed0" / "metrics.json").stat().st_mtime_ns for label in ("vanilla", "mix")}
    assert report_of(out)["labels"]["mix"]["seeds_done"] == 1
    # A folder that a run left before its first checkpoint: started afresh (--overwrite), its log replaced.
    (out / "mix" / "seed1").mkdir()
    (out / "mix" / "seed1" / "train.log").write_text("left over\n")
    capsys.readouterr()

    # A second seed later: the first seed's runs are skipped (untouched), the second's run.
    assert compare.main([*run, "--seeds", "0", "1", "--", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "2 complete, 2 to run" in printed
    assert "restart mix seed1" in printed and "start   vanilla seed1" in printed
    for label, mtime in first.items():
        assert (out / label / "seed0" / "metrics.json").stat().st_mtime_ns == mtime
    assert "left over" not in (out / "mix" / "seed1" / "train.log").read_text()

    report = report_of(out)
    assert report["command"].startswith("rmix-compare --out ") and report["common_args"] == TINY
    assert report["specs"] == [{"label": "vanilla", "args": ["--method", "vanilla"]},
                               {"label": "mix", "args": ["--method", "mixup", "--alpha", "0.5"]}]  # fmt: skip
    assert not report["missing"] and not report["warnings"]
    seconds = {}
    for label, method in (("vanilla", "vanilla"), ("mix", "mixup")):
        runs = [json.loads((out / label / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        assert [m["config"]["seed"] for m in runs] == [0, 1] and {m["config"]["method"] for m in runs} == {method}
        assert all(m["config"]["train_size"] == 64 and m["complete"] for m in runs)
        entry = report["labels"][label]
        assert entry["seeds_done"] == 2 and [r["final"]["top1"] for r in entry["runs"]] == [
            m["final"]["top1"] for m in runs
        ]
        assert entry["runs"][1]["history"] == runs[1]["history"]
        for key in ("top1", "top5", "ece", "loc_gt_known"):  # mean and sample std by hand
            a, b = (m["final"][key] for m in runs)
            assert entry["summary"][key]["mean"] == pytest.approx((a + b) / 2)
            assert entry["summary"][key]["std"] == pytest.approx(abs(a - b) / math.sqrt(2))
        assert entry["summary"]["fgsm_error"]["mean"] is None  # --fgsm-eps 0
        last_train = [m["history"][-1]["train_top1"] for m in runs]
        assert entry["summary"]["train_top1"]["mean"] == pytest.approx(sum(last_train) / 2)
        seconds[label] = sum(m["history"][0]["seconds"] for m in runs) / 2  # one epoch each
        for r, m in zip(entry["runs"], runs, strict=True):
            assert (out / label / f"seed{r['seed']}" / "rmix-train.out").read_text().count("=== rmix-compare:") == 1
            assert r["final"]["n"] == m["final"]["n"] == 32
    mix = report["labels"]["mix"]["summary"]["time_vs_reference"]["mean"]
    assert mix == pytest.approx(seconds["mix"] / seconds["vanilla"])
    md = (out / "comparison.md").read_text()
    top1 = report["labels"]["mix"]["summary"]["top1"]
    assert f"| mix | 2/2 | {top1['mean']:.2f} ± {top1['std']:.2f} |" in md
    assert md in printed
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 100, name


@pytest.mark.slow
def test_a_killed_run_is_resumed_from_its_checkpoint(
    tmp_path: Path, child_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    # 5 steps an epoch: the kill lands well before the run ends.
    common = ["--train-size", "200", "--test-size", "32", "--epochs", "3", "--batch-size", "40", "--fgsm-eps", "0"]
    path = out / "vanilla" / "seed0"
    spec = compare.parse_spec("vanilla")
    # The run rmix-compare would start, killed without warning after its first checkpoint.
    cmd = [sys.executable, "-m", "rmix_fast.train", *compare.run_argv(spec, common, 0, path)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (path / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    epochs_before = load_checkpoint(path / "checkpoint.pt")["epoch"] + 1
    assert epochs_before < 3  # the run is incomplete: the case under test

    assert compare.main(["--out", str(out), "--method", "vanilla", "--threads", "1", "--", *common]) == 0
    assert f"resume after epoch {epochs_before} vanilla seed0" in capsys.readouterr().out.replace("  ", " ")
    assert f"resumed from {path / 'checkpoint.pt'} after epoch {epochs_before}/3" in (path / "train.log").read_text()
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["complete"] and [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert report_of(out)["labels"]["vanilla"]["runs"][0]["final"]["top1"] == metrics["final"]["top1"]


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_rest_aggregated(
    tmp_path: Path, child_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    absent = tmp_path / "no-cifar"
    argv = ["--out", str(out), "--method", "c=--method vanilla --dataset cifar10 --data-dir " + str(absent)]
    assert compare.main([*argv, "--", "--epochs", "1"]) == 1
    captured = capsys.readouterr()
    assert "FAILED  c seed0 (exit 1)" in captured.out and str(absent) in captured.out  # the run's own error
    assert "1 run(s) failed: c seed0" in captured.err
    assert report_of(out)["missing"] == [{"label": "c", "seed": 0, "state": "partial"}]


@pytest.mark.slow
def test_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rmix_fast.compare", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert "usage: rmix-compare --out DIR" in done.stdout
    path = Path(sys.executable).parent / "rmix-compare"
    if path.exists():  # installed with pip install -e .
        assert "usage: rmix-compare" in subprocess.run([str(path), "--help"], capture_output=True, text=True).stdout
