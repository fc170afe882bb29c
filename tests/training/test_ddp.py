"""R-Mix, Manifold Mixup with a clean loss and RL-Mix under DistributedDataParallel with 2 CPU processes on
gloo, launched with torchrun; and rmix-train's RL-Mix, AdAutoMix and amortised R-Mix under torchrun, stopped
after a checkpoint and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rmix_fast.training.checkpoint import load_checkpoint
from tests.helpers import ddp_adautomix_worker as worker

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # end-to-end runs


def torchrun(module: str, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m module args`` with this checkout's package, one thread per process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", module, *args]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"torchrun failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return run


def resume_and_compare(whole: Path, stopped: Path) -> list[tuple[list[dict], dict]]:
    """Resumes the stopped run under torchrun; the two runs' histories (timings left out) and final metrics."""
    resumed = torchrun("rmix_fast.train", "--out", str(stopped), "--resume")
    assert "resumed from" in resumed.stdout
    results = []
    for run in (whole, stopped):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["complete"] and metrics["world_size"] == 2
        history = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in metrics["history"]]
        results.append((history, metrics["final"]))
    return results


def test_steps_under_ddp_with_torchrun(tmp_path):
    torchrun("tests.helpers.ddp_worker", str(tmp_path))
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


def test_rlmix_agent_under_ddp_with_torchrun(tmp_path):
    torchrun("tests.helpers.ddp_rlmix_worker", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # the ranks built different policies; the first act made both rank 0's, and every update kept them equal
    assert ranks[0]["initial_policy"] != ranks[1]["initial_policy"]
    assert ranks[0]["policy_checksums"] == ranks[1]["policy_checksums"]
    assert ranks[1]["policy_checksums"][0] == ranks[0]["initial_policy"]
    assert ranks[0]["policy_checksums"][4] != ranks[0]["policy_checksums"][3]  # the 5th act updated
    for rec in ranks:
        assert rec["n_updates"] == 2 and rec["stats"]["rl_updates"] == 2
        # each of the 2 x 4 Adam steps was given the ranks' mean gradient, as one process holding both
        # rollouts computes it, and the replayed updates end on the agent's policy: both bit for bit
        assert [exact for grads in rec["mean_grads"] for exact, _ in grads] == [True] * 8
        assert [exact for exact, _ in rec["replayed_policy"]] == [True, True]
    # each rank learned from its own data: its own batches, draws, rewards and minibatch losses
    for key in ("losses", "actions", "rewards", "local_losses"):
        assert ranks[0][key] != ranks[1][key], key
    assert ranks[0]["stats"]["rl_reward"] != ranks[1]["stats"]["rl_reward"]


def test_rlmix_training_under_torchrun_resumes_exactly(tmp_path):
    # 2 steps per rank and epoch, rollouts of 3 steps: the 4th act (epoch 2) updates, epoch 3 does not
    args = ["--dataset", "shapes", "--model", "small_cnn", "--train-size", "80", "--test-size", "40",
            "--batch-size", "20", "--no-progress", "--method", "rlmix", "--epochs", "3",
            "--agent-steps", "3", "--agent-minibatch", "2", "--agent-epochs", "2"]  # fmt: skip
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    torchrun("rmix_fast.train", *args, "--out", str(whole))
    torchrun("tests.helpers.stop_after_epoch", "2", *args, "--out", str(stopped))

    state = load_checkpoint(stopped / "checkpoint.pt")
    assert state["epoch"] == 1
    lagging = json.loads((stopped / "metrics.json").read_text())  # stopped before epoch 2's metrics
    assert len(lagging["history"]) == 1 and not lagging["complete"]
    assert len(state["mixer_ranks"]) == 2
    agents = [mixer["agent._extra_state"] for mixer in state["mixer_ranks"]]
    assert [a["n_updates"] for a in agents] == [1, 1]
    # one policy: its weights and its optimizer's moments bit-identical on both ranks
    policies = [{k: v for k, v in mixer.items() if k.startswith("agent.policy.")} for mixer in state["mixer_ranks"]]
    assert policies[0].keys() == policies[1].keys() and len(policies[0]) > 0
    assert all(torch.equal(policies[0][k], policies[1][k]) for k in policies[0])
    moments = [a["optimizer"]["state"] for a in agents]
    assert moments[0].keys() == moments[1].keys() and len(moments[0]) > 0
    for i in moments[0]:
        assert all(torch.equal(moments[0][i][k], moments[1][i][k]) for k in ("exp_avg", "exp_avg_sq"))
    buffers = [a["buffer"] for a in agents]
    assert [b["pos"] for b in buffers] == [1, 1]
    assert not torch.equal(buffers[0]["saliency"], buffers[1]["saliency"])  # each rank its own rollout
    assert not torch.equal(buffers[0]["rewards"][:1], buffers[1]["rewards"][:1])
    assert state["mixer"].keys() == state["mixer_ranks"][0].keys()  # rank 0's own, for a single-process resume

    results = resume_and_compare(whole, stopped)
    # epoch 3 does not update: both runs report epoch 2's update there (the resumed one from the checkpoint)
    assert results[1] == results[0]
    assert "rl_policy_loss" in results[1][0][2]
    assert [row["rl_updates"] for row in results[0][0]] == [0, 1, 1]


def test_adautomix_training_under_torchrun_stays_in_sync_and_resumes_exactly(tmp_path):
    args = ["--dataset", "shapes", "--model", "small_cnn", "--train-size", "80", "--test-size", "40", "--image-size",
            "16", "--batch-size", "20", "--no-progress", "--method", "adautomix", "--epochs", "3"]  # fmt: skip
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    torchrun("rmix_fast.train", *args, "--out", str(whole))
    torchrun("tests.helpers.stop_after_epoch", "2", *args, "--out", str(stopped))

    state = load_checkpoint(stopped / "checkpoint.pt")
    assert state["epoch"] == 1 and len(state["mixer_ranks"]) == 2
    ranks = state["mixer_ranks"]
    # the generator's, the one-hot head's and the teacher's parameters and the generator's SGD momentum:
    # bit-identical on both ranks after 4 steps on different batches. BatchNorm running statistics are each
    # rank's own between steps (every step starts from rank 0's, as DDP's broadcast_buffers does).
    assert ranks[0].keys() == ranks[1].keys()
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    tensors = [k for k, v in ranks[0].items() if isinstance(v, torch.Tensor) and not k.endswith(statistics)]
    for prefix in ("mask_generator.", "head_one.", "teacher.module."):
        assert any(k.startswith(prefix) for k in tensors), prefix
    for key in tensors:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert not torch.equal(ranks[0]["teacher.module.net.features.0.1.running_mean"],
                           ranks[1]["teacher.module.net.features.0.1.running_mean"])  # fmt: skip
    extra = [r["_extra_state"] for r in ranks]
    assert [e["iteration"] for e in extra] == [4, 4]
    moments = [e["optimizer"]["state"] for e in extra]
    assert moments[0].keys() == moments[1].keys() and len(moments[0]) > 0
    for i in moments[0]:
        assert torch.equal(moments[0][i]["momentum_buffer"], moments[1][i]["momentum_buffer"])
    # the teacher moved away from its initial copy of the model (the EMA ran on every rank alike)
    assert not torch.equal(ranks[0]["teacher.module.net.classifier.weight"], state["model"]["net.classifier.weight"])

    results = resume_and_compare(whole, stopped)
    assert results[1] == results[0]
    assert "adautomix_mix_k" in results[0][0][0]


def test_adautomix_step_averages_every_gradient_over_the_ranks(tmp_path):
    mp.spawn(worker.run, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert not torch.equal(ranks[0]["loss"], ranks[1]["loss"])  # each rank its own batch and draws
    # rank 1 started with other BatchNorm statistics; the step starts from rank 0's on both
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["after_broadcast"], ranks[1]["after_broadcast"], strict=True))
    # the classifier's, the one-hot head's and the generator's gradients: exactly the mean of the ranks' own
    assert len(ranks[0]["averaged"]) == len(ranks[0]["local"]) > 0
    for i, (a0, a1) in enumerate(zip(ranks[0]["averaged"], ranks[1]["averaged"], strict=True)):
        mean = (ranks[0]["local"][i] + ranks[1]["local"][i]) / 2
        assert torch.equal(a0, mean) and torch.equal(a1, mean), i
    assert any(not torch.equal(r0, r1) for r0, r1 in zip(ranks[0]["local"], ranks[1]["local"], strict=True))
    # after the step the parameters (classifier, generator, head, teacher) agree bit for bit
    for key in ranks[0]["model"]:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(ranks[0]["model"][key], ranks[1]["model"][key]), key
    for key in ranks[0]["mixer"]:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(ranks[0]["mixer"][key], ranks[1]["mixer"][key]), key


def test_amortised_rmix_under_torchrun_keeps_identical_stores_and_resumes_exactly(tmp_path):
    # 2 steps per rank and epoch: each rank sees half the samples an epoch, and stores every rank's maps
    args = ["--dataset", "shapes", "--model", "small_cnn", "--train-size", "80", "--test-size", "40",
            "--batch-size", "20", "--no-progress", "--method", "rmix", "--saliency-source", "amortised",
            "--epochs", "3"]  # fmt: skip
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    torchrun("rmix_fast.train", *args, "--out", str(whole))
    torchrun("tests.helpers.stop_after_epoch", "2", *args, "--out", str(stopped))

    state = load_checkpoint(stopped / "checkpoint.pt")
    assert state["epoch"] == 1 and len(state["mixer_ranks"]) == 2
    stores = [{k: v for k, v in mixer.items() if k.startswith("store.")} for mixer in state["mixer_ranks"]]
    assert stores[0].keys() == {"store.maps", "store.seen"} == stores[1].keys()
    for key in stores[0]:
        assert torch.equal(stores[0][key], stores[1][key]), f"the ranks' {key} differ"
    assert bool(stores[0]["store.seen"].all())
    assert (stores[0]["store.maps"].float().sum(dim=(1, 2)) - 1).abs().max() < 1e-2  # maps that sum to 1

    results = resume_and_compare(whole, stopped)
    assert results[1] == results[0]
    # epoch 1 meets every sample for the first time; from epoch 2 on each rank knows the other's samples too
    assert [row["amortised_share"] for row in results[0][0]] == [0.0, 1.0, 1.0]
