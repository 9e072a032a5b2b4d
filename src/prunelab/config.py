"""Structured configs (Hydra ConfigStore) and OmegaConf resolvers.

The pruner and schedule groups are typed: every ``conf/pruner/*.yaml`` extends ``schema/pruner/base_pruner`` and
every ``conf/schedule/*.yaml`` extends one of the ``schema/schedule/base_*`` schemas, so a misspelt key
(``pruner.scpoe=global``) or a wrong type fails at compose time, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

Scope = Enum("Scope", {"layer": "layer", "global": "global"})
Steps = Enum("Steps", {"geometric": "geometric", "linear": "linear"})


@dataclass
class PrunerConf:
    _target_: str = "prunelab.pruning.Pruner"
    name: str = "magnitude"
    score: Optional[str] = "magnitude"
    scope: Scope = Scope["layer"]
    include: Optional[list[str]] = None
    exclude: list[str] = field(default_factory=list)
    seed: int = "${seed}"  # type: ignore[assignment]  # interpolation, resolved to an int
    default_sparsity: float = 0.5  # what `sparsity` is when the command does not set it


@dataclass
class OneShotConf:
    _target_: str = "prunelab.pruning.OneShot"
    at_epoch: int = "${epochs_frac:0.5}"  # type: ignore[assignment]


@dataclass
class IterativeConf:
    _target_: str = "prunelab.pruning.Iterative"
    start_epoch: int = "${epochs_frac:0.1}"  # type: ignore[assignment]
    end_epoch: int = "${epochs_frac:0.7}"  # type: ignore[assignment]
    rounds: int = 3
    steps: Steps = Steps["geometric"]


@dataclass
class GradualConf:
    _target_: str = "prunelab.pruning.Gradual"
    start_epoch: int = "${epochs_frac:0.1}"  # type: ignore[assignment]
    end_epoch: int = "${epochs_frac:0.6}"  # type: ignore[assignment]
    frequency: int = 1
    initial_sparsity: float = 0.0


def _epochs_frac(frac: Any, *, _root_) -> int:
    """``${epochs_frac:0.5}`` -> round(0.5 * epochs): schedule epochs that follow the run length."""
    epochs = _root_.get("epochs")
    if epochs is None:
        raise ValueError("epochs_frac needs a top-level 'epochs' key")
    return int(round(float(frac) * int(epochs)))


def register_configs() -> None:
    """Register schemas and resolvers (idempotent; called on import)."""
    if not OmegaConf.has_resolver("epochs_frac"):
        OmegaConf.register_new_resolver("epochs_frac", _epochs_frac)
    cs = ConfigStore.instance()
    cs.store(group="schema/pruner", name="base_pruner", node=PrunerConf)
    cs.store(group="schema/schedule", name="base_oneshot", node=OneShotConf)
    cs.store(group="schema/schedule", name="base_iterative", node=IterativeConf)
    cs.store(group="schema/schedule", name="base_gradual", node=GradualConf)


register_configs()
