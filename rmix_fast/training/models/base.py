"""The common base of the model zoo: a feature extractor followed by global average pooling and one linear layer.

Keeping the classifier a single ``nn.Linear`` applied to the spatial mean of the last feature map is what makes
class activation maps (CAM) exact: since the mean and the linear map commute,
``logits[b, k] = mean_{h,w} CAM[b, k, h, w] + bias[k]`` with ``CAM[b, k] = sum_f W[k, f] * features[b, f]``.
"""

from __future__ import annotations

import operator
from typing import ClassVar

import torch
from torch import Tensor, nn


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an ``int`` >= 1; ``TypeError`` for bools and non-integers, ``ValueError`` for values < 1."""
    # bool is an int subclass; True as a class count is almost certainly a bug in the caller.
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive int, got bool {value!r}")
    try:
        as_int = operator.index(value)  # accepts int and numpy integers, rejects floats and strings
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {type(value).__name__} {value!r:.60}") from None
    if as_int < 1:
        raise ValueError(f"{name} must be >= 1, got {as_int}")
    return as_int


class ImageClassifier(nn.Module):
    """Base class: ``forward(x) = classifier(forward_features(x).mean(dim=(2, 3)))``.

    Subclasses call ``super().__init__(num_classes, in_channels)``, build their layers, set ``num_features`` and
    ``self.classifier = nn.Linear(num_features, num_classes)``, then call ``self.init_weights()``.

    Attributes:
        num_classes: K, the number of logits.
        in_channels: C, the number of input channels.
        num_features: F, the channel count of the last feature map (``classifier.in_features``).
        classifier: ``nn.Linear(F, K)``.
        mix_layer_names: the submodules ending stage 1 and stage 2 (``mix_layers()``), set by each network.
        mask_feature_layer: the submodule whose output a learned mixer reads (AdAutoMix's mask generator:
            the published code reads ResNet stage 3, 1/4 of a CIFAR image's side and 1/16 of an ImageNet one's).
    """

    num_features: int
    classifier: nn.Linear
    # Names (``get_submodule`` paths) of the modules ending stage 1 and stage 2, in forward order: where
    # Manifold Mixup may mix, besides the input.
    mix_layer_names: ClassVar[tuple[str, ...]] = ()
    # ``get_submodule`` path of the feature map a learned mixer reads (see the class docstring).
    mask_feature_layer: ClassVar[str] = ""

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.in_channels = check_positive_int("in_channels", in_channels)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, F, h, w): the last feature map, after its final activation, before pooling."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_features")

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, K) logits."""
        return self.classifier(self.forward_features(x).mean(dim=(2, 3)))

    def mix_layers(self) -> list[nn.Module]:
        """The modules whose outputs a hidden-layer mixer may mix (``ManifoldMixup``'s ``layers``): the ends of
        stage 1 and stage 2, in forward order, each output a (B, C', H', W') feature map."""
        if not self.mix_layer_names:
            raise NotImplementedError(f"{type(self).__name__} must name its mixable layers (mix_layer_names)")
        return [self.get_submodule(name) for name in self.mix_layer_names]

    def class_activation_maps(self, features: Tensor) -> Tensor:
        """CAM from ``forward_features`` output: (B, F, h, w) -> (B, K, h, w), without the classifier bias."""
        return torch.einsum("kf,bfhw->bkhw", self.classifier.weight.to(features.dtype), features)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Kaiming-normal convs (fan_out, ReLU gain) as in He et al. 2015; BatchNorm weight 1, bias 0; Linear keeps
        PyTorch's default weight init with a zero bias (so initial logits carry no class preference)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
