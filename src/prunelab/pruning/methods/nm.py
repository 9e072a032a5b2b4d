"""N:M semi-structured sparsity: ``n`` kept in every ``m`` consecutive input weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.config import nm_rule
from prunelab.pruning.granularity import nm_compatible, nm_mask
from prunelab.pruning.methods.base import ScoreThenSelect
from prunelab.pruning.params import PruningConfigError


class NM(ScoreThenSelect):
    """In every group of ``m`` consecutive input weights (along ``in_features`` of a Linear,
    ``in_channels`` of a Conv) keep the ``n`` largest by magnitude (2:4 runs on sparse tensor
    cores). The final sparsity must be ``1 - n/m``; a schedule's earlier events prune
    ``floor(target * m)`` per group.

    Args:
        n, m: keep ``n`` of every ``m`` (integers, ``1 <= n < m``).
        skip_incompatible: skip (and report in ``skipped``) layers whose input dimension is not
            a multiple of ``m`` instead of failing.
        include, exclude: which parameters (see :class:`PruningMethod`).
    """

    name = "nm"
    score = "magnitude"
    granularities = ("nm",)

    def __init__(self, n: int = 2, m: int = 4, skip_incompatible: bool = False,
                 include: Sequence[str] | None = None, exclude: Sequence[str] = ()):
        why = nm_rule(n, m)
        if why is not None:
            raise PruningConfigError(why)
        super().__init__("layer", "nm", include, exclude)
        self.n, self.m = int(n), int(m)
        self.skip_incompatible = bool(skip_incompatible)

    @property
    def nm_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = super().resolve(model)
        bad = [n for n, p in params.items() if not nm_compatible(p.shape, self.m)]
        if bad and not self.skip_incompatible:
            shape = tuple(params[bad[0]].shape)
            raise PruningConfigError(
                f"pruner=nm: {bad[0]} has input dimension {shape[1] if len(shape) > 1 else 1}, "
                f"not a multiple of m={self.m} (also: {', '.join(bad[1:]) or 'none'}); set "
                f"pruner.skip_incompatible=true to skip such layers")
        if len(bad) == len(params):
            raise PruningConfigError(f"pruner=nm: no prunable layer has an input dimension that "
                                     f"is a multiple of m={self.m}; allowed: such layers")
        self.skipped = bad
        return {n: p for n, p in params.items() if n not in bad}

    def check_sparsity(self, sparsity: float) -> None:
        if not math.isclose(sparsity, self.nm_sparsity, abs_tol=1e-9):
            raise PruningConfigError(
                f"pruner=nm keeps n={self.n} of every m={self.m}: sparsity must be "
                f"{self.nm_sparsity:g} (1 - n/m), got sparsity={sparsity}")

    def select(self, params: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
               old_masks: Mapping[str, torch.Tensor], target: float) -> dict[str, torch.Tensor]:
        per_group = min(self.m - self.n, int(math.floor(target * self.m + 1e-9)))
        return {n: nm_mask(scores[n], old_masks[n], self.n, self.m, per_group) for n in params}
