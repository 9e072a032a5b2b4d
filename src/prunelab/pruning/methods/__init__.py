"""Pruning methods: one class per method (``pruner=<name>`` builds the class its YAML names).

Adding a method: a subclass of :class:`ScoreThenSelect` (a score, then the shared selection) or
of :class:`PruningMethod` (anything else), and a ``conf/pruner/<name>.yaml`` whose ``_target_``
names it (docs/adding_a_method.md).
"""

from prunelab.pruning.methods.at_init import GraSP, SynFlow, synflow_check
from prunelab.pruning.methods.base import (
    NEEDS,
    NetworkContext,
    PruningMethod,
    ScoreThenSelect,
    build_method,
    mask_generator,
)
from prunelab.pruning.methods.dense import Dense
from prunelab.pruning.methods.dynamic import SET, DynamicSparse, RigL
from prunelab.pruning.methods.fixed import FixedMask
from prunelab.pruning.methods.gradient import SNIP, GradientScored, Taylor
from prunelab.pruning.methods.imp import IMP
from prunelab.pruning.methods.latency_aware import LatencyAware, LatencyBudgetError
from prunelab.pruning.methods.magnitude import LAMP, GlobalMagnitude, Magnitude, Random
from prunelab.pruning.methods.movement import Movement
from prunelab.pruning.methods.nm import NM
from prunelab.pruning.methods.sensitivity import Sensitivity
from prunelab.pruning.methods.structured import Structured

__all__ = [
    "NEEDS", "NetworkContext", "PruningMethod", "ScoreThenSelect", "build_method", "mask_generator", "Dense",
    "GradientScored", "SNIP", "Taylor", "IMP", "LatencyAware", "LatencyBudgetError",
    "GlobalMagnitude", "Magnitude", "Random", "NM", "Sensitivity", "Structured",
    "DynamicSparse", "RigL", "SET", "LAMP", "Movement", "FixedMask",
    "GraSP", "SynFlow", "synflow_check",
]
