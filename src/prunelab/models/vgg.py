"""CIFAR VGG networks with batch normalisation (VGG-11 / VGG-16)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.base import PrunelabModel, init_weights, to_shape
from prunelab.models.registry import register_model

__all__ = ["VGG", "VGG11", "VGG16", "VGG_CONFIGS"]

#: Simonyan & Zisserman 2015 configurations ("M" = 2x2 max-pool).
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG(PrunelabModel):
    """VGG (Simonyan & Zisserman 2015) adapted to CIFAR, with BatchNorm.

    Feature extractor: for each number in the configuration a
    ``Conv2d 3x3 (padding 1) -> BatchNorm2d -> ReLU`` (``Conv2d -> ReLU`` if
    ``batch_norm=False``), and a 2x2 max-pool for each ``"M"``; so the first
    conv is ``features.0`` and its BN ``features.1``.  The classifier is a
    single ``nn.Linear(512, num_classes)`` named ``classifier``, as in the
    CIFAR VGGs of Liu et al. 2017 ("Learning Efficient Convolutional Networks
    through Network Slimming") - Li et al. 2017 ("Pruning Filters for
    Efficient ConvNets") use two more hidden FC layers, not reproduced here.
    The five max-pools take 32x32 to 1x1; a global average pool (a no-op on
    CIFAR) precedes the classifier so larger inputs work too.  Inputs smaller
    than 32x32 (e.g. MNIST's 28x28) collapse at the last pool and are rejected
    by :func:`prunelab.models.check_input_fits`.

    Initialisation (``init="slimming"``) follows the network-slimming code:
    conv weights N(0, 2/fan_out), BN weight 1 / bias 0, linear N(0, 0.01^2),
    zero biases.

    Args:
        input_shape: ``(C, H, W)``, H and W >= 32.
        num_classes: number of output logits.
        config: ``"A"`` (VGG-11) or ``"D"`` (VGG-16), or an explicit list.
        batch_norm: add BatchNorm2d after every convolution.
        init: weight init scheme.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        config: str | Sequence[int | str] = "D",
        batch_norm: bool = True,
        init: str = "slimming",
    ) -> None:
        super().__init__(to_shape(input_shape), num_classes)
        if isinstance(config, str):
            if config not in VGG_CONFIGS:
                raise ValueError(f"unknown VGG config {config!r}; known: {', '.join(VGG_CONFIGS)}")
            config = VGG_CONFIGS[config]
        layers: list[nn.Module] = []
        in_channels = self.input_shape[0]
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            width = int(item)
            layers.append(nn.Conv2d(in_channels, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            in_channels = width
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError("VGG config must contain at least one convolution")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, self.num_classes)
        self._output_layer = "classifier"
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("vgg11")
class VGG11(VGG):
    """VGG-11 (configuration A) with BatchNorm for CIFAR; see :class:`VGG`."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        batch_norm: bool = True,
        init: str = "slimming",
    ) -> None:
        super().__init__(input_shape, num_classes, "A", batch_norm, init)


@register_model("vgg16")
class VGG16(VGG):
    """VGG-16 (configuration D) with BatchNorm for CIFAR; see :class:`VGG`."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        batch_norm: bool = True,
        init: str = "slimming",
    ) -> None:
        super().__init__(input_shape, num_classes, "D", batch_norm, init)
