"""A classifier that takes pixels in [0, 1] and normalises them itself.

Training, saliency, FGSM and CAM all work on the unnormalised pixel scale this way (an 8/255 attack
means 8/255 of a pixel's range), and a checkpoint carries its own normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["PixelClassifier"]


class PixelClassifier(nn.Module):
    """``net((x - mean) / std)`` for (B, C, H, W) ``x`` in [0, 1]; ``net`` is an ``ImageClassifier``
    (``forward_features`` and ``classifier``), both exposed here for class activation maps."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have one value per channel, got {len(mean)} and {len(std)}")
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net.forward_features(self.normalize(x))

    def mix_layers(self) -> list[nn.Module]:
        """``net``'s mixable layers: a mix of normalised activations inside the network."""
        return self.net.mix_layers()

    @property
    def mask_feature_layer(self) -> str:
        """``net``'s feature layer for a learned mixer, as a path from here."""
        inner = getattr(self.net, "mask_feature_layer", "")
        return f"net.{inner}" if inner else ""

    @property
    def classifier(self) -> nn.Linear:
        return self.net.classifier
