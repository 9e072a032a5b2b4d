"""Pruning: masks, scores, selection, schedules, the method classes and the Lightning callback."""

from prunelab.pruning.callback import PruningCallback, target_network
from prunelab.pruning.checkpoint import FinalSparsityCheckpoint
from prunelab.pruning.masks import MaskSet
from prunelab.pruning.methods import (
    IMP,
    NM,
    SNIP,
    Dense,
    GlobalMagnitude,
    LatencyAware,
    Magnitude,
    PruningMethod,
    Random,
    ScoreThenSelect,
    Sensitivity,
    Structured,
    Taylor,
    build_method,
)
from prunelab.pruning.params import PruningConfigError, default_prunable, prunable_parameters
from prunelab.pruning.schedules import Gradual, Iterative, OneShot, Schedule, ScheduleError
from prunelab.pruning.scores import SCORES, get_score, register_score
from prunelab.pruning.selection import select_masks

__all__ = [
    "FinalSparsityCheckpoint", "PruningCallback", "target_network", "MaskSet", "IMP", "NM",
    "SNIP", "Dense", "GlobalMagnitude", "LatencyAware", "Magnitude", "PruningMethod", "Random",
    "ScoreThenSelect", "Sensitivity", "Structured", "Taylor", "build_method",
    "PruningConfigError", "default_prunable", "prunable_parameters", "Gradual",
    "Iterative", "OneShot", "Schedule", "ScheduleError", "SCORES", "get_score",
    "register_score", "select_masks",
]
