"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k: a 16-channel 3x3 stem, three stages of (d - 4) / 6 pre-activation basic blocks with widths 16k, 32k, 64k
and strides 1, 2, 2, then a final BN-ReLU. Projection shortcuts are 1x1 convs without BN, applied to the
pre-activated input, as in the authors' code.
"""

from __future__ import annotations

from torch import Tensor, nn

from rmix_fast.training.models.base import ImageClassifier
from rmix_fast.training.models.preact_resnet import PreActBlock, preact_stage

# The Wide ResNet block is the pre-activation basic block, with optional dropout between its convs.
WideBlock = PreActBlock


class WideResNet(ImageClassifier):
    """WRN-``depth``-``widen_factor``; ``depth`` must be 6n + 4.

    Shapes: (B, C, H, W) -> forward_features (B, 64 * widen_factor, ceil(H / 4), ceil(W / 4))
    -> forward (B, num_classes).
    """

    # As Manifold Mixup's code: after the first and second residual stages.
    mix_layer_names = ("layer1", "layer2")
    # AdAutoMix's generator input: the last stage (1/4 of the side, as the published CIFAR stage 3)
    mask_feature_layer = "layer3"

    def __init__(
        self, num_classes: int, in_channels: int = 3, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0
    ) -> None:
        super().__init__(num_classes, in_channels)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(self.in_channels, 16, 3, padding=1, bias=False)
        stages: list[nn.Sequential] = []
        in_ch = 16
        for i, stride in enumerate((1, 2, 2)):
            out_ch = 16 * widen_factor * 2**i
            stages.append(preact_stage(in_ch, out_ch, n, stride, dropout))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.num_features = in_ch
        self.classifier = nn.Linear(in_ch, self.num_classes)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 64 * widen_factor, ceil(H / 4), ceil(W / 4))."""
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.relu(self.bn(x))


def wrn16_8(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-16-8: 11,007,540 parameters at 100 classes."""
    return WideResNet(num_classes, in_channels, depth=16, widen_factor=8)


def wrn28_10(num_classes: int, in_channels: int = 3) -> WideResNet:
    """WRN-28-10: 36,536,884 parameters at 100 classes."""
    return WideResNet(num_classes, in_channels, depth=28, widen_factor=10)
