"""The masks of a lottery level: glue between the runner and the pruning method.

The maths is :class:`prunelab.pruning.IMP` (iterative magnitude pruning): level ``l`` keeps the
largest-magnitude weights of the weights level ``l-1`` ended with, at the cumulative target
``1 - (1 - f)^l`` per tensor (layer scope) or over all tensors without their own fraction
(global scope); the random-mask control draws masks with the ticket's per-layer sparsity at
random positions, nested inside the previous level's. Here: the method built from the lottery's
config, level 0's all-ones masks, and the callback that holds a level's masks while it trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig


def imp_method(cfg: DictConfig):
    """The :class:`~prunelab.pruning.IMP` method of ``cfg.lottery`` (validates its values)."""
    from prunelab.pruning import IMP

    lc = cfg.lottery
    return IMP(prune_fraction=lc.prune_fraction, output_fraction=lc.output_fraction,
               layer_fractions=dict(lc.layer_fractions or {}), scope=lc.scope,
               include=lc.include, exclude=list(lc.exclude or ()), seed=int(cfg.seed))


def full_masks(params: Mapping[str, Any]) -> dict[str, Any]:
    """Level 0: every weight kept."""
    import torch

    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}


def density(masks: Mapping[str, Any]) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())


def mask_keeper(method: Any, net: Any, mask: Mapping[str, Any], rewind_step: int | None):
    """The Lightning callback that trains ``net`` under ``mask`` (the method prunes nothing
    during a level): pruned weights stay exactly 0 after every optimizer step; at level 0 it
    also snapshots the rewind weights after ``rewind_step`` steps (``.rewind_state``)."""
    from prunelab.pruning import OneShot, PruningCallback

    keeper = PruningCallback(method, OneShot(), 0.0, rewind_step=rewind_step,
                             log_per_layer=False)
    keeper.bind(net)
    keeper.set_masks(dict(mask))
    return keeper
