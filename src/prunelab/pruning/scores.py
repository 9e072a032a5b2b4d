"""Importance scores: pure functions ``(param, context) -> Tensor`` of the parameter's shape.

Larger means keep. Scores are registered by name so that configs select them (``pruner.score``);
an unknown name raises an error listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class ScoreContext:
    """What a score function may look at besides the parameter itself."""

    name: str
    generator: torch.Generator | None = None
    stats: dict = field(default_factory=dict)


ScoreFn = Callable[[torch.Tensor, ScoreContext], torch.Tensor]
SCORES: dict[str, ScoreFn] = {}


def register_score(name: str) -> Callable[[ScoreFn], ScoreFn]:
    def deco(fn: ScoreFn) -> ScoreFn:
        if name in SCORES:
            raise ValueError(f"score {name!r} registered twice")
        SCORES[name] = fn
        return fn

    return deco


def get_score(name: str) -> ScoreFn:
    try:
        return SCORES[name]
    except KeyError:
        raise KeyError(f"unknown score {name!r}; known: {', '.join(sorted(SCORES))}") from None


@register_score("magnitude")
def magnitude(param: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """|w|: the L1 magnitude criterion (Han et al. 2015)."""
    return param.detach().abs().float()


@register_score("random")
def random(param: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """Uniform random scores from the context's seeded generator (the control baseline)."""
    return torch.rand(param.shape, generator=ctx.generator, device="cpu").to(param.device)
