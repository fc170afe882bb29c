"""rmix-train's steps never wait for the device: ``Trainer.step`` (saliency pass, mixer, loss, backward,
optimizer and scheduler) reads nothing back, and an epoch reads its sums back once, at its end, however
many steps it has. On the CPU through ``HostReadProbe`` (see ``helpers/sync_probe.py`` for what counts as a
device value); on a GPU through ``torch.cuda.set_sync_debug_mode``."""

from __future__ import annotations

import warnings

import pytest
import torch

from rmix_fast.mixers import AmortisedRMix, RLMix
from rmix_fast.training.batches import iterate_batches, to_pixels
from rmix_fast.training.methods import METHODS
from rmix_fast.training.options import parse_args
from rmix_fast.training.trainer import Trainer
from tests.helpers.sync_probe import HostReadProbe

# 4 steps of 20 16-pixel images per epoch (the shapes dataset needs no files).
TINY = ["--dataset", "shapes", "--model", "small_cnn", "--image-size", "16", "--train-size", "80",
        "--test-size", "20", "--batch-size", "20", "--epochs", "3", "--no-progress", "--grids", "4"]  # fmt: skip


# RL-Mix's agent updates every 2 steps, so the probed steps include PPO updates.
METHOD_ARGS = {"rlmix": ["--agent-steps", "2", "--agent-minibatch", "1"]}


def _trainer(tmp_path, method: str, device: str, *extra: str) -> Trainer:
    argv = [
        *TINY,
        "--method",
        method,
        "--device",
        device,
        "--out",
        str(tmp_path / method),
        *METHOD_ARGS.get(method, []),
    ]
    args = parse_args([*argv, *extra])
    trainer = Trainer(args)
    trainer.start_fresh()
    return trainer


def _declare_host_state(probe: HostReadProbe, trainer: Trainer) -> None:
    """RL-Mix's Adam keeps its step counts as CPU tensors on every device (not capturable): reading them in
    the agent's update is a host read there, not a sync."""
    if isinstance(trainer.mixer, RLMix):
        probe.declare_host(*(state["step"] for state in trainer.mixer.agent.optimizer.state.values()))
    if isinstance(trainer.mixer, AmortisedRMix):  # its host copy of the store's flags
        probe.declare_host(trainer.mixer._seen_host)


def _batches(trainer: Trainer, n: int):
    stream = iterate_batches(trainer.train_set, trainer._batches(0)[:n], device=trainer.device)
    return [(to_pixels(xb, augment=True, generator=torch.Generator().manual_seed(0)), yb) for xb, yb, _ in stream]


def _limit_steps(trainer: Trainer, n: int) -> None:
    """Make ``train_epoch`` run only the first ``n`` batches of its epoch."""
    full = Trainer._batches.__get__(trainer)
    trainer._batches = lambda epoch: full(epoch)[:n]


@pytest.mark.parametrize("method", tuple(METHODS))
@pytest.mark.parametrize("mix_prob", [1.0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_a_training_step_reads_nothing_back(tmp_path, method, mix_prob):
    if method == "adautomix" and mix_prob != 1.0:
        pytest.skip("AdAutoMix mixes every batch (--mix-prob must be 1)")
    trainer = _trainer(tmp_path, method, "cpu", "--mix-prob", str(mix_prob))
    for x, y in _batches(trainer, 3):
        with HostReadProbe() as probe:
            _declare_host_state(probe, trainer)
            trainer.step(x, y)
        assert not probe.reads, "\n".join(map(str, probe.reads))


@pytest.mark.parametrize("method", ["rmix", "manifold", "rlmix"])
def test_a_clean_loss_step_reads_nothing_back(tmp_path, method):
    trainer = _trainer(tmp_path, method, "cpu", "--clean-loss-weight", "0.5")
    for x, y in _batches(trainer, 3):
        with HostReadProbe() as probe:
            _declare_host_state(probe, trainer)
            trainer.step(x, y)
        assert not probe.reads, "\n".join(map(str, probe.reads))


@pytest.mark.parametrize("clean_loss", ["0", "0.5"])
def test_an_amortised_step_reads_nothing_back(tmp_path, clean_loss):
    """R-Mix with --saliency-source amortised: epoch 1's batches take the fresh pass (their samples are new),
    epoch 2's mix from the store; the sampler's indices are host memory."""
    trainer = _trainer(tmp_path, "rmix", "cpu", "--saliency-source", "amortised", "--clean-loss-weight", clean_loss)
    calls = []
    for epoch, steps in ((0, 4), (1, 2)):  # 4 steps an epoch
        for xb, yb, idx in iterate_batches(trainer.train_set, trainer._batches(epoch)[:steps], device=trainer.device):
            x = to_pixels(xb, augment=True, generator=torch.Generator().manual_seed(0))
            calls.append(trainer.mixer.needs_grad_for(idx))
            with HostReadProbe() as probe:
                probe.declare_host(idx)
                _declare_host_state(probe, trainer)
                trainer.step(x, yb, idx)
            assert not probe.reads, "\n".join(map(str, probe.reads))
        trainer.mixer.end_epoch()
    assert calls == [True] * 4 + [False] * 2


def test_an_epoch_reads_its_sums_back_once(tmp_path):
    trainer = _trainer(tmp_path, "rmix", "cpu")
    trainer.train_epoch(0)  # the first epoch also keeps a sample batch for the picture
    for epoch, steps in ((1, 1), (2, 3)):
        _limit_steps(trainer, steps)
        with HostReadProbe() as probe:
            row = trainer.train_epoch(epoch)
        assert trainer.scheduler.last_epoch == 4 + 1 + (steps if epoch == 2 else 0)
        assert [(r.op, r.where[0].split(" in ")[1]) for r in probe.reads] == [("Tensor.tolist", "train_epoch")]
        assert 0 < row["train_loss"] < 10 and 0 <= row["train_top1"] <= 100


def test_an_amortised_epoch_reads_its_sums_and_the_store_s_flags_once(tmp_path):
    trainer = _trainer(tmp_path, "rmix", "cpu", "--saliency-source", "amortised")
    trainer.train_epoch(0)
    _limit_steps(trainer, 3)
    with HostReadProbe() as probe:
        _declare_host_state(probe, trainer)
        row = trainer.train_epoch(1)
    where = [(r.op, r.where[0].split(" in ")[1]) for r in probe.reads]
    assert where == [("Tensor.cpu", "_mirror_store"), ("Tensor.tolist", "train_epoch")]
    assert row["amortised_share"] == 1.0


@pytest.mark.cuda
@pytest.mark.parametrize("method", tuple(METHODS))
def test_a_training_step_does_not_sync_on_cuda(tmp_path, method):
    trainer = _trainer(tmp_path, method, "cuda")
    trainer.step(*_batches(trainer, 1)[0])  # the first step compiles and tunes kernels, which may synchronise
    torch.cuda.synchronize()
    gen = torch.Generator().manual_seed(1)
    torch.cuda.set_sync_debug_mode("error")
    try:  # the loop's whole step: the batch to the device, its augmentation, the training step
        for xb, yb, _ in iterate_batches(trainer.train_set, trainer._batches(0), device=trainer.device):
            trainer.step(to_pixels(xb, augment=True, generator=gen), yb)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.cuda
def test_an_epoch_syncs_only_at_its_end_on_cuda(tmp_path):
    trainer = _trainer(tmp_path, "rmix", "cuda")
    trainer.train_epoch(0)  # compiles and tunes every kernel of the run
    syncs = []
    for epoch, steps in ((1, 1), (2, 3)):
        _limit_steps(trainer, steps)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_epoch(epoch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs.append(sum("synchroniz" in str(w.message) for w in caught))
    assert syncs[0] == syncs[1] <= 1, syncs  # the epoch's sums come back once
