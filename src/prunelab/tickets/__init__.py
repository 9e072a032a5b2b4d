"""Lottery tickets (Frankle & Carbin 2019; rewinding: Frankle et al. 2020) as a library.

- :mod:`~prunelab.tickets.settings`: validation, the config a run is identified by, its hash;
- :mod:`~prunelab.tickets.masks`: glue to the IMP pruning method, the callback that keeps
  a level's masks;
- :mod:`~prunelab.tickets.store`: the run's files (every name in one module), finished levels;
- :mod:`~prunelab.tickets.level`: training one level;
- :mod:`~prunelab.tickets.runner`: :class:`LotteryRun`, the levels of one run;
- :mod:`~prunelab.tickets.summary`: curves and tables over levels, controls and seeds.

The command is :mod:`prunelab.lottery`; this package imports no command.
"""

from prunelab.tickets.runner import LotteryRun
from prunelab.tickets.settings import CONTROLS, validate
from prunelab.tickets.store import level_done, load, read_levels

__all__ = ["CONTROLS", "LotteryRun", "level_done", "load", "read_levels", "validate"]
