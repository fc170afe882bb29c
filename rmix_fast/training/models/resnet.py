"""ImageNet ResNet-50 (He et al. 2016), v1.5: the stride of a downsampling bottleneck sits on its 3x3 conv.

Module and attribute names follow torchvision's ``resnet50`` so that its ``state_dict`` keys and shapes match one
for one, except the last layer, which is ``classifier`` here (torchvision: ``fc``); ``load_torchvision_state_dict``
does the renaming.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from rmix_fast.training.models.base import ImageClassifier


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand x4, BN after each, ReLU after the residual sum.

    (B, in, H, W) -> (B, 4 * width, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(ImageClassifier):
    """ImageNet-style bottleneck ResNet; ``blocks=(3, 4, 6, 3)`` is ResNet-50.

    Shapes: (B, C, H, W) -> forward_features (B, 2048, ceil(H / 32), ceil(W / 32)) -> forward (B, num_classes).
    A 224x224 input gives a 7x7 map; 64x64 gives 2x2; 32x32 gives 1x1.
    """

    # After the first and second residual stages (1/4 and 1/8 of the input side).
    mix_layer_names = ("layer1", "layer2")
    # AdAutoMix's generator input: the published stage 3
    mask_feature_layer = "layer3"

    def __init__(self, num_classes: int, in_channels: int = 3, blocks: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__(num_classes, in_channels)
        if len(blocks) != 4:
            raise ValueError(f"blocks must list four stage depths, got {tuple(blocks)}")
        self.conv1 = nn.Conv2d(self.in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers: list[nn.Sequential] = []
        in_ch = 64
        for i, n in enumerate(blocks):
            width = 64 * 2**i
            stride = 1 if i == 0 else 2
            layer = [Bottleneck(in_ch if j == 0 else width * 4, width, stride if j == 0 else 1) for j in range(n)]
            layers.append(nn.Sequential(*layer))
            in_ch = width * Bottleneck.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.num_features = in_ch
        self.classifier = nn.Linear(in_ch, self.num_classes)
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 2048, ceil(H / 32), ceil(W / 32)), after the last block's ReLU."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_torchvision_state_dict(
        self, state_dict: Mapping[str, Tensor], *, load_classifier: bool = True
    ) -> tuple[list[str], list[str]]:
        """Load a torchvision ``resnet50`` state dict (``fc.*`` is renamed ``classifier.*``), strictly.

        With ``load_classifier=False`` the checkpoint's ``fc.*`` entries are dropped and this model keeps its own
        classifier (fine-tuning a pretrained trunk to another class count); every other key must still match.
        Returns ``load_state_dict``'s (missing_keys, unexpected_keys) named tuple; raises ``RuntimeError`` on any
        mismatch of keys or shapes.
        """
        renamed: dict[str, Tensor] = {}
        for key, value in state_dict.items():
            if key.startswith("fc."):
                if not load_classifier:
                    continue
                key = "classifier." + key[len("fc.") :]
            renamed[key] = value
        if load_classifier:
            return self.load_state_dict(renamed, strict=True)
        result = self.load_state_dict(renamed, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("classifier.")]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"state dict does not match a torchvision resnet50 trunk: missing {missing}, "
                f"unexpected {result.unexpected_keys}"
            )
        return result


def resnet50(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-50 v1.5: 25,557,032 parameters at 1000 classes (torchvision's count)."""
    return ResNet(num_classes, in_channels, blocks=(3, 4, 6, 3))
