"""The model zoo (``rmix_fast.training.models``): shapes, the pooled-linear head CAM relies on, parameter counts, the
torchvision ResNet-50 layout, layouts and input sizes, gradients, and argument checks."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from rmix_fast.mixers import ManifoldMixup
from rmix_fast.training.models import (
    MODEL_NAMES,
    CifarResNeXt,
    ImageClassifier,
    PreActResNet,
    ResNet,
    WideResNet,
    build_model,
)

K = 100  # class count of the cached models: the parameter counts below are stated at 100 classes
CIFAR_MODELS = [n for n in MODEL_NAMES if n != "resnet50"]

# Exact parameter counts at 100 classes, each checked by hand from the layer shapes (weights + biases, BN affine):
#   small_cnn:      3*32*9 + 32*64*9 + 64*128*9 + 128*128*9 + BN 2*(32+64+128+128) + 128*100 + 100
#   preactresnet18: stem 1,728 + stages 147,968 / 525,184 / 2,098,944 / 8,392,192 + final BN 1,024 + fc 51,300
#                   (the Manifold Mixup / PuzzleMix variant; kuangliu's, without the final BN, has 1,024 fewer)
#   wrn16_8:        stem 432 + stages 463,648 / 2,098,944 / 8,392,192 + final BN 1,024 + fc 51,300
#   wrn28_10:       36,536,884, the published WRN-28-10 CIFAR-100 count (36.5 M)
#   resnext29_4_24: stem+BN 1,856 + stages 210,816 / 926,976 / 3,695,104 + fc 102,500
#   resnet50:       23,712,932 here; 25,557,032 at 1000 classes (torchvision's documented count, tested below)
PARAMS_AT_100 = {
    "small_cnn": 254_084,
    "preactresnet18": 11_218_340,
    "wrn16_8": 11_007_540,
    "wrn28_10": 36_536_884,
    "resnext29_4_24": 4_937_252,
    "resnet50": 23_712_932,
}
FEATURES = {  # (F, h, w) for a 32x32 input (64x64 for resnet50)
    "small_cnn": (128, 8, 8),
    "preactresnet18": (512, 4, 4),
    "wrn16_8": (512, 8, 8),
    "wrn28_10": (640, 8, 8),
    "resnext29_4_24": (1024, 8, 8),
    "resnet50": (2048, 2, 2),
}
ODD_FEATURES = {  # (h, w) for a 36x28 input
    "small_cnn": (9, 7),
    "preactresnet18": (5, 4),
    "wrn16_8": (9, 7),
    "wrn28_10": (9, 7),
    "resnext29_4_24": (9, 7),
}


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def cached_model(name: str) -> ImageClassifier:
    """One model per name for the read-only tests, in eval mode so outputs do not depend on the batch."""
    torch.manual_seed(0)
    return build_model(name, K).eval()


def side(name: str) -> int:
    return 64 if name == "resnet50" else 32


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_is_the_linear_head_of_pooled_features(name):
    model = cached_model(name)
    assert isinstance(model, ImageClassifier)
    assert model.num_classes == K and model.in_channels == 3
    assert isinstance(model.classifier, torch.nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (model.num_features, K)
    x = torch.randn(2, 3, side(name), side(name), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (2, K)
    assert features.shape == (2, *FEATURES[name])
    assert features.shape[1] == model.num_features
    assert torch.isfinite(logits).all()
    assert (features >= 0).all(), "features must be taken after the final ReLU"
    torch.testing.assert_close(logits, model.classifier(features.mean(dim=(2, 3))))
    # CAM: the spatial mean of the class activation maps plus the bias gives the logits back.
    cam = model.class_activation_maps(features)
    assert cam.shape == (2, K, *FEATURES[name][1:])
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + model.classifier.bias, logits, rtol=1e-4, atol=1e-4)


# (C, h, w) of the outputs of mix_layers() (the ends of stages 1 and 2) for a 16x16 input (32x32 for resnet50)
MIX_SHAPES = {
    "small_cnn": [(32, 16, 16), (64, 8, 8)],
    "preactresnet18": [(64, 16, 16), (128, 8, 8)],
    "wrn16_8": [(128, 16, 16), (256, 8, 8)],
    "wrn28_10": [(160, 16, 16), (320, 8, 8)],
    "resnext29_4_24": [(256, 16, 16), (512, 8, 8)],
    "resnet50": [(256, 8, 8), (512, 4, 4)],
}


def _seed_drawing_layer(layer: int) -> int:
    """A seed whose ManifoldMixup draws ``layer`` first (with prob 1 the layer is its first draw)."""
    return next(
        s for s in range(100) if int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(s))) == layer
    )


@pytest.mark.parametrize(
    "name", [n if n == "small_cnn" else pytest.param(n, marks=pytest.mark.slow) for n in MODEL_NAMES]
)  # the large networks take seconds each: the slow tier
def test_mix_layers_end_stages_1_and_2_and_manifold_mixup_mixes_them(name):
    model = cached_model(name)
    layers = model.mix_layers()
    assert len(layers) == 2 and all(any(m is sub for sub in model.modules()) for m in layers)
    n = 32 if name == "resnet50" else 16
    x = torch.rand(5, 3, n, n, generator=torch.Generator().manual_seed(2))
    y = torch.arange(5)
    outputs: list[tuple[int, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, a, out, i=i: outputs.append((i, out))) for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            plain = model(x)
        assert [i for i, _ in outputs] == [0, 1]  # run once each, in forward order
        assert [tuple(out.shape[1:]) for _, out in outputs] == MIX_SHAPES[name]
        for layer in (1, 2):
            mixer = ManifoldMixup(K, generator=torch.Generator().manual_seed(_seed_drawing_layer(layer)))
            outputs.clear()
            mixed: list[torch.Tensor] = []
            with torch.no_grad(), mixer.mixing(x, y, layers=layers) as (x_in, _):
                # added after the mixer's hook: sees the output the rest of the network continues from
                late = layers[layer - 1].register_forward_hook(lambda mod, a, out, seen=mixed: seen.append(out))
                logits = model(x_in)
                late.remove()
            p = mixer.last_params
            assert p.layer == layer and x_in is x
            h = outputs[layer - 1][1]
            lam = p.lam.view(-1, 1, 1, 1)
            torch.testing.assert_close(mixed[0], lam * h + (1 - lam) * h[p.perm])
            moved = p.perm != torch.arange(5)  # samples mixed with another one
            assert moved.any() and not torch.allclose(logits[moved], plain[moved])
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts(name):
    assert num_params(cached_model(name)) == PARAMS_AT_100[name]


def test_resnet50_has_torchvisions_parameter_count_at_1000_classes():
    assert num_params(build_model("resnet50", 1000)) == 25_557_032


def torchvision_resnet50_keys() -> set[str]:
    """The state_dict keys of torchvision's resnet50, spelled out from its module layout."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{s}" for s in bn), "fc.weight", "fc.bias"}
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for b in range(blocks):
            prefix = f"layer{layer}.{b}"
            for i in (1, 2, 3):
                keys |= {f"{prefix}.conv{i}.weight", *(f"{prefix}.bn{i}.{s}" for s in bn)}
            if b == 0:
                keys |= {f"{prefix}.downsample.0.weight", *(f"{prefix}.downsample.1.{s}" for s in bn)}
    return keys


def test_resnet50_state_dict_matches_torchvision_layout():
    model = build_model("resnet50", 1000)
    assert isinstance(model, ResNet)
    sd = model.state_dict()
    expected = {k.replace("fc.", "classifier.") if k.startswith("fc.") else k for k in torchvision_resnet50_keys()}
    assert len(expected) == 320
    assert set(sd) == expected
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.bn3.running_var": (2048,),
        "classifier.weight": (1000, 2048),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # v1.5: a downsampling block strides on its 3x3 conv, not its first 1x1.
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)
    assert model.layer2[0].downsample[0].stride == (2, 2)


def test_resnet50_loads_a_torchvision_state_dict():
    torch.manual_seed(0)
    source = build_model("resnet50", 1000).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a missed buffer would show in the outputs
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    tv_sd = {
        ("fc." + k[len("classifier.") :] if k.startswith("classifier.") else k): v
        for k, v in source.state_dict().items()
    }
    assert set(tv_sd) == torchvision_resnet50_keys()

    target = build_model("resnet50", 1000).eval()
    result = target.load_torchvision_state_dict(tv_sd)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))

    # A pretrained trunk for another class count: the classifier is skipped and stays this model's own.
    small = build_model("resnet50", 10)
    head = small.classifier.weight.clone()
    with pytest.raises(RuntimeError, match="size mismatch"):
        small.load_torchvision_state_dict(tv_sd)
    small.load_torchvision_state_dict(tv_sd, load_classifier=False)
    torch.testing.assert_close(small.layer4[2].conv3.weight, source.layer4[2].conv3.weight)
    torch.testing.assert_close(small.classifier.weight, head)
    with pytest.raises(RuntimeError, match="missing"):
        small.load_torchvision_state_dict(
            {k: v for k, v in tv_sd.items() if k != "conv1.weight"}, load_classifier=False
        )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last(name):
    model = cached_model(name)
    x = torch.randn(2, 3, side(name), side(name), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)
        model.to(memory_format=torch.channels_last)
        try:
            x_cl = x.contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(model(x_cl), expected, rtol=1e-4, atol=1e-4)
            features = model.forward_features(x_cl)
            torch.testing.assert_close(model.classifier(features.mean(dim=(2, 3))), expected, rtol=1e-4, atol=1e-4)
        finally:
            model.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_odd_non_square_input(name):
    model = cached_model(name)
    x = torch.randn(2, 3, 36, 28)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features, *ODD_FEATURES[name])
    assert logits.shape == (2, K)
    torch.testing.assert_close(logits, model.classifier(features.mean(dim=(2, 3))))


def test_resnet50_odd_input_and_small_cnn_minimum_size():
    with torch.no_grad():
        assert cached_model("resnet50").forward_features(torch.randn(1, 3, 70, 50)).shape == (1, 2048, 3, 2)
        assert cached_model("small_cnn")(torch.randn(1, 3, 8, 9)).shape == (1, K)


@pytest.mark.parametrize("name", ["small_cnn", "preactresnet18"])
def test_backward(name):
    torch.manual_seed(0)
    model = build_model(name, 10).train()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    first_conv = model.features[0][0] if name == "small_cnn" else model.conv1
    assert first_conv.weight.grad.abs().sum() > 0  # the gradient reaches the first layer
    assert x.grad is not None and x.grad.abs().sum() > 0  # saliency (input gradients) flows through


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_input_channel(name):
    torch.manual_seed(0)
    model = build_model(name, 5, in_channels=1).eval()
    assert model.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(1, 1, side(name), side(name))).shape == (1, 5)


def test_initialisation():
    model = build_model("preactresnet18", 10)
    assert torch.equal(model.classifier.bias, torch.zeros(10))
    assert torch.equal(model.bn.weight, torch.ones(512)) and torch.equal(model.bn.bias, torch.zeros(512))
    # Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k)).
    w = model.layer4[1].conv2.weight
    assert abs(w.std().item() / (2 / (512 * 9)) ** 0.5 - 1) < 0.02


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"name must be one of \('small_cnn', 'preactresnet18'.*got 'resnet18'"):
        build_model("resnet18", 10)
    with pytest.raises(TypeError, match="name must be a str"):
        build_model(3, 10)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_classes must be >= 1"):
            build_model("small_cnn", bad)
        with pytest.raises(ValueError, match="in_channels must be >= 1"):
            build_model("small_cnn", 10, in_channels=bad)
    for bad in (True, 10.0, "10", None):
        with pytest.raises(TypeError, match="num_classes must be a positive int"):
            build_model("small_cnn", bad)
        with pytest.raises(TypeError, match="in_channels must be a positive int"):
            build_model("small_cnn", 10, in_channels=bad)
    with pytest.raises(ValueError, match="depth must be 6n \\+ 4"):
        WideResNet(10, depth=20)
    with pytest.raises(ValueError, match="depth must be 9n \\+ 2"):
        CifarResNeXt(10, depth=30)
    for cls in (ResNet, PreActResNet):
        with pytest.raises(ValueError, match="blocks must list four"):
            cls(10, blocks=(3, 4, 6))
