"""Manifold Mixup's own behaviour: the forward continues from ``lam*h + (1-lam)*h[perm]`` at the drawn layer
(checked against the layers run by hand), the layer is uniform over the input and the given layers, the
hook lives for one forward (also when the forward raises), labels mix by lam, draws follow the seed, lam is
Beta(2, 2) by default, gradients reach both partners, bad layers. The family contract (``mixer(x, y)``:
Mixup at the input) is in ``test_mixer_family.py``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import rmix_fast
from rmix_fast import reference
from rmix_fast.mixers import ManifoldMixup
from tests.helpers.mixer_cases import K, batch, make

# Layer k's output is net[:END[k]](x): 0 the input, 1 after the first ReLU, 2 after the Tanh.
END = {0: 0, 1: 2, 2: 4}


def _net(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)  # the global RNG is restored after each test (conftest)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, K),
    )
    return net.to(dtype)


def _layers(net: nn.Sequential) -> list[nn.Module]:
    return [net[1], net[3]]


def _forward(mixer: ManifoldMixup, net: nn.Sequential, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with mixer.mixing(x, y, layers=_layers(net)) as (x_in, y_soft):
        logits = net(x_in)
    return x_in, y_soft, logits


def _hooks(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


def _seed_for_layer(layer: int, x: Tensor, y: Tensor) -> int:
    """A generator seed whose first draw is ``layer``."""
    net = _net(x.dtype)
    for seed in range(100):
        mixer = make(ManifoldMixup, seed=seed)
        _forward(mixer, net, x, y)
        if mixer.last_params.layer == layer:
            return seed
    raise AssertionError(f"no seed below 100 draws layer {layer}")


def test_the_forward_continues_from_the_exact_mix_at_the_drawn_layer():
    x, y, _ = batch(B=6, H=8, W=8)
    net = _net()
    mixer = make(ManifoldMixup)
    seen = set()
    for _ in range(12):
        x_in, _, logits = _forward(mixer, net, x, y)
        p = mixer.last_params
        assert p.applied and p.layer in END
        seen.add(p.layer)
        with torch.no_grad():
            h = net[: END[p.layer]](x)  # the unmixed activation, the layers run by hand (no hook left)
            want_h = reference.lerp(h[p.perm], h, p.lam.view(-1, 1, 1, 1))
            want_logits = net[END[p.layer] :](want_h)
        assert torch.equal(x_in, want_h if p.layer == 0 else x)  # the model is given x unless the input is mixed
        assert torch.equal(logits.detach(), want_logits)
    assert seen == {0, 1, 2}


def _mix_seen_by_the_next_layer(mixer: ManifoldMixup, net: nn.Sequential, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The drawn layer's unmixed output ("h") and what the module after it receives ("mixed")."""
    got: dict[str, Tensor] = {}
    handles = []
    for k in (1, 2):
        # registered before the mixer's hook: sees the unmixed output; the next module's input is the mix
        handles.append(_layers(net)[k - 1].register_forward_hook(lambda m, a, out, k=k: got.__setitem__(f"h{k}", out)))
        handles.append(net[END[k]].register_forward_pre_hook(lambda m, a, k=k: got.__setitem__(f"mixed{k}", a[0])))
    try:
        _forward(mixer, net, x, y)
    finally:
        for handle in handles:
            handle.remove()
    layer = mixer.last_params.layer
    return {"h": got[f"h{layer}"].detach(), "mixed": got[f"mixed{layer}"].detach()}


def test_the_hidden_activation_the_next_layer_sees_is_the_mix():
    x, y, _ = batch(B=5, H=8, W=8)
    net = _net()
    for layer in (1, 2):
        mixer = make(ManifoldMixup, seed=_seed_for_layer(layer, x, y))
        got = _mix_seen_by_the_next_layer(mixer, net, x, y)
        p = mixer.last_params
        assert p.layer == layer
        lam = p.lam.view(-1, 1, 1, 1)
        assert torch.equal(got["mixed"], reference.lerp(got["h"][p.perm], got["h"], lam))
        torch.testing.assert_close(got["mixed"], lam * got["h"] + (1 - lam) * got["h"][p.perm])


def test_the_layer_is_drawn_uniformly_among_the_input_and_the_layers():
    x, y, _ = batch(B=2, H=4, W=4)
    net = _net()
    mixer = make(ManifoldMixup, seed=1)
    counts = [0, 0, 0]
    for _ in range(300):
        _forward(mixer, net, x, y)
        counts[mixer.last_params.layer] += 1
    assert all(70 <= c <= 130 for c in counts), counts  # 100 each, +-3.7 sd
    # without layers the input is the only choice
    alone = make(ManifoldMixup)
    for _ in range(5):
        alone(x, y)
        assert alone.last_params.layer == 0


def test_the_hook_lives_for_one_forward_only():
    x, y, _ = batch(B=4, H=8, W=8)
    net = _net()
    mixer = make(ManifoldMixup, seed=_seed_for_layer(1, x, y))
    with mixer.mixing(x, y, layers=_layers(net)) as (x_in, _):
        assert len(net[1]._forward_hooks) == 1 and _hooks(net) == 1
        first = net(x_in)
        second = net(x_in)  # a second forward in the block passes the layer through unmixed
    assert _hooks(net) == 0
    assert not torch.equal(first, second)
    assert torch.equal(second, net(x))


class Boom(Exception):
    pass


class Fail(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise Boom


@pytest.mark.parametrize("where", ["forward", "block"])
def test_the_hook_is_gone_after_an_exception(where):
    x, y, _ = batch(B=4, H=8, W=8)
    for layer in (1, 2):
        net = _net()
        if where == "forward":  # raises inside the model, after the hooked layer has run
            net = nn.Sequential(*net[:4], Fail())
        mixer = make(ManifoldMixup, seed=_seed_for_layer(layer, x, y))
        with pytest.raises(Boom), mixer.mixing(x, y, layers=_layers(net)) as (x_in, _):
            assert _hooks(net) == 1
            net(x_in)
            raise Boom
        assert mixer.last_params.layer == layer
        assert _hooks(net) == 0


def test_a_layer_the_forward_never_runs_is_an_error_and_leaves_no_hook():
    x, y, _ = batch(B=4, H=8, W=8)
    net = _net()
    stray = nn.ReLU()  # not part of the network
    mixer = make(ManifoldMixup, seed=_seed_for_layer(1, x, y))
    with pytest.raises(RuntimeError, match="did not run layer 1"), mixer.mixing(x, y, layers=[stray, net[3]]) as xy:
        net(xy[0])
    assert len(stray._forward_hooks) == 0 and _hooks(net) == 0


def test_labels_mix_by_lam():
    x, y, _ = batch(B=6, H=8, W=8)
    net = _net()
    mixer = make(ManifoldMixup, label_smoothing=0.1)
    for _ in range(6):
        _, y_soft, _ = _forward(mixer, net, x, y)
        p = mixer.last_params
        t = rmix_fast.soft_targets(y, K, 0.1)
        assert torch.equal(p.lam_eff, p.lam)
        assert torch.equal(y_soft, torch.lerp(t[p.perm], t, p.lam.unsqueeze(1)))
        torch.testing.assert_close(y_soft, p.lam[:, None] * t + (1 - p.lam[:, None]) * t[p.perm])


def test_same_seed_same_draws():
    x, y, _ = batch(B=6, H=8, W=8)
    net = _net()
    runs = []
    for seed in (3, 3, 4):
        mixer = make(ManifoldMixup, seed=seed)
        draws = []
        for _ in range(5):
            _, y_soft, logits = _forward(mixer, net, x, y)
            p = mixer.last_params
            draws.append((p.layer, p.lam.tolist(), p.perm.tolist(), y_soft, logits.detach()))
        runs.append(draws)
    same = [(a[:3], torch.equal(a[3], b[3]), torch.equal(a[4], b[4])) for a, b in zip(*runs[:2], strict=True)]
    assert all(eq_y and eq_logits for _, eq_y, eq_logits in same)
    assert [d[:3] for d in runs[0]] == [d[:3] for d in runs[1]]
    assert [d[:3] for d in runs[0]] != [d[:3] for d in runs[2]]


def test_lam_is_beta_2_2_by_default():
    mixer = ManifoldMixup(K, generator=torch.Generator().manual_seed(0))
    assert mixer.alpha == 2.0
    x, y, _ = batch(B=2, H=2, W=2)
    lams = []
    for _ in range(1000):
        mixer(x, y)
        lams.append(float(mixer.last_params.lam[0]))
    lams = torch.tensor(sorted(lams), dtype=torch.float64)
    cdf = 3 * lams**2 - 2 * lams**3  # Beta(2, 2)
    n = len(lams)
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max()
    assert ks < 1.36 / n**0.5  # Kolmogorov-Smirnov at the 5% level
    assert abs(float(lams.var()) - 0.05) < 0.008  # Beta(1, 1) would give 1/12


@pytest.mark.slow  # gradcheck through a network: seconds each
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_gradients_reach_both_partners(layer):
    x, y, _ = batch(B=3, H=6, W=6)
    seed = _seed_for_layer(layer, x, y)
    net = _net(torch.float64)
    x = x.double().requires_grad_(True)

    def f(x: Tensor) -> Tensor:
        mixer = make(ManifoldMixup, seed=seed)  # the same draws at every call
        with mixer.mixing(x, y, layers=_layers(net)) as (x_in, _):
            return net(x_in)

    assert torch.autograd.gradcheck(f, (x,))


def test_prob_passes_batches_through_without_a_hook():
    x, y, _ = batch(B=4, H=8, W=8)
    net = _net()
    mixer = make(ManifoldMixup, prob=0.0)
    with mixer.mixing(x, y, layers=_layers(net)) as (x_in, y_soft):
        assert x_in is x and _hooks(net) == 0
        net(x_in)
    assert not mixer.last_params.applied
    assert torch.equal(y_soft, rmix_fast.soft_targets(y, K))


def test_outputs_of_any_shape_and_layout_mix_elementwise():
    x, y, _ = batch(B=4, H=4, W=4)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, K))
    got: dict[str, Tensor] = {}
    mlp[1].register_forward_hook(lambda m, a, out: got.__setitem__("h", out.detach().clone()))
    mlp[2].register_forward_pre_hook(lambda m, a: got.__setitem__("mixed", a[0].detach()))
    for seed in range(20):
        mixer = make(ManifoldMixup, seed=seed)
        with mixer.mixing(x, y, layers=[mlp[1]]) as (x_in, _):
            mlp(x_in)
        p = mixer.last_params
        if p.layer == 1:
            assert got["mixed"].shape == (4, 8)
            assert torch.equal(got["mixed"], reference.lerp(got["h"][p.perm], got["h"], p.lam[:, None]))
            break
    else:
        raise AssertionError("layer 1 never drawn")

    # a channels_last bf16 feature map stays so
    net = _net(torch.bfloat16).to(memory_format=torch.channels_last)
    xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    net[2].register_forward_pre_hook(lambda m, a: got.__setitem__("cl", a[0]))
    mixer = make(ManifoldMixup, seed=_seed_for_layer(1, x, y))
    _forward(mixer, net, xb, y)
    assert mixer.last_params.layer == 1
    assert got["cl"].dtype == torch.bfloat16 and got["cl"].is_contiguous(memory_format=torch.channels_last)


def test_bad_layers():
    x, y, _ = batch(B=4, H=8, W=8)
    net = _net()
    mixer = make(ManifoldMixup)
    with pytest.raises(TypeError, match=r"sequence of nn\.Module"), mixer.mixing(x, y, layers=net):
        pass
    with pytest.raises(TypeError, match=r"nn\.Module instances"), mixer.mixing(x, y, layers=[net[1], "layer2"]):
        pass
    # a layer whose output is no (B, ...) float tensor
    flat = nn.Sequential(nn.Flatten(0), nn.Identity(), nn.Linear(4 * 3 * 64, K))
    mixer = make(ManifoldMixup, seed=_seed_for_layer(1, x, y))
    with pytest.raises(ValueError, match=r"layer 1 must output a float tensor \(B=4"):
        with mixer.mixing(x, y, layers=[flat[1]]) as (x_in, _):
            flat(x_in)
    assert mixer.last_params.layer == 1 and _hooks(flat) == 0
