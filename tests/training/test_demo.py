"""The demo (the README's main command) runs every method on the same budget and reports real numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rmix_fast.training import demo

pytestmark = pytest.mark.slow  # end-to-end runs


def test_demo_compares_methods_and_writes_pictures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--epochs", "1", "--train-size", "80", "--test-size", "40", "--no-progress"]
    assert demo.main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == list(demo.DEFAULT_METHODS)
    for method, r in results.items():
        # The table prints the numbers of the runs' own metrics.json files.
        final = json.loads((out / method / "metrics.json").read_text())["final"]
        assert r["top1"] == final["top1"]
        line = next(line for line in printed.splitlines() if re.match(rf"{method}\s+\d", line))  # its table row
        assert f"{final['top1']:.2f}" in line and f"{final['ece']:.2f}" in line
        for png in ("curves.png", "reliability.png", "mixed_samples.png"):
            assert (out / method / png).is_file()
    assert (out / "comparison.png").stat().st_size > 1000
    speed = json.loads((out / "results.json").read_text())["speed"]
    assert [r["shape"] for r in speed] == ["100x3x32x32", "32x3x224x224"]
    evidence = json.loads((out / "evidence.json").read_text())["results"]
    assert list(evidence) == ["mixup", "cutmix", "rmix", "rmix-oracle", "rmix-checkpoint"]
    for method, r in evidence.items():  # the evidence table prints the measured rows
        assert re.search(rf"{method}\s+\|\s+{r['mismatch']:.3f} \| {r['hidden_mass']:.3f}", printed), method
    for r in speed:  # the speed table prints the measured rows
        assert re.search(rf"{r['shape']}\s+\w+\s+{r['rmix_fast_ms']:.2f}\s+{r['paper_ms']:.1f}", printed)


def test_demo_rejects_bad_budgets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_rlmix_runs_with_the_authors_rollout_in_epochs() -> None:
    assert demo.method_options("rlmix", 40) == ["--agent-steps", "80", "--agent-minibatch", "20"]
    assert demo.method_options("rlmix", 0) == ["--agent-steps", "2", "--agent-minibatch", "1"]
    assert demo.method_options("cutmix", 40) == ["--mix-prob", "0.5"] and demo.method_options("rmix", 40) == []
