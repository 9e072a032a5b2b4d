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
#: Scores computed from accumulated ``|w * dL/dw|`` (``ctx.stats["wg"]``), which the callback
#: gathers from training batches before each pruning step.
GRADIENT_SCORES: set[str] = set()


def register_score(name: str, needs_gradients: bool = False) -> Callable[[ScoreFn], ScoreFn]:
    def deco(fn: ScoreFn) -> ScoreFn:
        if name in SCORES:
            raise ValueError(f"score {name!r} registered twice")
        SCORES[name] = fn
        if needs_gradients:
            GRADIENT_SCORES.add(name)
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


def accumulated_wg(param: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """|w * dL/dw| summed over batches, gathered by the PruningCallback (``ctx.stats["wg"]``).

    Registered twice; the two methods differ in *when* the callback gathers it:
    ``taylor``: first-order Taylor importance over the batches of the epoch before each pruning
    step (Molchanov et al. 2017/2019); ``snip``: connection sensitivity at initialization over a
    few batches (Lee et al. 2019; its normalization by the sum does not change the ranking).
    """
    wg = ctx.stats.get("wg")
    if wg is None:
        raise RuntimeError(f"gradient scores need accumulated |w * grad| for {ctx.name!r}; none "
                           f"was gathered (is the PruningCallback driving this pruner?)")
    return wg.float()


register_score("taylor", needs_gradients=True)(accumulated_wg)
register_score("snip", needs_gradients=True)(accumulated_wg)
