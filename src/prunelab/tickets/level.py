"""Training one lottery level: the network from its start weights under the level's mask, with a
fresh optimizer, learning-rate schedule and Lightning Trainer (the same module and trainer a
``prunelab.train`` run uses, from :mod:`prunelab.assemble`), then its test accuracy."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prunelab.tickets import store
from prunelab.tickets.masks import density, mask_keeper


@dataclass
class Level:
    """What one level trains: its number, directory, mask and start weights."""

    number: int
    directory: Path
    mask: Mapping[str, Any]
    start: Mapping[str, Any]
    rewind_step: int | None  # level 0 of a ticket run: snapshot the rewind weights here


def train_level(cfg: DictConfig, level: Level, net: Any, datamodule: Any, method: Any, *,
                names: Sequence[str], control: str, callbacks: Sequence[Any] = (),
                log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict | None]:
    """Train ``net`` (built for ``cfg``) from ``level.start`` under ``level.mask`` (held by a
    callback of the pruning ``method``); writes the level's checkpoints and ``end.pt``.
    Returns (the level's results without the run's identity keys, the rewind weights captured
    at level 0 or None)."""
    import pytorch_lightning as pl
    import torch
    from prunelab.assemble import build_module, build_trainer
    from prunelab.hardware import job_threads
    from prunelab.history import keep_csv_history
    from prunelab.pruning import FinalSparsityCheckpoint

    t0 = time.perf_counter()
    d = level.directory
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    threads = job_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    net.load_state_dict(level.start)
    keeper = mask_keeper(method, net, level.mask, level.rewind_step)
    module = build_module(cfg, net, int(datamodule.num_classes),
                          config={"level": level.number, "control": control})
    # last.ckpt after every epoch, written atomically, from which a killed level resumes exactly
    ckpt = FinalSparsityCheckpoint(dirpath=str(d / store.CHECKPOINTS),
                                   filename=store.BEST_CHECKPOINT, monitor="val/acc", mode="max",
                                   save_last=True, save_top_k=1, auto_insert_metric_name=False,
                                   enable_version_counter=False, started=t0)
    trainer = build_trainer(cfg, d, [keeper, ckpt, *callbacks])
    last = store.last_checkpoint(d.parent, level.number)
    resume = str(last) if last.is_file() else None
    if resume:
        log(f"[{control}] level {level.number}: resuming from {last}")
    keep_csv_history(trainer, resume)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    end = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    store.save(end, d / store.END)
    rewind = None
    if level.rewind_step is not None:
        if keeper.rewind_state is None:
            raise RuntimeError(f"the rewind weights at iteration {level.rewind_step} were never "
                               f"captured")
        rewind = keeper.rewind_state
    last_metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    best_path = ckpt.best_model_path or None
    best_metrics = (trainer.test(module, datamodule=datamodule, ckpt_path=best_path,
                                 verbose=False)[0] if best_path else last_metrics)
    weights = {n: end[n] for n in names}
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    start_zeros = sum(int((level.start[n] == 0).sum()) for n in names)
    kept = density(level.mask)
    return {
        "density": kept,
        "percent_remaining": 100.0 * kept,
        "per_layer_density": {n: float(level.mask[n].float().mean()) for n in names},
        "sparsity_end_weights": zeros / total,
        "sparsity_start_weights": start_zeros / total,
        "test_acc": float(best_metrics["test/acc"]),
        "test_loss": float(best_metrics["test/loss"]),
        "test_acc_last": float(last_metrics["test/acc"]),
        "best_val_acc": None if ckpt.best_model_score is None else float(ckpt.best_model_score),
        "best_val_iteration": store.step_of(best_path),
        "iterations": int(trainer.global_step),
        "wall_time_s": ckpt.elapsed(),  # across resumes
        "warnings": list(module.training_warnings),  # a training loss that blew up
    }, rewind
