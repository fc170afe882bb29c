"""PreAct ResNet-18 for CIFAR (He et al. 2016, "Identity Mappings in Deep Residual Networks").

The variant used by Manifold Mixup, PuzzleMix, Co-Mixup and R-Mix: a single 3x3 stem conv (no BN/ReLU, no
max-pool), four stages of two pre-activation basic blocks, 1x1 projection shortcuts without BN, and a final
BN-ReLU before pooling because pre-activation blocks leave their output un-normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from rmix_fast.training.models.base import ImageClassifier


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3 plus shortcut (also the Wide ResNet block).

    (B, in, H, W) -> (B, out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dropout: float = 0.0) -> None:
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
        # The projection sees the pre-activated input (as in the paper); the identity path sees raw x.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + shortcut


def preact_stage(in_ch: int, out_ch: int, blocks: int, stride: int, dropout: float = 0.0) -> nn.Sequential:
    """``blocks`` pre-activation blocks; the first changes width and stride. Shared with the Wide ResNets."""
    return nn.Sequential(
        *(PreActBlock(in_ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1, dropout) for j in range(blocks))
    )


class PreActResNet(ImageClassifier):
    """CIFAR PreAct ResNet with basic blocks; ``blocks=(2, 2, 2, 2)`` is PreAct ResNet-18.

    Shapes: (B, C, H, W) -> forward_features (B, 8 * width, ceil(H / 8), ceil(W / 8)) -> forward (B, num_classes).
    """

    # As Manifold Mixup's code: after the first and second residual stages.
    mix_layer_names = ("layer1", "layer2")
    # AdAutoMix's generator input: the published stage 3
    mask_feature_layer = "layer3"

    def __init__(
        self, num_classes: int, in_channels: int = 3, blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64
    ) -> None:
        super().__init__(num_classes, in_channels)
        if len(blocks) != 4:
            raise ValueError(f"blocks must list four stage depths, got {tuple(blocks)}")
        self.conv1 = nn.Conv2d(self.in_channels, width, 3, padding=1, bias=False)
        layers: list[nn.Sequential] = []
        in_ch = width
        for i, n in enumerate(blocks):
            out_ch = width * 2**i
            layers.append(preact_stage(in_ch, out_ch, n, stride=1 if i == 0 else 2))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.num_features = in_ch
        self.classifier = nn.Linear(in_ch, self.num_classes)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 512, ceil(H / 8), ceil(W / 8)) for the default width."""
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.relu(self.bn(x))


def preactresnet18(num_classes: int, in_channels: int = 3) -> PreActResNet:
    """PreAct ResNet-18: 11,218,340 parameters at 100 classes (11,172,170 at 10)."""
    return PreActResNet(num_classes, in_channels, blocks=(2, 2, 2, 2))
