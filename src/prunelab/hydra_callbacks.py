"""Hydra callbacks: a sweep summary table at the end of every ``prunelab.train`` multirun."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    """After a multirun, collect the jobs' ``results.json`` into ``summary.csv``/``summary.md``
    in the sweep directory and print the table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from prunelab.report import write_report

        try:
            write_report(config.hydra.sweep.dir)
        except FileNotFoundError as exc:
            print(f"prunelab: no summary: {exc}")
