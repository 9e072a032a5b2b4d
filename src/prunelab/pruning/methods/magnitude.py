"""Data-free score-then-select methods: weight magnitude (per layer or global), LAMP's
layer-adaptive magnitude score, and the random control."""

from __future__ import annotations

from collections.abc import Sequence

from prunelab.pruning.methods.base import ScoreThenSelect
from prunelab.pruning.params import PruningConfigError

NORMS = (1, 2)


class Magnitude(ScoreThenSelect):
    """|w| (Han et al. 2015). With ``granularity=structured`` a channel is ranked by the L1 or L2
    norm (``norm``) of its weights.

    Args:
        norm: structured: rank channels by the L1 (1) or L2 (2) norm of their weights.
        scope, granularity, include, exclude, seed: see :class:`ScoreThenSelect`.
    """

    name = "magnitude"
    score = "magnitude"

    def __init__(self, scope: str = "layer", granularity: str = "unstructured", norm: int = 1,
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0, distribution: str | None = None):
        super().__init__(scope, granularity, include, exclude, seed, distribution=distribution)
        if norm not in NORMS:
            raise PruningConfigError(f"pruner.norm={norm!r} is not one of 1, 2")
        self.norm = int(norm)
        self.channel_norm = self.norm


class GlobalMagnitude(Magnitude):
    """|w| with one threshold over all prunable weights."""

    name = "global_magnitude"

    def __init__(self, scope: str = "global", granularity: str = "unstructured", norm: int = 1,
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0, distribution: str | None = None):
        super().__init__(scope, granularity, norm, include, exclude, seed,
                         distribution=distribution)


class Random(ScoreThenSelect):
    """Uniform random scores from the seeded generator (the control baseline); structured: a
    channel's score is the sum of its elements'."""

    name = "random"
    score = "random"


class LAMP(ScoreThenSelect):
    """Layer-adaptive magnitude-based pruning (Lee et al. 2021): the LAMP score (each weight's
    squared magnitude over the sum of the squares of the weights not smaller in its tensor) with
    one global threshold, so each layer's sparsity follows from the scores."""

    name = "lamp"
    score = "lamp"
    granularities = ("unstructured",)

    def __init__(self, scope: str = "global", granularity: str = "unstructured",
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0, distribution: str | None = None):
        super().__init__(scope, granularity, include, exclude, seed, distribution=distribution)

