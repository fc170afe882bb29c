"""ResNeXt-29 for CIFAR (Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural Networks").

Post-activation bottleneck blocks 1x1 reduce -> grouped 3x3 -> 1x1 expand, each conv followed by BN, ReLU after the
residual sum. Three stages of three blocks (9 blocks x 3 convs + stem + classifier = 29 layers) with output widths
256/512/1024 and strides 1/2/2 after a 64-channel 3x3 stem. The group width doubles per stage with the output
width: "4x24d" means 4 groups of 24, 48, 96 channels in stages 1, 2, 3.
"""

from __future__ import annotations

from torch import Tensor, nn

from rmix_fast.training.models.base import ImageClassifier


class ResNeXtBottleneck(nn.Module):
    """(B, in, H, W) -> (B, out, ceil(H / stride), ceil(W / stride)); ``inner`` = cardinality x group width."""

    def __init__(self, in_ch: int, out_ch: int, inner: int, cardinality: int, stride: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_group = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn_group = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, out_ch, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn_reduce(self.conv_reduce(x)))
        out = self.relu(self.bn_group(self.conv_group(out)))
        out = self.bn_expand(self.conv_expand(out))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + shortcut)


class CifarResNeXt(ImageClassifier):
    """ResNeXt-``depth`` (depth = 9n + 2) with ``cardinality`` groups of ``base_width`` channels in stage 1.

    Shapes: (B, C, H, W) -> forward_features (B, 1024, ceil(H / 4), ceil(W / 4)) -> forward (B, num_classes).
    """

    # After the first and second residual stages, as for the PreAct ResNet and WRN.
    mix_layer_names = ("layer1", "layer2")
    # AdAutoMix's generator input: the last stage (1/4 of the side, as the published CIFAR stage 3)
    mask_feature_layer = "layer3"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 29,
        cardinality: int = 4,
        base_width: int = 24,
        expansion: int = 4,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"depth must be 9n + 2 with n >= 1 (11, 20, 29, ...), got {depth}")
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(self.in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Sequential] = []
        in_ch = 64
        for i, stride in enumerate((1, 2, 2)):
            out_ch = 64 * expansion * 2**i
            inner = cardinality * base_width * 2**i
            blocks = [
                ResNeXtBottleneck(in_ch if j == 0 else out_ch, out_ch, inner, cardinality, stride if j == 0 else 1)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.num_features = in_ch
        self.classifier = nn.Linear(in_ch, self.num_classes)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1024, ceil(H / 4), ceil(W / 4)); already post-ReLU (blocks end in a ReLU)."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


def resnext29_4_24(num_classes: int, in_channels: int = 3) -> CifarResNeXt:
    """ResNeXt-29, 4x24d: 4,937,252 parameters at 100 classes."""
    return CifarResNeXt(num_classes, in_channels, depth=29, cardinality=4, base_width=24)
