"""Hydra callbacks: the sweep report at the end of every multirun."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    """After a multirun, write the report (``report.md``/``report.csv`` and plots; for lottery
    runs ``lottery_report.*``) into the sweep directory, list the jobs that failed, and exit with
    status 1 if any did (the other jobs have all run)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from prunelab.analysis.sweep import ReportError, collect_failures, write_report

        sweep_dir = config.hydra.sweep.dir
        try:
            write_report(sweep_dir)
        except ReportError as exc:
            print(f"prunelab: no summary: {exc}")
        failures = collect_failures(sweep_dir)
        if failures:
            print(f"prunelab: error: {len(failures)} job(s) of the sweep failed (listed in "
                  f"{sweep_dir}/report.md); the others finished", file=sys.stderr)
            sys.exit(1)
