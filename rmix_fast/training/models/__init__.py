"""Model zoo: image classifiers whose logits are a linear map of the pooled last feature map (CAM-ready).

Every model is an ``ImageClassifier``: ``forward_features(x)`` maps (B, C, H, W) to the last feature map
(B, F, h, w) after its final activation, and ``forward(x) = classifier(forward_features(x).mean(dim=(2, 3)))``
with ``classifier = nn.Linear(F, num_classes)``; ``mix_layers()`` names the modules ending stage 1 and stage 2
(where Manifold Mixup may mix). Build one by name with ``build_model``.

| name | input | features (32x32 in) | params at 100 classes |
| --- | --- | --- | --- |
| ``small_cnn`` | any H, W >= 4 | (128, 8, 8) | 0.25 M |
| ``preactresnet18`` | CIFAR-style | (512, 4, 4) | 11.2 M |
| ``wrn16_8`` | CIFAR-style | (512, 8, 8) | 11.0 M |
| ``wrn28_10`` | CIFAR-style | (640, 8, 8) | 36.5 M |
| ``resnext29_4_24`` | CIFAR-style | (1024, 8, 8) | 4.9 M |
| ``resnet50`` | ImageNet-style | (2048, 1, 1); 7x7 at 224 | 23.7 M |
"""

from __future__ import annotations

from collections.abc import Callable

from rmix_fast.training.models.base import ImageClassifier, check_positive_int
from rmix_fast.training.models.pixel_classifier import PixelClassifier
from rmix_fast.training.models.preact_resnet import PreActBlock, PreActResNet, preactresnet18
from rmix_fast.training.models.resnet import Bottleneck, ResNet, resnet50
from rmix_fast.training.models.resnext import CifarResNeXt, ResNeXtBottleneck, resnext29_4_24
from rmix_fast.training.models.small_cnn import SmallCNN
from rmix_fast.training.models.wide_resnet import WideBlock, WideResNet, wrn16_8, wrn28_10

MODEL_NAMES: tuple[str, ...] = ("small_cnn", "preactresnet18", "wrn16_8", "wrn28_10", "resnext29_4_24", "resnet50")

_BUILDERS: dict[str, Callable[[int, int], ImageClassifier]] = {
    "small_cnn": SmallCNN,
    "preactresnet18": preactresnet18,
    "wrn16_8": wrn16_8,
    "wrn28_10": wrn28_10,
    "resnext29_4_24": resnext29_4_24,
    "resnet50": resnet50,
}
assert tuple(_BUILDERS) == MODEL_NAMES


def build_model(name: str, num_classes: int, *, in_channels: int = 3) -> ImageClassifier:
    """A freshly initialised model by name (one of ``MODEL_NAMES``), in training mode on the CPU.

    Raises ``ValueError`` for an unknown ``name`` or for ``num_classes`` / ``in_channels`` < 1, and ``TypeError``
    for a non-string name or non-integer (including bool) counts.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {MODEL_NAMES}, got {type(name).__name__} {name!r:.60}")
    if name not in _BUILDERS:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    num_classes = check_positive_int("num_classes", num_classes)
    in_channels = check_positive_int("in_channels", in_channels)
    return _BUILDERS[name](num_classes, in_channels)


__all__ = [
    "MODEL_NAMES",
    "Bottleneck",
    "CifarResNeXt",
    "ImageClassifier",
    "PixelClassifier",
    "PreActBlock",
    "PreActResNet",
    "ResNeXtBottleneck",
    "ResNet",
    "SmallCNN",
    "WideBlock",
    "WideResNet",
    "build_model",
    "preactresnet18",
    "resnet50",
    "resnext29_4_24",
    "wrn16_8",
    "wrn28_10",
]
