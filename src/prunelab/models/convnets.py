"""Conv-2 / Conv-4 / Conv-6 of Frankle & Carbin 2019 (lottery ticket hypothesis)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.base import PrunelabModel, init_weights, to_shape
from prunelab.models.registry import register_model

__all__ = ["Conv2", "Conv4", "Conv6", "ConvNet"]


class ConvNet(PrunelabModel):
    """VGG-like "Conv-N" network from Frankle & Carbin 2019, "The Lottery Ticket
    Hypothesis: Finding Sparse, Trainable Neural Networks" (Figure 2 / App. F).

    Pairs of 3x3 convolutions ("same" padding, ReLU) with a 2x2 max-pool after
    each pair, then ``fc 256 -> ReLU -> fc 256 -> ReLU -> fc num_classes``.
    Weights use Gaussian Glorot initialisation as in the paper.  On CIFAR-10
    Conv-2 has 4,300,992 and Conv-4 2,425,024 weights (paper: 4.3M, 2.4M);
    Conv-6 has 2,261,184 weights with this architecture (the paper's table
    lists 1.7M).

    Modules: ``features`` (``nn.Sequential``: conv, ReLU, conv, ReLU, pool, ...)
    and ``classifier`` (``nn.Sequential`` whose last element is the output
    Linear).

    Args:
        input_shape: ``(C, H, W)``; spatial size must survive ``len(widths)/2``
            halvings.
        num_classes: number of output logits.
        widths: conv channel widths; a pool follows every second conv.
        fc_widths: hidden fully connected widths.
        dropout: dropout after each hidden fc ReLU (the paper's dropout
            experiments); 0 disables.
        init: weight init scheme.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (64, 64),
        fc_widths: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        init: str = "xavier_normal",
    ) -> None:
        super().__init__(to_shape(input_shape), num_classes)
        widths = tuple(int(w) for w in widths)
        fc_widths = tuple(int(w) for w in fc_widths)
        if not widths or len(widths) % 2:
            raise ValueError(f"widths must be a non-empty list of conv pairs, got {widths}")
        dropout = float(dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        in_channels = self.input_shape[0]
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2, 2))
            in_channels = width
        self.features = nn.Sequential(*layers)
        in_features = self._flat_features(self.features)
        head: list[nn.Module] = []
        for width in fc_widths:
            head += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            in_features = width
        head.append(nn.Linear(in_features, self.num_classes))
        self.classifier = nn.Sequential(*head)
        self._output_layer = f"classifier.{len(head) - 1}"
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("conv2")
class Conv2(ConvNet):
    """Conv-2 (Frankle & Carbin 2019): convs 64, 64, pool; fc 256, 256, out."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        init: str = "xavier_normal",
    ) -> None:
        super().__init__(input_shape, num_classes, (64, 64), (256, 256), dropout, init)


@register_model("conv4")
class Conv4(ConvNet):
    """Conv-4 (Frankle & Carbin 2019): convs 64, 64, pool, 128, 128, pool; fc 256, 256, out."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        init: str = "xavier_normal",
    ) -> None:
        super().__init__(input_shape, num_classes, (64, 64, 128, 128), (256, 256), dropout, init)


@register_model("conv6")
class Conv6(ConvNet):
    """Conv-6 (Frankle & Carbin 2019): convs 64, 64, pool, 128, 128, pool, 256, 256, pool;
    fc 256, 256, out."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        init: str = "xavier_normal",
    ) -> None:
        super().__init__(
            input_shape, num_classes, (64, 64, 128, 128, 256, 256), (256, 256), dropout, init
        )
