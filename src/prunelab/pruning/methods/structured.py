"""Structured magnitude pruning: whole channels (Conv), neurons (Linear) and attention heads."""

from __future__ import annotations

from collections.abc import Sequence

from prunelab.pruning.methods.magnitude import Magnitude


class Structured(Magnitude):
    """Whole channels ranked by the L1 or L2 norm (``norm``) of their weights. A channel is one
    of a traced channel group (:mod:`prunelab.graph`): tied by residual additions,
    concatenations, depthwise convolutions and squeeze-and-excitation gates, or an attention
    head; its rows in every weight of the group go together, with the biases and BatchNorm
    entries that follow them, so that the compact network equals the masked one. The output
    layer's classes and the last channel of a group are never pruned. ``scope=global`` compares
    the norms per weight of the channel (norm / size^(1/p))."""

    name = "structured"

    def __init__(self, scope: str = "layer", granularity: str = "structured", norm: int = 1,
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0, distribution: str | None = None):
        super().__init__(scope, granularity, norm, include, exclude, seed,
                         distribution=distribution)
