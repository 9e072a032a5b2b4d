"""Fully connected networks (LeNet-300-100 by default)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.base import PrunelabModel, init_weights
from prunelab.models.registry import register_model

__all__ = ["MLP"]


@register_model("mlp")
class MLP(PrunelabModel):
    """Multi-layer perceptron; LeNet-300-100 with the default ``hidden=(300, 100)``.

    LeNet-300-100 is from LeCun et al. 1998, "Gradient-based learning applied
    to document recognition"; it is the fully connected benchmark of Han et al.
    2015 ("Learning both Weights and Connections for Efficient Neural
    Networks") and Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis").
    The input is flattened, then ``Linear -> ReLU`` for every hidden width
    (followed by ``Dropout`` only when ``dropout > 0``), then a final Linear.
    On MNIST (1, 28, 28) with 10 classes it has 266,610 parameters.

    Modules: ``features`` (``nn.Sequential`` of the hidden layers, so hidden
    weights are ``features.0.weight``, ``features.2.weight``, ... without
    dropout) and ``classifier`` (the output ``nn.Linear``).

    Args:
        input_shape: shape of one sample, e.g. ``(1, 28, 28)``; any rank.
        num_classes: number of output logits.
        hidden: hidden layer widths (empty gives a linear classifier).
        dropout: dropout probability after each hidden ReLU (0 disables).
        init: weight init scheme (see :func:`prunelab.models.base.init_weights`);
            Gaussian Glorot as in Frankle & Carbin 2019 by default.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
        dropout: float = 0.0,
        init: str = "xavier_normal",
    ) -> None:
        super().__init__(input_shape, num_classes)
        self.hidden = tuple(int(h) for h in hidden)
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        in_features = math.prod(self.input_shape)
        layers: list[nn.Module] = []
        for width in self.hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
            in_features = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_features, self.num_classes)
        self._output_layer = "classifier"
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten ``x`` to ``(batch, -1)`` and return logits."""
        return self.classifier(self.features(torch.flatten(x, 1)))
