"""Where a fit stands in optimizer steps (a dynamic method's schedule of mask updates, a rewind's
position in the learning-rate schedule)."""

from __future__ import annotations

import pytorch_lightning as pl


def total_optimizer_steps(trainer: pl.Trainer) -> int:
    """The optimizer steps of the whole fit: Lightning's training batches per epoch (a group of
    ``data.steps_per_batch`` batches is one Lightning batch but that many steps) times epochs,
    capped by ``max_steps``."""
    per_epoch = trainer.num_training_batches
    loader = trainer.train_dataloader
    inner = getattr(loader, "loader", None)  # BatchGroups: the wrapped loader's batches
    if inner is not None and hasattr(loader, "k") and per_epoch != float("inf"):
        per_epoch = min(len(inner), int(per_epoch) * int(loader.k))
    if per_epoch == float("inf"):
        per_epoch = 0
    total = int(per_epoch) * int(trainer.max_epochs or 1)
    if trainer.max_steps and trainer.max_steps > 0:
        total = min(total, int(trainer.max_steps)) if total else int(trainer.max_steps)
    return max(total, 1)


__all__ = ["total_optimizer_steps"]
