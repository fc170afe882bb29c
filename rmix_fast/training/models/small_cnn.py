"""A small, fast CNN for quick CPU runs on 32x32 images."""

from __future__ import annotations

from torch import Tensor, nn

from rmix_fast.training.models.base import ImageClassifier


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    # No conv bias: the following BatchNorm's shift makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


class SmallCNN(ImageClassifier):
    """conv32 @1 -> pool -> conv64 @1/2 -> pool -> conv128, conv128 @1/4.

    About 20 M multiply-adds (~40 MFLOP) and 0.24 M parameters per 32x32 image. The final map keeps 1/4 of the
    input resolution (8x8 for CIFAR) so class activation maps stay usable. Any H, W >= 4 works (floor pooling).

    Shapes: (B, C, H, W) -> forward_features (B, 128, H // 4, W // 4) -> forward (B, num_classes).
    """

    # The conv blocks at 1/1 and 1/2 resolution, before the pools that start the next stage.
    mix_layer_names = ("features.0", "features.2")
    # AdAutoMix's generator input: the first conv block at 1/4 of the side (the published CIFAR stage 3's scale)
    mask_feature_layer = "features.4"

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__(num_classes, in_channels)
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            _conv_bn_relu(self.in_channels, w1),
            nn.MaxPool2d(2),
            _conv_bn_relu(w1, w2),
            nn.MaxPool2d(2),
            _conv_bn_relu(w2, w3),
            _conv_bn_relu(w3, w3),
        )
        self.num_features = w3
        self.classifier = nn.Linear(w3, self.num_classes)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 128, H // 4, W // 4)."""
        return self.features(x)
