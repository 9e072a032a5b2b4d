"""Sparsity-inducing penalties added to the training loss (``regularizer=l1|group_l1``).

Configs are partials (``_partial_: true``); the train entry point binds them to the prunable
parameters: ``instantiate(cfg.regularizer)(params=[...])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _Penalty:
    def __init__(self, weight: float, params: Sequence[nn.Parameter]):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"regularizer.weight={weight!r} must be a number >= 0")
        if not params:
            raise ValueError("the regularizer has no parameters to act on")
        self.weight = float(weight)
        self.params = list(params)

    def __call__(self) -> torch.Tensor:
        return self.weight * self.penalty()

    def penalty(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class L1(_Penalty):
    """lambda * sum |theta| over the prunable weights (drives weights towards exact zero)."""

    def penalty(self) -> torch.Tensor:
        return torch.stack([p.abs().sum() for p in self.params]).sum()


class GroupL1(_Penalty):
    """Group lasso over output channels: lambda * sum_layers sum_channels ||W[c]||_2 (drives whole
    channels towards zero, for structured pruning; Wen et al. 2016)."""

    def penalty(self) -> torch.Tensor:
        return torch.stack([p.reshape(p.shape[0], -1).norm(dim=1).sum() for p in self.params]).sum()
