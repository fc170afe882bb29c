"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

WRN-d-k: a 16-channel 3x3 stem, three stages of (d - 4) / 6 pre-activation basic blocks with widths 16k, 32k, 64k
and strides 1, 2, 2, then a final BN-ReLU. Projection shortcuts are 1x1 convs without BN, applied to the
pre-activated input, as in the authors' code.
"""

from __future__ import annotations

from torch import Tensor, nn

from rmix_fast.models.base import ImageClassifier


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3 plus shortcut.

    (B, in, H, W) -> (B, out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(ImageClassifier):
    """WRN-``depth``-``widen_factor``; ``depth`` must be 6n + 4.

    Shapes: (B, C, H, W) -> forward_features (B, 64 * widen_factor, ceil(H / 4), ceil(W / 4))
    -> forward (B, num_classes).
    """

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
            blocks = [
                WideBlock(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1, dropout) for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
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
