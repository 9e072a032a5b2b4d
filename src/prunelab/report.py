"""Reports: ``python -m prunelab.report <dir>`` (or ``dir=<dir>``).

Prints the table of the runs under ``<dir>`` and writes ``report.md``, ``report.csv`` and the
plots beside them; lottery runs get ``lottery_report.md|csv`` and ``lottery.png``; a search
directory (``prunelab.search``) gets its ``report.md`` and ``pareto.png`` again from ``search.json``
(:mod:`prunelab.analysis.sweep`). Hydra multiruns of ``prunelab.train`` and ``prunelab.lottery``
write the same report at their end (:class:`prunelab.hydra_callbacks.SweepSummary`). The report
is all this command writes (``conf/report.yaml``: no ``.hydra/``, no log, no run directory).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from prunelab.cli import start
from prunelab.errors import ConfigError
from prunelab.jobs import run_task

#: Hydra flags followed by a value (``--cfg job``): that value is not a directory.
_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun")
_INFO_VALUES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def dir_argument(args: Sequence[str]) -> list[str]:
    """The documented form ``report <dir>``: a lone positional argument (no ``key=value``, or an
    existing directory whose name holds ``=``, as sweep job directories do) becomes ``dir=<dir>``
    (quoted for Hydra's override parser); everything else is left as it is."""
    out: list[str] = []
    for arg in args:
        prev = out[-1] if out else ""
        flag_value = prev in _VALUE_FLAGS or (prev in ("--info", "-i") and arg in _INFO_VALUES)
        positional = not arg.startswith("-") and ("=" not in arg or Path(arg).is_dir())
        if positional and not flag_value:
            escaped = arg.replace("\\", "\\\\").replace("'", "\\'")
            arg = f"dir='{escaped}'"
        out.append(arg)
    return out


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Write the report of ``cfg.dir``; returns its summary rows."""
    from prunelab.analysis.sweep import write_report

    if OmegaConf.is_missing(cfg, "dir") or not str(cfg.dir).strip():
        raise ConfigError("no directory given: python -m prunelab.report <dir> (or dir=<dir>)")
    if (Path(cfg.dir) / "search.json").is_file():  # a prunelab.search directory
        from prunelab.policy_search.report import rewrite

        print(rewrite(Path(cfg.dir)))
        return []
    return write_report(str(cfg.dir))


@hydra.main(version_base="1.3", config_path="conf", config_name="report")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(run, cfg)


def main(argv: Sequence[str] | None = None) -> None:
    sys.argv = [sys.argv[0], *dir_argument(sys.argv[1:] if argv is None else argv)]
    start(_hydra_main, "report")


if __name__ == "__main__":
    main()
