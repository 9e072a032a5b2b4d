"""``FinalSparsityCheckpoint``: Lightning's ``ModelCheckpoint`` for pruning runs (best only at the
final sparsity, ``last`` after every epoch, atomic saves, the wall time across resumes)."""

from __future__ import annotations

import os
import time
from typing import Any
from weakref import proxy

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class FinalSparsityCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose top-k ("best") only considers epochs at the final sparsity, and
    whose ``last.ckpt`` (``save_last=True``) is written at the end of every epoch from the first.

    A dense epoch before pruning would otherwise win "best" on validation accuracy. Lightning
    writes ``last`` only beside a top-k save, so a run killed before its final sparsity had no
    checkpoint to resume from, and later ``last`` could be epochs old.
    """

    def __init__(self, *args: Any, started: float | None = None, **kwargs: Any) -> None:
        # saved after every epoch-end hook (the LR scheduler's step, the pruning logs): a resume
        # from the end of epoch e starts epoch e + 1 exactly as an uninterrupted run does (a
        # save at validation end made Lightning re-run the whole epoch)
        kwargs.setdefault("save_on_train_epoch_end", True)
        super().__init__(*args, **kwargs)
        self._started = time.perf_counter() if started is None else started
        self.elapsed_before = 0.0  # wall time of the attempts before a resume (checkpointed)
        self._fit_started = False

    def elapsed(self) -> float:
        """Wall time of the run so far, across resumes (seconds)."""
        return self.elapsed_before + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "elapsed_s": self.elapsed()}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._fit_started = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # a resume (restored before fit starts) continues the earlier attempts' clock; a restore
        # after it (trainer.test loading the best checkpoint) is of this attempt's own time
        if not self._fit_started:
            self.elapsed_before = float(state_dict.get("elapsed_s", 0.0))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Written to a temporary file and renamed: a kill or a full disk during the save
        leaves the previous checkpoint whole, never a truncated one."""
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        trainer.strategy.barrier("prunelab_checkpoint_rename")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_every_epoch(trainer, at_train_epoch_end=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_every_epoch(trainer, at_train_epoch_end=True)

    def _save_last_every_epoch(self, trainer: pl.Trainer, at_train_epoch_end: bool) -> None:
        """``last`` now, in the hook Lightning saves in, unless this step was saved already."""
        if (not self.save_last
                or self._should_save_on_train_epoch_end(trainer) != at_train_epoch_end
                or self._should_skip_saving_checkpoint(trainer)):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        flag = monitor_candidates.get("prune/at_target")
        if flag is not None and float(flag) < 0.5:
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)


__all__ = ["FinalSparsityCheckpoint"]
