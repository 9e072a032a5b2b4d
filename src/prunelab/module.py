"""The LightningModule: cross-entropy classification with torchmetrics accuracy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class ClassifierModule(pl.LightningModule):
    """Wraps a plain ``nn.Module`` classifier (``self.net``).

    Args:
        net: the network (any module mapping a batch of inputs to class logits).
        num_classes: number of classes (for the accuracy metrics).
        optimizer: a partial of a ``torch.optim`` class taking the parameters (Hydra ``_partial_``).
        lr_scheduler: an optional partial taking the optimizer.
        scheduler_interval: ``epoch`` or ``step``.
        config: the run's resolved config, saved as hyperparameters (the network object is not).
    """

    def __init__(self, net: nn.Module, num_classes: int,
                 optimizer: Callable[..., torch.optim.Optimizer],
                 lr_scheduler: Callable[..., Any] | None = None,
                 scheduler_interval: str = "epoch", config: Mapping | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.extra_loss_fns: list[Callable[[nn.Module], torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _shared_step(self, batch, stage: str, metric: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        metric.update(logits.detach(), y)
        self.log(f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True,
                 prog_bar=stage != "train", batch_size=y.shape[0])
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train", self.train_acc)
        for fn in self.extra_loss_fns:
            loss = loss + fn(self.net)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_acc)

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.parameters())
        if self.lr_scheduler_factory is None:
            return opt
        sched = self.lr_scheduler_factory(optimizer=opt)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "interval": self.scheduler_interval}}
