"""CIFAR ResNets of He et al. 2016 (ResNet-20 / ResNet-56)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.base import PrunelabModel, init_weights, to_shape
from prunelab.models.registry import register_model

__all__ = ["BasicBlock", "CifarResNet", "ResNet20", "ResNet56"]


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection.

    When the stride or channel count changes, the shortcut is a projection
    ``1x1 conv (stride s, no bias) + BatchNorm`` (He et al. 2016's option B),
    registered as ``shortcut.0`` / ``shortcut.1``; otherwise it is the identity.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(PrunelabModel):
    """ResNet for CIFAR from He et al. 2016, "Deep Residual Learning for Image
    Recognition", Section 4.2.

    ``conv3x3(16) -> BN -> ReLU``, then three stages of ``n = (depth - 2) / 6``
    basic blocks with 16, 32 and 64 channels (the first block of stages 2 and
    3 has stride 2), global average pooling and a Linear classifier ``fc``.

    Shortcut choice: the paper's CIFAR models use option A (zero-padded
    identity shortcuts, parameter free).  Here option B projections (1x1 conv +
    BN) are used whenever the shape changes, so that every channel of every
    residual sum belongs to a real, prunable parameter; this adds 2,752
    parameters for the two stage transitions (ResNet-20: 272,474 parameters
    vs. 0.27M in the paper; ResNet-56: 855,770 vs. 0.85M).

    Conv and linear weights use Kaiming-normal (fan-in) initialisation as in
    He et al.; BN weights 1, biases 0.

    Args:
        input_shape: ``(C, H, W)``; works for any spatial size >= 1 thanks to
            the global average pool.
        num_classes: number of output logits.
        depth: ``6 n + 2`` (20, 32, 44, 56, 110, ...).
        init: weight init scheme.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 20,
        init: str = "kaiming_normal",
    ) -> None:
        super().__init__(to_shape(input_shape), num_classes)
        depth = int(depth)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        self.depth = depth
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(self.input_shape[0], 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, self.num_classes)
        self._output_layer = "fc"
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


@register_model("resnet20")
class ResNet20(CifarResNet):
    """ResNet-20 (n = 3) of He et al. 2016 for CIFAR; see :class:`CifarResNet`."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, init: str = "kaiming_normal"
    ) -> None:
        super().__init__(input_shape, num_classes, depth=20, init=init)


@register_model("resnet56")
class ResNet56(CifarResNet):
    """ResNet-56 (n = 9) of He et al. 2016 for CIFAR; see :class:`CifarResNet`."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, init: str = "kaiming_normal"
    ) -> None:
        super().__init__(input_shape, num_classes, depth=56, init=init)
