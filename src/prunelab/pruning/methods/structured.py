"""Structured magnitude pruning: whole output channels (Conv) / neurons (Linear)."""

from __future__ import annotations

from collections.abc import Sequence

from prunelab.pruning.methods.magnitude import Magnitude


class Structured(Magnitude):
    """Whole output channels ranked by the L1 or L2 norm (``norm``) of their weights; the
    channel's bias and following BatchNorm are masked too, channels tied by a residual addition go
    together, and the output layer's classes and the last channel of a layer are never pruned.
    ``scope=global`` compares the norms per weight of the channel (norm / size^(1/p))."""

    name = "structured"

    def __init__(self, scope: str = "layer", granularity: str = "structured", norm: int = 1,
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0):
        super().__init__(scope, granularity, norm, include, exclude, seed)
