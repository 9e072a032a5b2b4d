"""The pruner: which parameters are prunable, how they are scored, and how masks are selected.

One :class:`Pruner` class covers every method: the importance criterion is a registered score
function injected by name (``score``), the selection scope is ``layer`` or ``global``. Named
presets (``PRUNERS``) are what ``pruner=<name>`` selects; each has a config file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.pruning.scores import ScoreContext, get_score
from prunelab.pruning.selection import SCOPES, select_masks

#: Layer types whose ``weight`` is prunable by default.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Registered pruner presets: config name -> (score, scope). ``none`` is the dense baseline.
PRUNERS: dict[str, dict] = {
    "none": {"score": None, "scope": "layer"},
    "magnitude": {"score": "magnitude", "scope": "layer"},
    "global_magnitude": {"score": "magnitude", "scope": "global"},
    "random": {"score": "random", "scope": "layer"},
}


class PruningConfigError(ValueError):
    """A pruning setting that cannot work for this run (one-line message)."""


def check_pruner_name(name: str) -> None:
    if name not in PRUNERS:
        raise PruningConfigError(f"unknown pruner={name!r}; known: {', '.join(sorted(PRUNERS))}")


def default_prunable(model: nn.Module) -> list[str]:
    """Names of the weights of Linear and Conv layers, in module order."""
    out = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, DEFAULT_PRUNABLE_TYPES) and getattr(mod, "weight", None) is not None:
            out.append(f"{mod_name}.weight" if mod_name else "weight")
    return out


class Pruner:
    """Prunes the parameters selected by ``include``/``exclude`` globs.

    Args:
        name: the preset name (for reports); must be a registered pruner.
        score: registered score name (``magnitude``, ``random``, ...); ``None`` for ``none``.
        scope: ``layer`` (every tensor to the target) or ``global`` (one threshold overall).
        include: glob patterns on parameter names; ``None`` = weights of Linear/Conv layers.
        exclude: glob patterns removed from the included set.
        seed: seeds the generator of stochastic scores (same seed, same masks).
        default_sparsity: the run's ``sparsity`` when the command does not set one (0 for ``none``).
    """

    def __init__(self, name: str = "magnitude", score: str | None = "magnitude",
                 scope: str = "layer", include: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None, seed: int = 0,
                 default_sparsity: float = 0.5):
        check_pruner_name(name)
        scope = getattr(scope, "value", scope)
        if scope not in SCOPES:
            raise PruningConfigError(f"pruner.scope={scope!r} is not one of {', '.join(SCOPES)}")
        if score is not None:
            get_score(score)  # fail early on an unknown score name
        self.name = name
        self.score = score
        self.scope = scope
        self.include = list(include) if include else None
        self.exclude = list(exclude) if exclude else []
        self.seed = int(seed)
        self.default_sparsity = float(default_sparsity)

    @property
    def is_dense(self) -> bool:
        return self.score is None

    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The prunable parameters of ``model`` by name, in registration order."""
        named = dict(model.named_parameters())
        if self.include is None:
            names = default_prunable(model)
        else:
            names = [n for n in named if any(fnmatch.fnmatchcase(n, p) for p in self.include)]
            if not names:
                raise PruningConfigError(
                    f"pruner.include={self.include} matches no parameter; parameter names look like: "
                    f"{', '.join(list(named)[:6])}"
                )
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in self.exclude)]
        if not names:
            raise PruningConfigError(
                f"pruner.exclude={self.exclude} leaves no prunable parameter"
            )
        return {n: named[n] for n in names}

    def generator(self, event: int) -> torch.Generator:
        """A CPU generator seeded from the pruner seed and the pruning event index."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + event)

    @torch.no_grad()
    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float | Mapping[str, float], event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        """New keep-masks at the cumulative ``target`` sparsity."""
        if self.is_dense:
            raise PruningConfigError("pruner=none does not prune; use sparsity=0")
        fn = get_score(self.score)
        gen = self.generator(event)
        scores = {
            n: fn(p, ScoreContext(name=n, generator=gen, stats=(stats or {}).get(n, {})))
            for n, p in params.items()
        }
        return select_masks(scores, old_masks, target, self.scope)

    def __repr__(self) -> str:
        return (f"Pruner(name={self.name!r}, score={self.score!r}, scope={self.scope!r}, "
                f"include={self.include}, exclude={self.exclude})")
