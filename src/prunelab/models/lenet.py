"""Convolutional LeNets: the Caffe LeNet-5 and the "seed" tutorial CNN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.base import PrunelabModel, init_weights, to_shape
from prunelab.models.registry import register_model

__all__ = ["LeNet5", "SeedCNN"]


def _check_dropout(dropout: float) -> float:
    dropout = float(dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return dropout


@register_model("lenet5")
class LeNet5(PrunelabModel):
    """LeNet-5, Caffe variant (``examples/mnist/lenet_train_test.prototxt``).

    The network pruned by Han et al. 2015 ("Learning both Weights and
    Connections for Efficient Neural Networks"), derived from LeCun et al.
    1998::

        conv 20 (5x5) -> maxpool 2 -> conv 50 (5x5) -> maxpool 2
        -> fc 500 -> ReLU -> fc num_classes

    As in Caffe there is no non-linearity after the convolutions (set
    ``conv_relu=True`` to add ReLUs there).  On MNIST (1, 28, 28) with 10
    classes it has 431,080 parameters.

    Modules: ``features`` (``features.0`` and ``features.2`` are the convs when
    ``conv_relu=False``) and ``classifier`` (``classifier.0`` = fc 500, the last
    element = output Linear).

    Args:
        input_shape: ``(C, H, W)``; H and W must be at least 16 (smaller inputs
            are reported by :func:`prunelab.models.check_input_fits`).
        num_classes: number of output logits.
        conv_relu: insert ReLU after each convolution (not in Caffe's model).
        dropout: dropout after the fc-500 ReLU (0 disables, as in Caffe).
        init: weight init; ``caffe_xavier`` reproduces Caffe's ``xavier``
            filler used by the prototxt (with zero biases).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        conv_relu: bool = False,
        dropout: float = 0.0,
        init: str = "caffe_xavier",
    ) -> None:
        super().__init__(to_shape(input_shape), num_classes)
        dropout = _check_dropout(dropout)
        in_channels = self.input_shape[0]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 20, kernel_size=5)]
        if conv_relu:
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, kernel_size=5)]
        if conv_relu:
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        flat = self._flat_features(self.features)
        head: list[nn.Module] = [nn.Linear(flat, 500), nn.ReLU(inplace=True)]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(500, self.num_classes))
        self.classifier = nn.Sequential(*head)
        self._output_layer = f"classifier.{len(head) - 1}"
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("seed_cnn")
class SeedCNN(PrunelabModel):
    """The classic small CNN of the Keras ``mnist_cnn`` / PyTorch MNIST examples.

    Widely used as the "seed" network of pruning tutorials on MNIST and
    CIFAR-10::

        conv 32 (3x3) -> ReLU -> conv 64 (3x3) -> ReLU -> maxpool 2
        -> [dropout] -> fc 128 -> ReLU -> [dropout] -> fc num_classes

    Convolutions are unpadded (28x28 -> 24x24 -> 12x12, so fc 128 sees 9216
    features on MNIST).  The original example uses dropout 0.25 / 0.5; here a
    single ``dropout`` probability is applied at both places, 0 by default
    (in which case no Dropout modules exist and indices are
    ``features.0``/``features.2`` for the convs, ``classifier.0``/``classifier.2``
    for the linears).

    Args:
        input_shape: ``(C, H, W)``; H and W must be at least 6.
        num_classes: number of output logits.
        dropout: dropout probability (0 disables).
        init: weight init; Glorot uniform by default, the Keras default.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        init: str = "xavier_uniform",
    ) -> None:
        super().__init__(to_shape(input_shape), num_classes)
        dropout = _check_dropout(dropout)
        layers: list[nn.Module] = [
            nn.Conv2d(self.input_shape[0], 32, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        flat = self._flat_features(self.features)
        head: list[nn.Module] = [nn.Linear(flat, 128), nn.ReLU(inplace=True)]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(128, self.num_classes))
        self.classifier = nn.Sequential(*head)
        self._output_layer = f"classifier.{len(head) - 1}"
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), 1))
