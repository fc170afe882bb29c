"""R-Mix, and Manifold Mixup with a clean loss, under DistributedDataParallel with 2 CPU processes on gloo,
launched with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # end-to-end runs


def test_steps_under_ddp_with_torchrun(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.helpers.ddp_worker", str(tmp_path)]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"torchrun failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rec in ranks:
        assert rec["world"] == 2 and len(rec["losses"]) == 4  # both ranks stepped
        assert all(rec["local"]), "a rank's mixed batch used images it does not hold"
        assert all(rec["grads_untouched"]), "the saliency pass touched parameter gradients"
    # the data differ per rank, the synchronised parameters do not
    assert ranks[0]["losses"] != ranks[1]["losses"]
    assert ranks[0]["checksums"] == ranks[1]["checksums"]
    # Manifold Mixup with a clean loss: each rank's own draws and batch, gradients averaged over both losses
    for rec in ranks:
        assert all(rec["manifold_grads"]), "the step's gradients are not the ranks' mean of W * clean + mixed"
        assert rec["manifold_hooks"] == [0] * 4
    assert ranks[0]["manifold_layers"] != ranks[1]["manifold_layers"]  # the ranks drew for themselves
    assert ranks[0]["manifold_checksums"] == ranks[1]["manifold_checksums"]
