"""Lottery tickets: ``python -m prunelab.lottery experiment=lth_lenet300``.

Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020). Level 0
trains the dense network from its initialization θ0 and keeps the rewind weights θk (k =
``lottery.rewind_step``; k = 0 is θ0). Every later level ``l``:

1. prunes ``prune_fraction`` of the weights still remaining in each layer, by magnitude of the
   weights level ``l-1`` ended with (cumulative target ``1 - (1 - p)^l`` per tensor, so the
   density after level L is ``(1 - p)^L`` to one element; layer or global scope);
2. rewinds: the start weights are ``θk * mask`` (all other parameters and buffers: ``θk``);
3. trains with a fresh optimizer and learning-rate schedule (a new Lightning ``Trainer``) while
   the pruned weights stay at zero.

Controls (``lottery.control``): ``random_reinit`` and ``random_mask``, with the ticket's masks
from ``lottery.masks_from=<finished ticket run>`` or a ticket trained in ``<run>/ticket/``.

Rerunning the same command (the run directory is named by the overrides) resumes at the first
level without ``results.json`` (from its ``checkpoints/last.ckpt`` when there is one) and never
touches a finished level. The work is done by :mod:`prunelab.tickets` (runner, masks, level
store); this module is the command.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from prunelab.cli import start
from prunelab.jobs import run_task

def run(cfg: DictConfig, output_dir: str | Path | None = None,
        callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run (or continue) the lottery experiment of ``cfg`` in ``output_dir`` (default: Hydra's
    run directory); returns every finished level's results."""
    from prunelab.tickets import LotteryRun, level_done

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    overrides: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        if output_dir is None:
            output_dir = hc.runtime.output_dir
    except ValueError:  # not under Hydra
        if output_dir is None:
            raise
    lr = LotteryRun(cfg, output_dir, callbacks=callbacks, overrides=overrides)
    lr.check()
    levels = range(lr.settings["levels"] + 1)
    done = [lvl for lvl in levels if level_done(lr.dir, lvl)]
    if done:
        nxt = next((lvl for lvl in levels if lvl not in done), None)
        print(f"prunelab: {lr.dir}: levels {', '.join(map(str, done))} finished; "
              + ("nothing left to do" if nxt is None else f"resuming at level {nxt}"))
    rows = lr.run()
    print(f"prunelab: lottery run finished: {lr.dir} (summary.md, lottery.png)")
    return rows


@hydra.main(version_base="1.3", config_path="conf", config_name="lottery")
def _hydra_main(cfg: DictConfig) -> float:
    rows = run_task(run, cfg, lock=True)
    return float("nan") if rows is None else float(rows[-1]["test_acc"])


def main() -> None:
    start(_hydra_main, "lottery")


if __name__ == "__main__":
    main()
