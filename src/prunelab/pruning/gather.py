"""What a pruning event needs from the data: |w * dL/dw| over a few training batches (SNIP's
procedure, or any ``gradients`` method with nothing gathered yet), and a ``network`` method's
scores (GraSP, SynFlow); the network's buffers and mode as they were afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch

from prunelab.data.loader import iter_batches
from prunelab.pruning.masks import MaskSet
from prunelab.pruning.methods.base import NetworkContext, PruningMethod, kept_state


def target_network(pl_module: pl.LightningModule) -> torch.nn.Module:
    """The network a LightningModule wraps (``.net``), or the module itself."""
    return getattr(pl_module, "net", pl_module)


def train_batches(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[Any]:
    """Training batches on the module's device (the loader is made at the first ``next``)."""
    loader = (trainer.datamodule.train_dataloader() if trainer.datamodule is not None
              else trainer.train_dataloader)
    for batch in iter_batches(loader):
        yield pl_module.transfer_batch_to_device(batch, pl_module.device, 0)


def task_loss(pl_module: pl.LightningModule):
    """The module's task loss of a batch (cross-entropy of ``net(x)`` without one)."""
    loss_fn = getattr(pl_module, "loss", None)
    if callable(loss_fn):
        return loss_fn
    from prunelab.losses import classification_loss

    net = target_network(pl_module)

    def loss_fn(batch):
        x, y = batch
        return classification_loss(net(x), y)
    return loss_fn


def network_stats(pruner: PruningMethod, masks: MaskSet, trainer: pl.Trainer,
                  pl_module: pl.LightningModule, target: float) -> dict[str, dict]:
    """A ``network`` method's scores (summed across DDP ranks) as ``{name: {"score": t}}``."""
    net = target_network(pl_module)
    ctx = NetworkContext(net=net, params=masks.params, masks=masks.as_dict(),
                         batches=lambda: train_batches(trainer, pl_module),
                         loss=task_loss(pl_module),
                         input_shape=getattr(trainer.datamodule, "input_shape", None),
                         target=target)
    with kept_state(net):
        scores = pruner.network_scores(ctx)
    out = {}
    for n, t in scores.items():
        if trainer.world_size > 1:
            t = trainer.strategy.reduce(t, reduce_op="sum")
        out[n] = {"score": t}
    return out


def gather_from_batches(pruner: PruningMethod, masks: MaskSet, trainer: pl.Trainer,
                        pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """|w * dL/dw| summed over ``pruner.score_batches`` training batches, without an optimizer
    step and without changing BatchNorm statistics (SNIP's procedure)."""
    net = target_network(pl_module)
    params = masks.params
    names = list(params)
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    loss_fn = task_loss(pl_module)
    seen = 0
    with kept_state(net):
        net.train()
        for batch in train_batches(trainer, pl_module):
            if seen >= pruner.score_batches:
                break
            loss = loss_fn(batch)
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            with torch.no_grad():
                for n, g in zip(names, grads):
                    if g is not None:
                        acc[n].add_((params[n].detach() * g).abs().float())
            seen += 1
    if seen == 0:
        raise RuntimeError("gradient scores need at least one training batch")
    return acc


__all__ = ["gather_from_batches", "network_stats", "target_network", "task_loss",
           "train_batches"]
