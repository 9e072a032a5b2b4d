"""Hydra callbacks: the sweep report at the end of every multirun."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

#: The sweep directory's lock, held by the launcher's process from the sweep's start to its
#: end (module state, not the callback's: launchers such as joblib pickle the callbacks).
_HELD = ExitStack()


class SweepSummary(Callback):
    """After a multirun, write the report (``report.md``/``report.csv`` and plots; for lottery
    runs ``lottery_report.*``) into the sweep directory, list the jobs that failed, and exit with
    status 1 if any did (the other jobs have all run)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """One sweep at a time in a sweep directory: a second one is refused in one line
        naming the holder's PID (the lock goes with the process, also on SIGKILL)."""
        from prunelab.files import DirectoryBusy, directory_lock

        if "lottery" in config:  # outputs/lottery is shared by every lottery sweep: each job's
            return               # own directory is locked instead (prunelab.jobs.run_task)
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)  # Hydra would
        try:
            _HELD.enter_context(directory_lock(str(config.hydra.sweep.dir)))
        except DirectoryBusy as exc:
            print(f"prunelab: error: {exc}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._report(str(config.hydra.sweep.dir))
        finally:
            _HELD.close()

    @staticmethod
    def _report(sweep_dir: str) -> None:
        from prunelab.analysis.sweep import ReportError, collect_failures, write_report

        try:
            write_report(sweep_dir)
        except ReportError as exc:
            print(f"prunelab: no summary: {exc}")
        failures = collect_failures(sweep_dir)
        if failures:
            print(f"prunelab: error: {len(failures)} job(s) of the sweep failed (listed in "
                  f"{sweep_dir}/report.md); the others finished", file=sys.stderr)
            sys.exit(1)
