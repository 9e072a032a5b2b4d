"""Classification accuracy: the one evaluation loop shared by every command."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from prunelab.metrics.timing import placement

__all__ = ["accuracy", "correct_predictions"]


def correct_predictions(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """How many samples of one batch ``net`` classifies right (the input moved to the device
    and floating dtype of ``net``'s first parameter)."""
    device, dtype = placement(net)
    pred = net(x.to(device, dtype)).argmax(1)
    return int((pred.cpu() == y.cpu()).sum())


def accuracy(net: nn.Module, loader: Iterable, max_batches: int | None = None) -> float:
    """Top-1 accuracy of ``net`` on (up to ``max_batches`` batches of) ``loader``.

    Batches are ``(inputs, labels)`` pairs; groups of batches (``data.steps_per_batch``) are
    unpacked, so ``max_batches`` counts single batches. The network runs in eval mode under
    :func:`torch.inference_mode`, its modes are restored afterwards. An empty loader gives 0."""
    from prunelab.data.loader import iter_batches  # imported here: keeps `metrics` light

    modes = {m: m.training for m in net.modules()}
    correct = total = 0
    net.eval()
    try:
        with torch.inference_mode():
            for i, (x, y) in enumerate(iter_batches(loader)):
                if max_batches is not None and i >= max_batches:
                    break
                correct += correct_predictions(net, x, y)
                total += int(y.numel())
    finally:
        for m, training in modes.items():
            m.training = training
    return correct / max(total, 1)
