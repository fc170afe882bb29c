"""R-Mix under DistributedDataParallel with 2 CPU processes on gloo, launched with torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # end-to-end runs


def test_rmix_step_under_ddp_with_torchrun(tmp_path):
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
