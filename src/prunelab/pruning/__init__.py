"""Pruning: masks, scores, selection, schedules, the pruner and the Lightning callback."""

from prunelab.pruning.callback import FinalSparsityCheckpoint, PruningCallback, target_network
from prunelab.pruning.masks import MaskSet
from prunelab.pruning.pruner import (
    PRUNERS,
    Pruner,
    PruningConfigError,
    check_pruner_name,
    default_prunable,
)
from prunelab.pruning.schedules import SCHEDULES, Gradual, Iterative, OneShot, Schedule, ScheduleError
from prunelab.pruning.scores import SCORES, get_score, register_score
from prunelab.pruning.selection import select_masks

__all__ = [
    "FinalSparsityCheckpoint", "PruningCallback", "target_network", "MaskSet", "PRUNERS", "Pruner",
    "PruningConfigError", "check_pruner_name", "default_prunable", "SCHEDULES", "Gradual",
    "Iterative", "OneShot", "Schedule", "ScheduleError", "SCORES", "get_score", "register_score",
    "select_masks",
]
