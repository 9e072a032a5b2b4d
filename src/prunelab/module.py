"""The LightningModule: cross-entropy classification with accuracy metrics.

The training step is kept lean, because on small networks Lightning's per-step machinery costs
as much as the network itself (see BENCHMARKS.md):

- optimization is *manual* (``automatic_optimization = False``): zero_grad, ``manual_backward``
  and the optimizer step are called here, which skips the closure machinery of automatic
  optimization (its cost per step: BENCHMARKS.md); precision plugins and strategies still apply because
  the step goes through ``manual_backward`` and the ``LightningOptimizer``. Gradient clipping is a
  module argument (``gradient_clip_val``), LR schedulers are stepped here (per epoch or per step);
- training loss and accuracy are accumulated on the device and logged once per epoch
  (``self.log`` has a cost per call); the steps' outputs are reduced 32 steps at a time (fewer
  small tensor ops per step); validation and test use torchmetrics;
- Lightning's per-hook bookkeeping attribute bypasses ``nn.Module.__setattr__``;
- a training batch may be a group of batches (``data.steps_per_batch``,
  :class:`~prunelab.data.loader.BatchGroups`): one optimizer step per batch of the group;
- a nan or inf training loss is a one-line error (:class:`DivergenceError`); a finite epoch mean
  far above chance level's is a warning kept in ``training_warnings`` (and the checkpoint): the
  weights blew up, which a run may not recover from without ever producing a nan.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from prunelab.config import manual_optimization_conflict
from prunelab.data.custom import build_datamodule
from prunelab.data.loader import is_batch_group
from prunelab.errors import ConfigError, UserError
from prunelab.losses import classification_loss

SCHEDULER_INTERVALS = ("epoch", "step")


class DivergenceError(UserError, FloatingPointError):
    """The training loss became nan or inf (one line naming the epoch and step)."""


class ClassifierModule(pl.LightningModule):
    """Wraps a plain ``nn.Module`` classifier (``self.net``).

    Args:
        net: the network (any module mapping a batch of inputs to class logits).
        num_classes: number of classes (for the accuracy metrics).
        optimizer: a partial of a ``torch.optim`` class taking the parameters (Hydra ``_partial_``).
        lr_scheduler: an optional partial taking the optimizer.
        scheduler_interval: ``epoch`` or ``step``.
        gradient_clip_val: clip gradients to this norm (``None``: no clipping).
        regularizer: an optional callable returning a penalty added to the training loss
            (logged as ``train/penalty``).
        distiller: an optional :class:`prunelab.distill.Distiller`; the training loss becomes
            the knowledge-distillation loss against its frozen teacher.
        batch_transform: an optional callable ``(module, x, y) -> x`` applied to every training
            batch before its step (``train.adversarial``: :class:`prunelab.robust.AdversarialBatches`
            replaces part of it by adversarial examples; the loss is the mixed batch's).
        config: the run's resolved config, saved as hyperparameters (the network object is not).

    ``ClassifierModule.load_from_checkpoint(path)`` works on a prunelab checkpoint: with no
    ``net`` the network is rebuilt from ``config`` (its ``model`` and ``data`` entries), and
    with no ``optimizer`` (or, when rebuilding, no ``lr_scheduler``) the config's is used.
    """

    FLUSH_EVERY = 32  # training steps whose loss / accuracy are reduced together
    #: an epoch's mean training loss above this many times ln(num_classes) (the cross-entropy at
    #: chance level) is a blow-up worth a warning (MNIST runs' first epochs: 0.1-0.4 vs 2.30)
    BLOWUP_FACTOR = 10.0

    def __init__(self, net: nn.Module | None = None, num_classes: int | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 lr_scheduler: Callable[..., Any] | None = None,
                 scheduler_interval: str = "epoch", gradient_clip_val: float | None = None,
                 regularizer: Callable[[], torch.Tensor] | None = None,
                 config: Mapping | None = None, distiller: Any = None,
                 batch_transform: Callable[..., torch.Tensor] | None = None):
        super().__init__()
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"scheduler_interval={scheduler_interval!r}; allowed: "
                             f"{', '.join(SCHEDULER_INTERVALS)}")
        if net is None or num_classes is None or optimizer is None:
            net, num_classes, optimizer, lr_scheduler = _from_config(
                config, net, num_classes, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_scheduler", "regularizer",
                                          "distiller", "batch_transform"])
        self.automatic_optimization = False
        self.net = net
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.gradient_clip_val = gradient_clip_val
        self.regularizer = regularizer
        self.batch_transform = batch_transform
        # kept outside nn.Module's registry: the teacher is neither trained nor checkpointed
        self.__dict__["distiller"] = distiller
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._train_sums: torch.Tensor | None = None  # loss * n, correct (summed over the epoch)
        self._penalty_sum: torch.Tensor | None = None  # regularizer penalty summed over steps
        self._train_seen = 0  # samples in the epoch's sums
        self._train_steps = 0
        self._recent: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._flushed = 0  # the epoch's steps already added to the sums
        self._first_bad: torch.Tensor | None = None  # the epoch's first step with a bad loss
        self._epoch_start_step = 0  # optimizer steps before this epoch
        self.training_warnings: list[str] = []  # the run's first blow-up (_warn_on_blowup)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` around every hook call (about 30 times per training
        # step); ``nn.Module.__setattr__`` checks each for parameters and submodules, which this
        # plain string never is (a measurable per-step cost on small networks).
        if name == "_current_fx_name":
            self.__dict__[name] = value
            return
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch) -> torch.Tensor:
        """The task loss of a batch (used by gradient-based pruning scores too)."""
        x, y = batch
        return classification_loss(self.net(x), y)

    # -- training ---------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.distiller is not None:
            self.distiller.to(self.device)

    def configure_callbacks(self) -> list:
        """Lightning calls this before it checks the loop configuration: its own gradient
        clipping and accumulation, which cannot apply to the steps this module takes itself
        (manual optimization), are one line naming what to set instead."""
        t = self._trainer
        if t is not None:
            why = manual_optimization_conflict(t.gradient_clip_val, t.accumulate_grad_batches,
                                               getattr(t.datamodule, "batch_size", None))
            if why is not None:
                raise ConfigError(why)
        return []

    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(2, device=self.device)
        self._penalty_sum = torch.zeros((), device=self.device)
        self._train_seen = self._train_steps = self._flushed = 0
        self._recent = []
        self._first_bad = None
        self._epoch_start_step = int(self._trainer.global_step) if self._trainer else 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        if is_batch_group(batch):  # data.steps_per_batch > 1: one optimizer step per batch
            max_steps = self.trainer.max_steps
            for b in batch:
                out = self._train_step(b, opt)
                if 0 <= max_steps <= self.trainer.global_step:  # Lightning checks per group
                    break
            return out
        return self._train_step(batch, opt)

    def _train_step(self, batch, opt) -> torch.Tensor:
        x, y = batch
        if self.batch_transform is not None:  # before zero_grad: the transform's own gradients
            x = self.batch_transform(self, x, y)  # are the input's (robust.py), never .grad
        opt.zero_grad()
        logits = self.net(x)
        loss = classification_loss(logits, y)
        total = loss if self.distiller is None else self.distiller.loss(logits, x, y)
        penalty = self.regularizer() if self.regularizer is not None else None
        if penalty is not None:
            total = total + penalty
        self.manual_backward(total)
        if self.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        opt.step()
        if self.scheduler_interval == "step":
            self._step_scheduler()
        # epoch sums: the step's outputs are kept and reduced FLUSH_EVERY steps at a time (a
        # small tensor op per step is a measurable share of the overhead on small networks)
        self._recent.append((loss.detach(), logits.detach(), y))
        if len(self._recent) >= self.FLUSH_EVERY:
            self._flush_train_sums()
        if penalty is not None:
            self._penalty_sum.add_(penalty.detach())
        self._train_seen += y.shape[0]
        self._train_steps += 1
        return total.detach()

    @torch.no_grad()
    def _flush_train_sums(self) -> None:
        """Add the kept steps' loss * batch size and correct predictions to the epoch sums."""
        if not self._recent:
            return
        losses, logits, ys = zip(*self._recent)
        self._recent = []
        f32 = torch.float32  # counts stay exact (bf16 holds integers exactly only up to 256)
        # the first step whose loss is not finite, kept on the device (read only on divergence)
        bad = ~torch.isfinite(torch.stack(losses).to(f32))
        first = torch.where(bad.any(), bad.to(torch.int64).argmax() + self._flushed,
                            self._flushed + len(losses))
        self._first_bad = first if self._first_bad is None else torch.minimum(self._first_bad,
                                                                               first)
        self._flushed += len(losses)
        # sum of loss * batch size, with the sizes as views (expand) rather than a host tensor
        # copied to the device: on a GPU that copy would wait for every queued kernel
        weighted = torch.cat([loss.to(f32).expand(y.shape[0]) for loss, y in zip(losses, ys)])
        correct = (torch.cat(logits).argmax(1) == torch.cat(ys)).sum().to(f32)
        self._train_sums.add_(torch.stack((weighted.sum(), correct)))

    def _check_finite(self) -> None:
        """A nan or inf training loss so far in the epoch is a one-line
        :class:`DivergenceError` naming the epoch and the first such step (one device sync,
        before validation and at the epoch end: no checkpoint of diverged weights)."""
        self._flush_train_sums()
        s = self._train_sums
        if s is None or self._train_seen == 0 or bool(torch.isfinite(s[0])):
            return
        value = float(s[0])
        step = self._epoch_start_step + (int(self._first_bad) if self._first_bad is not None
                                         else 0)
        opts = self._trainer.optimizers if self._trainer is not None else []
        lr = f" (lr {opts[0].param_groups[0]['lr']:g})" if opts else ""
        raise DivergenceError(
            f"loss is {'nan' if value != value else value} at epoch {self.current_epoch} step "
            f"{step}: training diverged; lower optimizer.lr{lr} or set module.gradient_clip_val")

    def _warn_on_blowup(self, mean_loss: float) -> None:
        """The run's first epoch whose mean training loss exceeds ``BLOWUP_FACTOR`` times
        chance level: a one-line warning, kept for results.json (``training_warnings``)."""
        classes = int(self.val_acc.num_classes)
        chance = math.log(classes)
        if self.training_warnings or chance <= 0 or not mean_loss > self.BLOWUP_FACTOR * chance:
            return
        msg = (f"the training loss averaged {mean_loss:.4g} over epoch {self.current_epoch}, "
               f"{mean_loss / chance:.0f}x its chance level (ln {classes} = "
               f"{chance:.2f}): the weights blew up and may not recover; lower optimizer.lr or "
               f"set module.gradient_clip_val")
        self.training_warnings.append(msg)
        if self._trainer is None or self._trainer.is_global_zero:
            print(f"prunelab: warning: {msg}", file=sys.stderr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["prunelab_training_warnings"] = list(self.training_warnings)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # merged, not replaced: testing the best checkpoint must not drop a later epoch's warning
        for w in checkpoint.get("prunelab_training_warnings", []):
            if w not in self.training_warnings:
                self.training_warnings.append(w)

    def on_validation_epoch_start(self) -> None:
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":
            self._check_finite()  # diverged weights are neither validated nor checkpointed

    def on_train_epoch_end(self) -> None:
        self._check_finite()  # one check per epoch (and before validation): no per-step sync
        s = self._train_sums
        if s is not None and self._train_seen > 0:
            n = self._train_seen
            mean = s[0] / n
            self.log("train/loss", mean, sync_dist=True)
            self.log("train/acc", s[1] / n, prog_bar=True, sync_dist=True)
            if self._trainer is not None and self._trainer.world_size > 1:  # every rank decides
                mean = self._trainer.strategy.reduce(mean.clone(), reduce_op="mean")  # one mean
            self._warn_on_blowup(float(mean))
            if self.regularizer is not None:
                self.log("train/penalty", self._penalty_sum / self._train_steps, sync_dist=True)
        if self.scheduler_interval == "epoch":
            self._step_scheduler()

    def _step_scheduler(self) -> None:
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()

    # -- evaluation -------------------------------------------------------------------------------
    def _eval_step(self, batch, stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.net(x)
        loss = classification_loss(logits, y)
        metric.update(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=y.shape[0], sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.parameters())
        if self.lr_scheduler_factory is None:
            return opt
        sched = self.lr_scheduler_factory(optimizer=opt)
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "interval": self.scheduler_interval}}


def _from_config(config: Mapping | None, net: nn.Module | None, num_classes: int | None,
                 optimizer: Any, lr_scheduler: Any) -> tuple[nn.Module, int, Any, Any]:
    """Fill in what ``ClassifierModule`` was not given from the run config (as when Lightning's
    ``load_from_checkpoint`` calls it with the saved hyperparameters only)."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if config is None or any(key not in config for key in ("model", "data", "optimizer")):
        missing = [n for n, v in (("net", net), ("num_classes", num_classes),
                                  ("optimizer", optimizer)) if v is None]
        raise TypeError(f"ClassifierModule needs {', '.join(missing)} or a run config "
                        f"(config=) with model, data and optimizer entries")
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(dict(config))
    if net is None:
        from prunelab.runs import build_network

        net, dm = build_network(cfg)
        num_classes = int(dm.num_classes) if num_classes is None else num_classes
        if lr_scheduler is None and cfg.get("lr_scheduler"):
            lr_scheduler = instantiate(cfg.lr_scheduler)
    if num_classes is None:
        num_classes = int(build_datamodule(cfg.data).num_classes)
    if optimizer is None:
        optimizer = instantiate(cfg.optimizer)
    return net, int(num_classes), optimizer, lr_scheduler
