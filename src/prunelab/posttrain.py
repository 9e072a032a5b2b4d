"""Post-training pruning: ``epochs=0``, no training.

``python -m prunelab.train init_from=<dense run> epochs=0 sparsity=0.9`` prunes the loaded
weights once (:func:`at_epoch_zero`: whatever the schedule, every pruning event happens at once,
at epoch 0), recalibrates the BatchNorm running statistics of the pruned network on
``calibration_batches`` training batches (:func:`recalibrate_batchnorm`), validates, writes
``checkpoints/best.ckpt`` (and ``last.ckpt``) as a training run does, and ``train`` then tests and
measures it as any run (:func:`post_training`): ``measure``/``export`` work on the directory.

The pruning event is the callback's own epoch-0 event (:meth:`PruningCallback.
on_train_epoch_start`): a gradient-based method (taylor, snip) scores on ``pruner.score_batches``
training batches without an optimizer step, exactly as at epoch 0 of a training run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.data.loader import iter_batches
from prunelab.pruning.schedules import OneShot, Schedule

#: The normalization layers whose running statistics are recalibrated.
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def at_epoch_zero(schedule: Schedule, sparsity: float, method: Any, pretrained: bool = True
                  ) -> tuple[Schedule, list[str]]:
    """The schedule of an ``epochs=0`` run, one event at epoch 0, and the one-line warnings:
    ``schedule`` had events after epoch 0 (they all happen at once, at epoch 0), or neither
    ``init_from`` nor ``model.weights`` (``pretrained=False``: the untrained network is
    pruned)."""
    events = {} if method.is_dense or sparsity == 0 or method.at_init else schedule.events(sparsity)
    later = sorted(e for e in events if e > 0)
    notes = []
    if later:
        where = (f"its pruning at epoch {later[0]}" if len(events) == 1 else
                 f"its {len(events)} pruning events (epochs {min(events)}..{max(events)})")
        notes.append(f"epochs=0: schedule={schedule.name} has {where}; with no training all "
                     f"pruning happens at once at epoch 0, to sparsity={sparsity:g} on the "
                     f"loaded weights")
    if not pretrained:
        notes.append("epochs=0 without init_from: the network is pruned and tested as "
                     "initialized (untrained); give init_from=<trained weights> (or "
                     "model.weights=)")
    return OneShot(at_epoch=0), notes


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Any, limit: int) -> int:
    """Recompute the running mean and variance of every BatchNorm of ``net`` from up to
    ``limit`` batches ``(x, y)``: statistics reset, ``momentum=None`` (a cumulative average
    over the batches), only the BatchNorm layers in train mode (dropout off), no gradient; the
    network is left in eval mode. Returns the number of batches used (0: no BatchNorm, or
    ``limit`` 0)."""
    norms = [m for m in net.modules() if isinstance(m, BATCHNORMS) and m.track_running_stats]
    if not norms or limit <= 0:
        return 0
    momenta = [m.momentum for m in norms]
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        for x, _ in batches:
            if used >= limit:
                break
            net(x)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.eval()
    if used == 0:
        raise RuntimeError("BatchNorm recalibration needs at least one training batch")
    return used


def _save(trainer: Any, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary file renamed into place (as
    FinalSparsityCheckpoint saves): a kill leaves no truncated checkpoint."""
    tmp = f"{path}.tmp"
    trainer.save_checkpoint(tmp)
    os.replace(tmp, path)


def post_training(cfg: Any, parts: Any, module: Any, trainer: Any, ckpt: Any
                  ) -> tuple[str, dict[str, Any]]:
    """The ``epochs=0`` run: prune once, recalibrate BatchNorm, validate, checkpoint. Returns
    the best checkpoint's path (for ``trainer.test``) and what results.json records of it."""
    dm, callback = parts.datamodule, parts.callback
    # validation attaches the module and the data (devices, the callback bound) without training
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/acc"]
    callback.on_train_epoch_start(trainer, module)  # the epoch-0 pruning event, as in training
    device = module.device
    batches = (module.transfer_batch_to_device(b, device, 0)
               for b in iter_batches(dm.train_dataloader()))
    used = recalibrate_batchnorm(module.net, batches, int(cfg.calibration_batches))
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/acc"]
    out = Path(ckpt.dirpath)
    out.mkdir(parents=True, exist_ok=True)
    best = out / "best.ckpt"
    ckpt.best_model_path, ckpt.best_model_score = str(best), torch.tensor(after)
    _save(trainer, best)
    if ckpt.save_last:
        ckpt.last_model_path = str(out / "last.ckpt")
        _save(trainer, out / "last.ckpt")
    sparsity = callback.masks.stats()["global"]
    print(f"prunelab: post-training pruning (epochs=0): val acc {before:.4f} (loaded weights) -> "
          f"{after:.4f} at sparsity {sparsity:.4f}" + (
              f", BatchNorm recalibrated on {used} training batches" if used else ""))
    return str(best), {"val_acc_before_pruning": float(before), "val_acc": float(after),
                       "batchnorm_batches": used}
