"""The config schemas of the pruner and schedule groups (Hydra structured configs).

Every ``conf/pruner/<name>.yaml`` extends its method's schema ``schema/pruner/<name>`` and every
``conf/schedule/*.yaml`` one of the ``schema/schedule/base_*`` schemas
(:func:`prunelab.config.register_configs` stores them), so a misspelt key, a key of another
method or a wrong type fails at compose time, before anything runs. A new method's keys go here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from omegaconf import MISSING

Scope = Enum("Scope", {"layer": "layer", "global": "global"})
Steps = Enum("Steps", {"geometric": "geometric", "linear": "linear"})
#: what a score-then-select method removes: elements or whole output channels
Granularity = Enum("Granularity", {g: g for g in ("unstructured", "structured")})
#: how a global budget is spread over layers (Evci et al. 2020: Erdős–Rényi-Kernel)
Distribution = Enum("Distribution", {d: d for d in ("uniform", "erk")})
Decay = Enum("Decay", {d: d for d in ("cosine", "constant")})
Rewind = Enum("Rewind", {r: r for r in ("none", "lr", "weights")})

#: What runs the model when pruning measures latency (``hardware.runtime``): PyTorch itself,
#: ExecuTorch programs lowered to XNNPACK, or onnxruntime sessions of the ONNX export.
RUNTIMES = ("eager", "executorch", "onnxruntime")


# -- pruning methods: one schema per family; each conf/pruner/<name>.yaml extends
# -- schema/pruner/<name> and names its class in _target_ ---------------------------------------

@dataclass
class MethodConf:
    """Keys of every method (``schema/pruner/base``)."""

    _target_: str = MISSING
    include: Optional[list[str]] = None  # parameter-name globs; null = Linear/Conv weights
    exclude: list[str] = field(default_factory=list)
    default_sparsity: float = 0.5  # the run's `sparsity` when the command sets none (not a
    # constructor argument: build_method drops it)


@dataclass
class DenseConf(MethodConf):
    default_sparsity: float = 0.0


@dataclass
class ScoreThenSelectConf(MethodConf):
    """``schema/pruner/score_then_select``: a score, then the shared selection."""

    scope: Scope = Scope["layer"]
    granularity: Granularity = Granularity["unstructured"]
    seed: int = "${seed}"  # type: ignore[assignment]  # interpolation, resolved to an int
    # null: the scope decides; uniform | erk: each layer's sparsity from the global budget
    # (unstructured only; erk = Erdős–Rényi-Kernel, Evci et al. 2020)
    distribution: Optional[Distribution] = None


@dataclass
class MagnitudeConf(ScoreThenSelectConf):
    norm: int = 1  # structured: rank channels by the L1 (1) or L2 (2) norm of their weights


@dataclass
class GradientConf(ScoreThenSelectConf):
    score_batches: int = 10  # batches for gradient scores gathered outside training


@dataclass
class NMConf(MethodConf):
    n: int = 2  # keep n ...
    m: int = 4  # ... of every m consecutive input weights
    skip_incompatible: bool = False  # skip layers whose input dim is not a multiple of m
    default_sparsity: float = "${nm_sparsity:${.n},${.m}}"  # type: ignore[assignment]


@dataclass
class SensitivityConf(MethodConf):
    profile: Optional[str] = None  # sensitivity profile YAML (required)
    score: str = "magnitude"  # what goes within each layer: magnitude | taylor | random
    score_batches: int = 10  # taylor at epoch 0: batches that gather |w * dL/dw|
    seed: int = "${seed}"  # type: ignore[assignment]  # random: the generator's seed
    default_sparsity: float = "${profile_sparsity:${.profile}}"  # type: ignore[assignment]


@dataclass
class LatencyAwareConf(MethodConf):
    latency_budget_ms: Optional[float] = None  # the compacted model's latency budget
    latency_batch_size: int = 1  # ... measured at this batch size
    latency_threads: Optional[int] = None  # ... with this many threads
    latency_runtime: str = "eager"  # ... in this runtime: one of RUNTIMES


@dataclass
class GraSPConf(GradientConf):
    temperature: float = 200.0  # logits divided by T before the loss (Wang et al. 2020: 200)


@dataclass
class SynFlowConf(ScoreThenSelectConf):
    rounds: int = 100  # pruning rounds at exponentially rising sparsity (Tanaka et al. 2020: 100)


@dataclass
class DynamicConf(MethodConf):
    """``schema/pruner/set`` and ``rigl``: dynamic sparse training (Evci et al. 2020 defaults)."""

    distribution: Distribution = Distribution["erk"]
    delta_t: int = 100  # optimizer steps between mask updates
    drop_fraction: float = 0.3  # fraction of each layer's kept weights replaced, in (0, 1)
    decay: Decay = Decay["cosine"]  # of the drop fraction: cosine (to 0 at t_end) | constant
    t_end: float = 0.75  # fraction of training after which the masks stay
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class MovementConf(MethodConf):
    variant: str = "hard"  # hard: top-v per weight tensor | soft: one global threshold
    seed: int = "${seed}"  # type: ignore[assignment]
    distribution: Optional[Distribution] = None  # null | uniform | erk (with variant=hard)


@dataclass
class FixedMaskConf(MethodConf):
    masks: Optional[str] = None  # a torch file of {parameter name: bool tensor}


#: ``schema/pruner/<name>`` -> its schema: the built-in methods, and the two bases a method of
#: one's own extends (``base``: any method; ``score_then_select``: scope, granularity, seed).
PRUNER_SCHEMAS = {
    "base": MethodConf, "score_then_select": ScoreThenSelectConf, "none": DenseConf,
    "magnitude": MagnitudeConf, "global_magnitude": MagnitudeConf, "structured": MagnitudeConf,
    "random": ScoreThenSelectConf, "taylor": GradientConf, "snip": GradientConf, "nm": NMConf,
    "sensitivity": SensitivityConf, "latency_aware": LatencyAwareConf,
    "lamp": ScoreThenSelectConf, "grasp": GraSPConf, "synflow": SynFlowConf,
    "set": DynamicConf, "rigl": DynamicConf, "movement": MovementConf,
    "fixed_mask": FixedMaskConf,
}


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
    # after each round (Renda et al. 2020): none | lr (the LR schedule replays its last epochs)
    # | weights (weights and LR back to rewind_epoch, optimizer moments cleared)
    rewind: Rewind = Rewind["none"]
    rewind_epoch: int = 0


@dataclass
class GradualConf:
    _target_: str = "prunelab.pruning.Gradual"
    start_epoch: int = "${epochs_frac:0.1}"  # type: ignore[assignment]
    end_epoch: int = "${epochs_frac:0.6}"  # type: ignore[assignment]
    frequency: int = 1
    initial_sparsity: float = 0.0
    every_steps: Optional[int] = None  # an event every N optimizer steps (null: per epoch)
