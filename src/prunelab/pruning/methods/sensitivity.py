"""Layerwise magnitude pruning with per-layer targets from a sensitivity profile."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunelab.config import load_profile
from prunelab.pruning.methods.base import ScoreThenSelect
from prunelab.pruning.methods.channels import ChannelLayout, select_unit_ratios
from prunelab.pruning.methods.gradient import score_batches_setting
from prunelab.pruning.params import PruningConfigError
from prunelab.pruning.scores import get_score
from prunelab.pruning.selection import select_masks

#: What goes within each layer (``pruner.score``), with what it needs besides the profile: the
#: smallest |w|, the smallest accumulated |w * dL/dw| (Taylor; gathered over the epoch before the
#: event, or ``score_batches`` batches at epoch 0), or random elements (the control).
SCORES = {"magnitude": frozenset(), "taylor": frozenset({"gradients"}), "random": frozenset()}


class Sensitivity(ScoreThenSelect):
    """|w| per layer (or another score), each layer to its own target: the profile's sparsity
    for it scaled by ``target / profile target`` (so the run reaches the profile exactly when
    ``sparsity`` is the profile's target). Layers the profile does not name are not pruned.

    Args:
        profile: a YAML written by ``python -m prunelab.sensitivity`` (required).
        include, exclude: which parameters (see :class:`PruningMethod`).
        score: what goes within each layer, one of :data:`SCORES` (the policy search can
            search it: ``params={pruner.score: choice(magnitude,taylor)}``).
        score_batches: ``taylor`` with nothing gathered (an event at epoch 0): batches of the
            pass that gathers the scores.
        seed: ``random``: seeds the generator.
    """

    name = "sensitivity"
    score = "magnitude"
    needs = frozenset({"profile"})
    channel_norm = 1

    def __init__(self, profile: str | None = None, include: Sequence[str] | None = None,
                 exclude: Sequence[str] = (), score: str = "magnitude", score_batches: int = 10,
                 seed: int = 0):
        if not profile:
            raise PruningConfigError("pruner=sensitivity needs pruner.profile=<yaml> (written by "
                                     "python -m prunelab.sensitivity)")
        if score not in SCORES:
            raise PruningConfigError(f"pruner.score={score!r}; allowed: {', '.join(SCORES)}")
        self.profile = load_profile(profile)
        super().__init__("layer", self.profile["granularity"], include, exclude, seed)
        self.score_fn = get_score(score)
        self.needs = type(self).needs | SCORES[score]
        self.score_batches = score_batches_setting(score_batches)

    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = super().resolve(model)
        unknown = sorted(set(self.profile["layers"]) - set(params))
        if unknown:
            raise PruningConfigError(
                f"pruner.profile names layers the model does not prune: {', '.join(unknown)}; "
                f"prunable: {', '.join(params)}")
        return params

    def layer_targets(self, target: float) -> dict[str, float]:
        """Per-layer targets at the run's cumulative ``target``."""
        scale = target / self.profile["target_sparsity"]
        out = {}
        for name, s in self.profile["layers"].items():
            t = s * scale
            if t >= 1.0:
                raise PruningConfigError(f"pruner.profile: layer {name} would reach sparsity {t:.3f} "
                                         f">= 1 at target {target}")
            out[name] = t
        return out

    def check_sparsity(self, sparsity: float) -> None:
        self.layer_targets(sparsity)  # every layer's scaled target must stay below 1

    def reached(self, params: Mapping[str, torch.Tensor], sparsity: float) -> float:
        """The total sparsity over ``params`` that the profile's layers give at ``sparsity``
        (layers the profile does not name stay dense)."""
        targets = self.layer_targets(sparsity)
        total = sum(p.numel() for p in params.values())
        return sum(targets.get(n, 0.0) * p.numel() for n, p in params.items()) / max(total, 1)

    def check_run(self, model: nn.Module, schedule: Any, sparsity: float) -> None:
        """A profile that does not reach ``sparsity`` on this model (one that names only some
        of its layers, or was made for other layer sizes): one ``prunelab: warning:`` line."""
        params = self.resolve(model)
        reached = self.reached(params, sparsity)
        if sparsity > 0 and abs(reached - sparsity) > 5e-4:
            named = sum(n in self.profile["layers"] for n in params)
            why = (f"names {named} of the {len(params)} prunable layers (the others stay dense)"
                   if named < len(params) else "was made for other layer sizes")
            print(f"prunelab: warning: pruner.profile {why}: the run reaches total sparsity "
                  f"{reached:.4f}, not sparsity={sparsity:g}; a profile written by python -m "
                  f"prunelab.sensitivity for this model reaches it", file=sys.stderr)

    def select(self, params: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
               old_masks: Mapping[str, torch.Tensor], target: float) -> dict[str, torch.Tensor]:
        targets = self.layer_targets(target)
        if self.granularity == "structured":
            layout = self._layout or ChannelLayout.per_weight(params)
            return select_unit_ratios(params, scores, old_masks, targets, layout, self.channel_norm)
        return select_masks(scores, old_masks, {n: targets.get(n, 0.0) for n in params}, "layer")
