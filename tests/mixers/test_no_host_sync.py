"""A whole mixer step (``input_gradient``, the mixer call, the loss and its backward) never waits for the
device: no device value is read back on the host and no copy blocks.

On the CPU, ``HostReadProbe`` (``helpers/sync_probe.py``) stands in for the GPU: it fails on
``aten._local_scalar_dense`` / ``is_nonzero`` / ``equal`` (and ``tolist`` / ``numpy`` / ``cpu``) of any value
that would live on the accelerator, i.e. anything computed from the batch, the labels or the weights.
Reads of the mixer's own CPU generator draws are host memory reads and are allowed: the library draws on
the CPU on purpose, so a seed gives the same draws on every device. On a GPU the same step runs under
``torch.cuda.set_sync_debug_mode("error")``, which also catches blocking host-to-device copies.
"""

from __future__ import annotations

import pytest
import torch

import rmix_fast
from rmix_fast.losses import SoftTargetCrossEntropy
from rmix_fast.rl import PPOConfig
from tests.helpers.sync_probe import HostReadError, HostReadProbe
from tests.helpers.toy_task import ToyCNN

K = 4  # ToyCNN's classes
MIXERS = (rmix_fast.Mixup, rmix_fast.CutMix, rmix_fast.RMix, rmix_fast.ManifoldMixup, rmix_fast.RLMix)
# RL-Mix's agent updates every 2 steps here, so the probed steps include its PPO updates.
SMALL_PPO = PPOConfig(n_steps=2, minibatch=1, epochs=2)
CPU_BACKENDS = [
    name
    for name, info in rmix_fast.available_backends("cpu").items()
    # The Triton interpreter emulates the GPU by reading its tensors on the host; compiled Triton is
    # covered by the GPU test.
    if info.available and name != "triton"
]
OPTIONS = {
    "defaults": {},
    "prob": {"prob": 0.5},
    "per_sample_lam": {"per_sample_lam": True},
    "smoothing": {"label_smoothing": 0.1},
}


def _setup(cls, device, backend: str = "auto", seed: int = 0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    model = ToyCNN(K).to(device)
    x = torch.rand(6, 3, 16, 16, generator=g).to(device)
    y = torch.randint(K, (6,), generator=g).to(device)
    if cls is rmix_fast.RLMix:
        kwargs = {"ppo": SMALL_PPO, **kwargs}
    mixer = cls(K, generator=torch.Generator().manual_seed(seed), backend=backend, **kwargs).to(device)
    return model, mixer, x, y


def _step(model, mixer, x, y):
    """One training step of a mixer, as ``rmix-train`` runs it (without the optimizer): the mix wraps the
    forward, so Manifold Mixup draws the input or the output of the first or second conv block; RL-Mix
    observes the clean logits and is rewarded after the backward."""
    grad, clean = rmix_fast.input_gradient(model, x, y, return_logits=True)
    with mixer.mixing(x, y, grad, layers=[model.features[2], model.features[5]], logits=clean) as (x_in, y_soft):
        logits = model(x_in)
    loss = SoftTargetCrossEntropy()(logits, y_soft)
    loss.backward()
    mixer.after_backward()
    return loss


def _declare_host_state(probe: HostReadProbe, mixer) -> None:
    """RL-Mix's Adam keeps its step counts as CPU tensors on every device (not capturable): reading them in
    the agent's update is a host read there, not a sync. AmortisedRMix keeps a host copy of its store's flags
    (it decides from the sampler's host indices whether a batch needs the saliency pass)."""
    if isinstance(mixer, rmix_fast.RLMix):
        probe.declare_host(*(state["step"] for state in mixer.agent.optimizer.state.values()))
    if isinstance(mixer, rmix_fast.AmortisedRMix):
        probe.declare_host(mixer._seen_host)


def _report(probe: HostReadProbe) -> str:
    return f"{len(probe.reads)} host read(s) of device values:\n" + "\n".join(map(str, probe.reads))


# every backend with the defaults, the other options on "auto"
CASES = [("defaults", b) for b in CPU_BACKENDS] + [(o, "auto") for o in OPTIONS if o != "defaults"]


@pytest.mark.parametrize(("option", "backend"), CASES, ids=[f"{o}-{b}" for o, b in CASES])
@pytest.mark.parametrize("cls", MIXERS, ids=lambda c: c.__name__)
def test_a_mixer_step_reads_nothing_back(cls, option, backend):
    model, mixer, x, y = _setup(cls, "cpu", backend, **OPTIONS[option])
    applied = set()
    # several batches: prob < 1 passes some through, R-Mix draws either grid, Manifold a layer, RL-Mix updates
    for i in range(6):
        with HostReadProbe() as probe:
            _declare_host_state(probe, mixer)
            _step(model, mixer, x, y)
        assert not probe.reads, f"batch {i}: {_report(probe)}"
        applied.add(mixer.last_params.applied)
    assert applied == ({True, False} if option == "prob" else {True})


@pytest.mark.parametrize(("option", "backend"), CASES, ids=[f"{o}-{b}" for o, b in CASES])
def test_an_amortised_step_reads_nothing_back(option, backend):
    """AmortisedRMix as rmix-train runs it, the sampler's indices on the host: batches with unseen samples take
    the fresh pass, batches of stored samples mix from the store; storing the routed gradient reads nothing."""
    model, mixer, x, y = _setup(rmix_fast.AmortisedRMix, "cpu", backend, num_samples=12, **OPTIONS[option])
    batches = [torch.arange(6), torch.arange(6, 12), torch.arange(6).flip(0), torch.arange(0, 12, 2)]
    fresh = []
    for i, idx in enumerate(batches):
        with HostReadProbe() as probe:
            probe.declare_host(idx)  # the sampler's indices: host memory on every device
            _declare_host_state(probe, mixer)
            needs = mixer.needs_grad_for(idx)
            grad = rmix_fast.input_gradient(model, x, y) if needs else None
            with mixer.mixing(x, y, grad, indices=idx) as (x_in, y_soft):
                logits = model(x_in)
            SoftTargetCrossEntropy()(logits, y_soft).backward()
            mixer.after_backward()
        assert not probe.reads, f"batch {i}: {_report(probe)}"
        fresh.append(needs)
    assert fresh == [True, True, False, False]


@pytest.mark.parametrize("cls", MIXERS, ids=lambda c: c.__name__)
def test_soft_target_input_reads_nothing_back(cls):
    model, mixer, x, _ = _setup(cls, "cpu")
    y_soft = torch.softmax(torch.randn(6, K), dim=1)
    with HostReadProbe() as probe:
        grad, clean = rmix_fast.input_gradient(model, x, y_soft, return_logits=True)
        x_mix, t = mixer(x, y_soft, grad, logits=clean)
        SoftTargetCrossEntropy()(model(x_mix), t).backward()
        mixer.after_backward()
    assert not probe.reads, _report(probe)


@pytest.mark.parametrize("offset", [K, -1 - K], ids=["too_high", "negative"])
def test_bad_labels_still_raise_on_the_cpu(offset):
    """The range check moved onto the labels' device; on the CPU it still raises a ValueError that says
    which values were found, and a CUDA label fails a device-side assert instead of a read-back."""
    y = torch.tensor([0, 1, 2, 3]) + torch.tensor([0, 0, offset, 0])
    lo, hi = int(y.min()), int(y.max())
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, {K - 1}\], got values in \[{lo}, {hi}\]"):
        rmix_fast.soft_targets(y, K)
    with pytest.raises(ValueError, match="labels must lie in"):
        rmix_fast.Mixup(K)(torch.rand(4, 3, 8, 8), y)


def test_the_probe_sees_planted_reads():
    model, mixer, x, y = _setup(rmix_fast.RMix, "cpu")
    loss = _step(model, mixer, x, y)
    with HostReadProbe() as probe:
        int(y[0])  # _local_scalar_dense
        bool(loss > 0)  # _local_scalar_dense through is_nonzero's decomposition
        torch.equal(x, x)  # equal
        float(mixer.last_params.lam_eff[0])  # the op's output is a device value too
        y.tolist()
        x.cpu()
        torch.is_nonzero(y[:1])
    ops = [r.op for r in probe.reads]
    assert ops == [
        "aten._local_scalar_dense",
        "aten._local_scalar_dense",
        "aten.equal",
        "aten._local_scalar_dense",
        "Tensor.tolist",
        "Tensor.cpu",
        "aten._local_scalar_dense",
    ], ops
    assert "test_no_host_sync.py" in probe.reads[0].where[0]


def test_the_probe_allows_host_draws_and_follows_writes():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3)
    with HostReadProbe(raise_on_read=True):
        draw = torch.randint(5, (3,), generator=g)
        int(draw[0]), float(torch.rand((), generator=g)), draw.tolist()  # host draws: free to read
        int(torch.tensor([1, 2])[1])  # a constant from Python data
        buf = torch.zeros(3)
        view = buf[:2]
        buf.add_(x)  # a device value written into a host buffer
        with pytest.raises(HostReadError, match="_local_scalar_dense"):
            float(view[0])
    # the method wrappers are gone afterwards
    assert "tolist" not in torch.Tensor.__dict__ and "cpu" not in torch.Tensor.__dict__
    assert x.tolist() == x.tolist()


@pytest.mark.cuda
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("cls", MIXERS, ids=lambda c: c.__name__)
def test_a_mixer_step_does_not_sync_on_cuda(cls, option):
    backends = [n for n, info in rmix_fast.available_backends("cuda").items() if info.available]
    for backend in backends:
        model, mixer, x, y = _setup(cls, "cuda", backend, **OPTIONS[option])
        for _ in range(8):  # first calls compile and tune kernels (R-Mix: for either grid), which may synchronise
            _step(model, mixer, x, y)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(4):
                _step(model, mixer, x, y)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
