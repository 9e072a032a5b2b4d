"""Score-then-select methods on |w * dL/dw|: Taylor (during training) and SNIP (at init)."""

from __future__ import annotations

from collections.abc import Sequence

from prunelab.pruning.methods.base import ScoreThenSelect
from prunelab.pruning.params import PruningConfigError


def score_batches_setting(value: object) -> int:
    """``pruner.score_batches``: an integer >= 1 (a one-line PruningConfigError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PruningConfigError(f"pruner.score_batches={value!r} must be an integer >= 1")
    return value


class GradientScored(ScoreThenSelect):
    """A score from accumulated |w * dL/dw| (``stats["wg"]``, gathered by the callback).

    Args:
        score_batches: batches of the pass over training data that gathers the scores when
            none were gathered during training (an event at epoch 0, or at initialization).
        scope, granularity, include, exclude, seed: see :class:`ScoreThenSelect`.
    """

    def __init__(self, scope: str = "layer", granularity: str = "unstructured",
                 score_batches: int = 10, include: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), seed: int = 0, distribution: str | None = None):
        super().__init__(scope, granularity, include, exclude, seed, distribution=distribution)
        self.score_batches = score_batches_setting(score_batches)


class Taylor(GradientScored):
    """First-order Taylor importance |w * dL/dw| accumulated over the batches of the training
    epoch before each pruning event (Molchanov et al. 2017/2019); structured: a channel's score
    is the sum of its elements'."""

    name = "taylor"
    score = "taylor"
    needs = frozenset({"gradients"})


class SNIP(GradientScored):
    """Connection sensitivity |w * dL/dw| at initialization from ``score_batches`` batches,
    pruning once before training to the final target (Lee et al. 2019); the schedule is not
    used."""

    name = "snip"
    score = "snip"
    needs = frozenset({"calibration"})
    at_init = True

    def __init__(self, scope: str = "global", granularity: str = "unstructured",
                 score_batches: int = 10, include: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), seed: int = 0, distribution: str | None = None):
        super().__init__(scope, granularity, score_batches, include, exclude, seed,
                         distribution=distribution)
