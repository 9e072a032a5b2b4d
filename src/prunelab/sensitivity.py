"""Sensitivity analysis: ``python -m prunelab.sensitivity run=<run dir or checkpoint>``.

Prunes each prunable layer of a trained run alone, by magnitude, at a ladder of sparsities,
measures validation accuracy without retraining, and writes into its own run directory:

- ``sensitivity.csv``: layer, sparsity, val_acc, drop (one row per layer and ratio);
- ``sensitivity.png``: validation accuracy against sparsity, one line per layer;
- ``profile.yaml``: per-layer sparsities reaching ``target_sparsity`` over all prunable weights,
  for ``python -m prunelab.train pruner=sensitivity pruner.profile=<profile.yaml>``.

The analysis is :mod:`prunelab.analysis.sensitivity`; this module is the command.
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from prunelab.analysis.sensitivity import SensitivityError
from prunelab.cli import start
from prunelab.jobs import run_task

#: The checkpoints of a run directory that ``checkpoint=`` may name.
CHECKPOINTS = ("best", "last")


def _fraction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, Real) and 0 < value < 1


def check(cfg: DictConfig) -> tuple[list[float], float, str]:
    """The checked ratios, target and checkpoint choice (SensitivityError)."""
    ratios = list(cfg.ratios or [])
    if not ratios or not all(_fraction(r) for r in ratios):
        raise SensitivityError(f"ratios={ratios} must be numbers in (0, 1)")
    target = cfg.target_sparsity
    if not _fraction(target):
        raise SensitivityError(f"target_sparsity={target!r} must be a number in (0, 1)")
    which = cfg.checkpoint
    if which not in CHECKPOINTS:
        raise SensitivityError(f"checkpoint={which!r}; allowed: {', '.join(CHECKPOINTS)}")
    return sorted(float(r) for r in ratios), float(target), str(which)


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Analyse the run ``cfg.run``; write the files into ``output_dir`` (default: Hydra's run
    directory); return the base accuracy, the rows, the profile and the output directory."""
    from prunelab.analysis.sensitivity import analyze, make_profile, write_outputs
    from prunelab.pruning import prunable_parameters
    from prunelab.runs import load_run, locate_checkpoint

    ratios, target, which = check(cfg)
    ckpt = locate_checkpoint(cfg.run, which)
    loaded = load_run(ckpt)
    run_cfg, net, dm = loaded.config, loaded.net, loaded.datamodule
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    out = Path(output_dir)
    pcfg = run_cfg.get("pruner") or {}
    params = prunable_parameters(net, pcfg.get("include"), pcfg.get("exclude") or ())
    dm.setup("fit")
    base, rows = analyze(net, dm.val_dataloader(), list(params), ratios, cfg.get("max_batches"))
    profile = make_profile(rows, {n: p.numel() for n, p in params.items()}, target)
    paths = write_outputs(out, rows, base, profile, target, ckpt)
    print(f"base val acc {base:.4f}; per-layer profile for sparsity {target}:")
    for n, s in profile.items():
        print(f"  {n:40s} {s:.4f}")
    print(f"wrote {paths['csv']}, {paths['png']}, {paths['profile']}")
    print(f"use: python -m prunelab.train pruner=sensitivity pruner.profile={paths['profile']}")
    return {"base_val_acc": base, "rows": rows, "profile": profile, "output_dir": str(out)}


@hydra.main(version_base="1.3", config_path="conf", config_name="sensitivity")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(run, cfg, lock=True)


def main() -> None:
    start(_hydra_main, "sensitivity")


if __name__ == "__main__":
    main()
