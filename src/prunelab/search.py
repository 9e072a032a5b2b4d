"""Policy search: ``python -m prunelab.search run=<trained run> objectives=[val_acc,macs]``.

Searches per-layer pruning ratios (each weight's sparsity, or each channel unit's ratio), and
optionally extra hyperparameters, against several objectives at once: validation accuracy
against MACs, parameters, bytes on disk or latency on a hardware profile and runtime. Optuna
(>= 4) directly: NSGA-II for several objectives, TPE for one; an SQLite study in the search
directory by default (a killed search resumes where it stopped), any RDB URL shared by several
processes. A trial is an ordinary ``train`` run (the trained run's weights pruned to the policy,
``proxy_epochs`` of fine-tuning); the chosen policies are retrained ``final_epochs``. Outputs in
``outputs/search/<study_name>/``: ``pareto.csv``, ``pareto.png``, ``best_policy_<i>.yaml``
(``pruner=sensitivity pruner.profile=``), ``report.md``, ``search.json``.

The work is :mod:`prunelab.policy_search`; this module is the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from prunelab.cli import start
from prunelab.jobs import run_task


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Fill the study, then (in the process that sees it full) write the front and finals."""
    from prunelab.files import DirectoryBusy, directory_lock
    from prunelab.policy_search.engine import Search
    from prunelab.policy_search.study import fill

    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    out = Path(output_dir)
    search = Search(cfg, out)  # checks first: Optuna installed, every setting
    study = search.start()
    from optuna.trial import TrialState  # the optional extra, there once the checks passed

    n_trials = search.opts["n_trials"]
    fill(study, search.objective, n_trials, search.opts["n_jobs"], cfg.timeout,
         int(cfg.max_failures))
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete < n_trials:
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        print(f"{complete} of {n_trials} trials finished ({running} running elsewhere); rerun "
              f"to continue: the process that sees the study full writes the front")
        return None
    try:
        with directory_lock(out):
            summary = search.finish()
    except DirectoryBusy:
        print(f"another search process is writing the front in {out}")
        return None
    print((out / "report.md").read_text())
    print(f"wrote {out / 'pareto.csv'}, {out / 'report.md'}"
          + (f", {summary['pareto_png']}" if summary["pareto_png"] else ""))
    return summary


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(run, cfg)


def main() -> None:
    start(_hydra_main, "search")


if __name__ == "__main__":
    main()
