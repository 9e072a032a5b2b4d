"""Rewinding between the rounds of iterative pruning (Renda, Frankle & Carbin 2020, "Comparing
Rewinding and Fine-tuning in Neural Network Pruning").

``schedule=iterative schedule.rewind=...`` decides what happens after each pruning round:

- ``none``: fine-tuning goes on from the pruned weights at the learning rate of the moment.
- ``lr`` (learning-rate rewinding): the weights stay; the learning-rate schedule is set back so
  that the ``t`` epochs until the next round (or the end) replay the *last* ``t`` epochs of the
  original schedule, as Renda et al. retrain for ``t`` epochs "using the learning rate schedule
  from epoch T - t".
- ``weights`` (weight rewinding): the weights go back to their values at the start of epoch
  ``schedule.rewind_epoch`` (masked by the new masks), the learning-rate schedule to that epoch,
  and the optimizer's moments are cleared (Frankle et al. 2020's rewinding to an early step).

The learning-rate schedule is moved by restoring its state at epoch 0 and stepping it to the
wanted position, so any scheduler (cosine, step, ...) replays exactly its own trajectory. The
snapshots travel in the pruning callback's checkpoints: a resumed run rewinds identically.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from prunelab.pruning.params import PruningConfigError

REWINDS = ("none", "lr", "weights")


class RoundRewinder:
    """Snapshots taken at the right epoch starts, applied after each pruning round."""

    def __init__(self, mode: str, rewind_epoch: int = 0):
        if mode not in REWINDS:
            raise PruningConfigError(f"schedule.rewind={mode!r} is not one of {', '.join(REWINDS)}")
        self.mode = mode
        self.rewind_epoch = int(rewind_epoch)
        self.lr_start: dict[str, Any] | None = None  # schedulers and learning rates at epoch 0
        self.weights: dict[str, torch.Tensor] | None = None  # the network at rewind_epoch

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def check(self, events: dict[int, float]) -> None:
        """``rewind_epoch`` must come before the first pruning round (weights mode)."""
        if self.mode == "weights" and events and self.rewind_epoch >= min(events):
            raise PruningConfigError(
                f"schedule.rewind_epoch={self.rewind_epoch} must be before the first pruning "
                f"round (epoch {min(events)}): the weights rewind to a point before pruning")

    # -- snapshots --------------------------------------------------------------------------------
    def snapshot(self, trainer: Any, net: torch.nn.Module, epoch: int) -> None:
        """At the start of ``epoch`` (before its pruning event): the schedulers at epoch 0 and,
        for weight rewinding, the network at ``rewind_epoch``."""
        if not self.active:
            return
        if epoch == 0 and self.lr_start is None:
            configs = trainer.lr_scheduler_configs
            for c in configs:
                if isinstance(c.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    raise PruningConfigError(
                        f"schedule.rewind={self.mode} replays the learning-rate schedule; "
                        f"ReduceLROnPlateau depends on the metric history: allowed: a scheduler "
                        f"of the epoch or step (cosine, step, ...) or schedule.rewind=none")
            self.lr_start = {
                "schedulers": [copy.deepcopy(c.scheduler.state_dict()) for c in configs],
                "lrs": [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers],
            }
        if self.mode == "weights" and epoch == self.rewind_epoch and self.weights is None:
            self.weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}

    # -- after a round ----------------------------------------------------------------------------
    @torch.no_grad()
    def after_round(self, trainer: Any, net: torch.nn.Module, masks: Any, epoch: int,
                    events: dict[int, float], steps_per_epoch: int) -> None:
        """Apply the rewind after the pruning round at the start of ``epoch``."""
        if not self.active or self.lr_start is None:
            return
        if self.mode == "weights":
            if self.weights is None:
                raise RuntimeError(f"no weights were kept at epoch {self.rewind_epoch}")
            device = next(iter(masks.params.values())).device
            net.load_state_dict({k: v.to(device) for k, v in self.weights.items()})
            masks.apply_()
            for opt in trainer.optimizers:
                opt.state.clear()
            position = self.rewind_epoch
        else:
            later = [e for e in events if e > epoch]
            until = min(later) if later else int(trainer.max_epochs)
            position = int(trainer.max_epochs) - (until - epoch)
        for opt, lrs in zip(trainer.optimizers, self.lr_start["lrs"]):
            for g, lr in zip(opt.param_groups, lrs):
                g["lr"] = lr
        for c, state in zip(trainer.lr_scheduler_configs, self.lr_start["schedulers"]):
            c.scheduler.load_state_dict(copy.deepcopy(state))
            steps = position * (steps_per_epoch if c.interval == "step" else 1)
            for _ in range(steps):
                c.scheduler.step()

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"lr_start": self.lr_start, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.lr_start = state.get("lr_start")
        self.weights = state.get("weights")


__all__ = ["REWINDS", "RoundRewinder"]
