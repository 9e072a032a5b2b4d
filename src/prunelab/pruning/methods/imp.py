"""Iterative magnitude pruning (IMP), the lottery's method (Frankle & Carbin 2019).

Each level trains a network with fixed masks; between levels the next masks are chosen from the
trained weights. Level ``L`` prunes the cumulative fraction ``1 - (1 - f)^L`` of every tensor by
magnitude (``scope=layer``), or of all tensors together (``scope=global``; tensors with their own
fraction stay layer-wise). Old zeros stay zero, so the masks are nested across levels.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import torch
from torch import nn

from prunelab.pruning.methods.base import PruningMethod, mask_generator
from prunelab.pruning.params import PruningConfigError, prunable_parameters
from prunelab.pruning.selection import SCOPES, select_masks


def _fraction(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 < float(value) < 1.0:
        raise PruningConfigError(f"{option}={value!r} is outside the allowed range (0, 1)")
    return float(value)


def layer_fractions(names: Sequence[str], output_layer: str | None,
                    fractions: Mapping[str, float], output_fraction: float | None
                    ) -> dict[str, float]:
    """Per-level prune fraction of every prunable tensor: the first matching glob of
    ``fractions``, else ``output_fraction`` for the output layer, else (not returned) the
    default fraction. Only tensors that differ from the default are returned."""
    out = {}
    for n in names:
        for pattern, frac in fractions.items():
            if fnmatch.fnmatchcase(n, pattern):
                out[n] = frac
                break
        else:
            if (output_layer and output_fraction is not None
                    and n.rsplit(".", 1)[0] == output_layer):
                out[n] = output_fraction
    return out


def imp_masks(weights: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor], level: int,
              fraction: float, own: Mapping[str, float], scope: str) -> dict[str, torch.Tensor]:
    """Masks of ``level`` by weight magnitude: cumulative target ``1 - (1 - f)^level`` per tensor
    (layer scope) or over all tensors without their own fraction (global scope)."""
    scores = {n: w.detach().abs() for n, w in weights.items()}
    targets = {n: 1.0 - (1.0 - own.get(n, fraction)) ** level for n in weights}
    if scope == "layer":
        return select_masks(scores, old, targets, "layer")
    shared = [n for n in weights if n not in own]
    out = {}
    if shared:
        out.update(select_masks({n: scores[n] for n in shared}, {n: old[n] for n in shared},
                                1.0 - (1.0 - fraction) ** level, "global"))
    for n in own:
        out.update(select_masks({n: scores[n]}, {n: old[n]}, {n: targets[n]}, "layer"))
    return {n: out[n] for n in weights}


def random_masks(like: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor],
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Masks with the per-tensor sparsity of ``like`` at random positions inside ``old`` (so the
    random masks are nested across levels too): the random-mask control of a ticket."""
    scores = {n: torch.rand(m.shape, generator=generator) for n, m in like.items()}
    targets = {n: float((~m).sum()) / m.numel() for n, m in like.items()}
    return select_masks(scores, {n: old[n].cpu() for n in like}, targets, "layer")


class IMP(PruningMethod):
    """Iterative magnitude pruning between training levels (the lottery's method).

    Within a level nothing is pruned (the run's ``sparsity`` is 0): the level's masks are set
    before training and held by a :class:`~prunelab.pruning.PruningCallback` (the "keeper"),
    which keeps the pruned weights at zero after every step and snapshots the rewind weights.
    Masks only shrink (each level's masks lie inside the previous level's, and a keeper starts
    from all-ones), so ``may_regrow`` is false.

    Args:
        prune_fraction: fraction of the remaining weights pruned per level, in (0, 1).
        output_fraction: the output layer's fraction (``None``: ``prune_fraction``).
        layer_fractions: glob -> fraction per level (the first matching glob wins).
        scope: ``layer`` or ``global`` (tensors with their own fraction stay layer-wise).
        include, exclude: which parameters (``lottery.include`` / ``lottery.exclude``).
        seed: the run's seed; the random-mask control of level ``L`` draws from
            ``mask_generator(seed, L)``.

    How the lottery uses it::

        imp = IMP(prune_fraction=lc.prune_fraction, output_fraction=lc.output_fraction,
                  layer_fractions=lc.layer_fractions, scope=lc.scope, include=lc.include,
                  exclude=lc.exclude, seed=cfg.seed)
        names = list(imp.resolve(net))        # prunable names; checks the layer_fractions globs
        own = imp.own_fractions(net)          # tensors whose fraction is not prune_fraction
        mask = imp.level_masks(end_weights, previous_mask, level, own)   # ticket, level >= 1
        mask = imp.control_masks(ticket_mask, previous_mask, level)      # control=random_mask
        keeper = PruningCallback(imp, OneShot(), 0.0, rewind_step=rewind_step)
        keeper.bind(net)
        keeper.set_masks(mask)                # validates, applies; then trainer.fit(...)
    """

    name = "imp"

    def __init__(self, prune_fraction: float = 0.2, output_fraction: float | None = None,
                 layer_fractions: Mapping[str, float] | None = None, scope: str = "layer",
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0):
        super().__init__(include, exclude)
        scope = getattr(scope, "value", scope)
        if scope not in SCOPES:
            raise PruningConfigError(f"lottery.scope={scope!r} is not one of {', '.join(SCOPES)}")
        self.prune_fraction = _fraction("lottery.prune_fraction", prune_fraction)
        self.output_fraction = (None if output_fraction is None
                                else _fraction("lottery.output_fraction", output_fraction))
        self.layer_fractions = {str(k): _fraction(f"lottery.layer_fractions.{k}", v)
                                for k, v in (layer_fractions or {}).items()}
        self.scope = scope
        self.seed = int(seed)

    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The prunable parameters; every ``layer_fractions`` glob must match one of them."""
        params = prunable_parameters(model, self.include, self.exclude, option="lottery")
        unknown = [p for p in self.layer_fractions
                   if not any(fnmatch.fnmatchcase(n, p) for n in params)]
        if unknown:
            raise PruningConfigError(f"lottery.layer_fractions pattern {unknown[0]!r} matches no "
                                     f"prunable parameter; prunable: {', '.join(params)}")
        return params

    def own_fractions(self, model: nn.Module) -> dict[str, float]:
        """Per-level fraction of the tensors whose fraction is not ``prune_fraction``."""
        from prunelab.models import output_layer_name

        try:
            out_layer = output_layer_name(model)
        except (AttributeError, ValueError):
            out_layer = None
        return layer_fractions(list(self.resolve(model)), out_layer, self.layer_fractions,
                               self.output_fraction)

    def level_target(self, level: int, name: str | None = None,
                     own: Mapping[str, float] | None = None) -> float:
        """The cumulative sparsity of ``level`` (of tensor ``name`` when it has its own
        fraction)."""
        frac = (own or {}).get(name, self.prune_fraction)
        return 1.0 - (1.0 - frac) ** level

    def level_masks(self, weights: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor],
                    level: int, own: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """The masks of ``level`` from the weights that ended level ``level - 1`` and its
        masks ``old``."""
        return imp_masks(weights, old, level, self.prune_fraction, own, self.scope)

    def control_masks(self, like: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor],
                      level: int) -> dict[str, torch.Tensor]:
        """The random-mask control of ``level``: the ticket's per-tensor sparsity (``like``) at
        random positions inside ``old``, drawn from ``mask_generator(seed, level)``."""
        return random_masks(like, old, mask_generator(self.seed, level))

    def check_sparsity(self, sparsity: float) -> None:
        if sparsity > 0:
            raise PruningConfigError(f"IMP prunes between lottery levels (lottery.prune_fraction), "
                                     f"not during training: sparsity={sparsity}; allowed: 0")

    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float, event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        raise PruningConfigError("IMP sets each level's masks with level_masks(); it does not "
                                 "prune during training")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prune_fraction": self.prune_fraction,
                "output_fraction": self.output_fraction,
                "layer_fractions": dict(self.layer_fractions)}
