"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by
Fine-Tuning") for fine-tuning from trained weights.

A weight's score is how much it moves *away from zero* during fine-tuning: the first-order
S = -sum_t (dL/dW)_t * W_t over every optimizer step from the start of training (the paper's
scores, learned with a straight-through estimator, accumulate this times the learning rate
under plain SGD; the paper trains them with Adam, and its pruned weights keep their values and
may return, where prunelab's masks are monotone and pruned weights are zero). Weights moving towards zero score low and are pruned, whatever their magnitude; that is
what distinguishes it from magnitude pruning, which favours large pretrained weights.

- ``variant=hard``: each weight matrix keeps its top-v scores (the paper's hard movement
  pruning, v from the run's cubic schedule).
- ``variant=soft``: one threshold over all scores (the paper's soft movement pruning lets each
  layer's sparsity follow the scores; its threshold and score penalty set the final sparsity,
  here the threshold is the one that meets the run's exact target).
- ``distribution=uniform|erk`` (with ``hard``): each weight tensor's share of the global budget
  is set in advance, then each keeps its top scores (``soft``'s one threshold would contradict it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prunelab.pruning.methods.base import ScoreThenSelect, _value
from prunelab.pruning.params import PruningConfigError
from prunelab.pruning.scores import ScoreContext

VARIANTS = ("hard", "soft")


def movement_score(param: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """-sum_t W_t * (dL/dW)_t accumulated by the callback (``ctx.stats["wg"]``)."""
    s = ctx.stats.get("wg")
    if s is None:
        raise RuntimeError(f"movement scores for {ctx.name!r} were not accumulated (is the "
                           f"PruningCallback driving this pruner?)")
    return s.float()


class Movement(ScoreThenSelect):
    """Movement pruning: prune the weights that move towards zero during fine-tuning.

    Args:
        variant: ``hard`` (top-v per weight tensor) or ``soft`` (one global threshold).
        include, exclude, seed, distribution: see :class:`ScoreThenSelect`.
    """

    name = "movement"
    score = staticmethod(movement_score)
    needs = frozenset({"gradients", "pretrained"})
    accumulate = "run"
    granularities = ("unstructured",)

    def __init__(self, variant: str = "hard", include: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), seed: int = 0, distribution: str | None = None):
        variant, distribution = _value(variant), _value(distribution)
        if variant not in VARIANTS:
            raise PruningConfigError(f"pruner.variant={variant!r} is not one of "
                                     f"{', '.join(VARIANTS)}")
        if variant == "soft" and distribution is not None:
            raise PruningConfigError(
                f"pruner.distribution={distribution} sets each weight tensor's share of the "
                f"budget, but pruner.variant=soft selects by one global threshold; allowed: "
                f"pruner.variant=hard with a distribution, or pruner.distribution=null")
        super().__init__("layer" if variant == "hard" else "global", "unstructured", include,
                         exclude, seed, distribution)
        self.variant = variant

    @staticmethod
    def step_statistic(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return -(weight * grad)

    def check_run(self, model: Any, schedule: Any, sparsity: float) -> None:
        events = schedule.events(sparsity) if sparsity > 0 else {}
        pruning = [e for e, t in events.items() if t > 0]  # an event at 0 % prunes nothing
        if pruning and min(pruning) < 1:
            raise PruningConfigError(
                f"pruner=movement scores weights by how they move during fine-tuning: its first "
                f"pruning epoch is {min(pruning)}, before any step; allowed: a schedule whose "
                f"first event is at epoch >= 1 (e.g. schedule.start_epoch=1)")

    def report(self) -> dict:
        return {"variant": self.variant}


__all__ = ["Movement", "movement_score"]
