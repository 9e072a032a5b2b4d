"""Importance scores: pure functions ``(param, context) -> Tensor`` of the parameter's shape.

Larger means keep. Scores are registered by name; a score-then-select method
(:class:`prunelab.pruning.methods.ScoreThenSelect`) names the one it uses (``score = "taylor"``) or
holds any callable of this signature. An unknown name raises an error listing the known ones.
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
    """Register a score function under ``name`` (a decorator)."""

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


def accumulated_wg(param: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """|w * dL/dw| summed over batches, gathered by the PruningCallback (``ctx.stats["wg"]``).

    Registered twice; the two methods (which declare that they need gradients) differ in *when*
    the callback gathers it:
    ``taylor``: first-order Taylor importance over the batches of the epoch before each pruning
    step (Molchanov et al. 2017/2019); ``snip``: connection sensitivity at initialization over a
    few batches (Lee et al. 2019; its normalization by the sum does not change the ranking).
    """
    wg = ctx.stats.get("wg")
    if wg is None:
        raise RuntimeError(f"gradient scores need accumulated |w * grad| for {ctx.name!r}; none "
                           f"was gathered (is the PruningCallback driving this pruner?)")
    return wg.float()


register_score("taylor")(accumulated_wg)
register_score("snip")(accumulated_wg)


@register_score("lamp")
def lamp(param: torch.Tensor, ctx: ScoreContext) -> torch.Tensor:
    """Layer-adaptive magnitude-based pruning score (Lee et al. 2021, LAMP): with a tensor's
    weights sorted by magnitude (ascending, ties by position), weight u scores
    ``w_u^2 / sum_{v >= u} w_v^2``, its squared magnitude over the sum of the squares of itself
    and every larger weight. The largest weight of each tensor scores 1, so one global threshold
    never empties a layer; already pruned (zero) weights score 0."""
    w2 = param.detach().float().reshape(-1) ** 2
    order = torch.sort(w2, stable=True).indices
    sorted_w2 = w2[order]
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_w2, [0]), 0), [0])
    out = torch.empty_like(w2)
    out[order] = sorted_w2 / suffix.clamp_min(torch.finfo(torch.float32).tiny)
    return out.view_as(param)

