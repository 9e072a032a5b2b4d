#!/usr/bin/env python
"""Training-epoch overhead of prunelab's pruning versus a bare loop and Lightning's ModelPruning.

In one process, on the same in-memory batches (same tensors, same order), the same optimizer
(SGD with momentum) and the same initial weights, this times one training epoch (forward,
backward, optimizer step; no validation) of:

* ``bare``            -- a plain PyTorch loop, no pruning, no Lightning.
* ``modelpruning``    -- Lightning + ``pytorch_lightning.callbacks.ModelPruning``
                         (``torch.nn.utils.prune``, ``l1_unstructured``, amount 0.9, applied once at
                         the end of the warm-up epoch, so the timed epochs run with the masks'
                         forward pre-hooks active).
* ``prunelab``        -- Lightning + ``ClassifierModule`` + ``PruningCallback`` (magnitude pruner,
                         ``OneShot(0)`` to 0.9 sparsity: pruned at the start of the warm-up epoch,
                         masks re-applied after every optimizer step in the timed epochs).
* ``prunelab_g8``     -- ``prunelab`` with ``data.steps_per_batch=8``: the same batches handed to
                         Lightning as groups of 8 (:class:`~prunelab.data.BatchGroups`), one
                         optimizer step per batch, so Lightning's per-batch machinery runs once
                         per 8 steps.
* ``modelpruning_dl`` -- the configuration users typically have (reference): a typical
                         LightningModule (:class:`TypicalClassifier`: automatic optimization,
                         per-step ``self.log`` and torchmetrics accuracy) + ``ModelPruning`` fed by
                         a standard ``torch.utils.data.DataLoader(TensorDataset(...))``
                         (``num_workers=0``) over the same samples in the same order.

``modelpruning`` uses the same ``ClassifierModule`` as ``prunelab`` (same
``training_step``, same logging and torchmetrics accuracy), so ``prunelab`` vs ``modelpruning``
compares the pruning mechanisms only; ModelPruning prunes the same tensors (weights of the
Linear/Conv layers), layer by layer like prunelab's ``magnitude`` pruner.

Diagnostic contenders (not run by default; pass them to ``--contenders``) split the overhead:

* ``bare_masked``     -- the bare loop plus prunelab's ``MaskSet.apply_()`` after every step.
* ``pl_minimal``      -- Lightning with a minimal LightningModule (loss only: no ``self.log``, no
                         torchmetrics), no pruning: Lightning's own loop overhead.
* ``pl_minimal_prune``-- the minimal LightningModule + ``PruningCallback``: the callback's cost.
* ``pl_minimal_mp``   -- the minimal LightningModule + ``ModelPruning`` (same settings as
                         ``modelpruning``): the two pruning mechanisms compared without the module.
* ``pl_dense``        -- ``ClassifierModule`` without any pruning callback: the module's cost.
* ``pl_typical``     -- the typical user LightningModule (automatic optimization, per-step
                         ``self.log`` and torchmetrics), no pruning.
* ``prunelab_tbl``    -- ``prunelab`` fed by prunelab's own ``TensorBatchLoader`` (what the
                         ``MNISTDataModule`` serves) over the same tensors, unshuffled, so the
                         batches are equal (copies made by indexing every epoch): prunelab's
                         realistic counterpart of ``modelpruning_dl``.
* ``prunelab_cl``     -- ``prunelab`` with the network in the channels_last memory format
                         (``hardware.memory_format=channels_last``): what the layout buys conv nets.

Method: for every repetition the contenders run one after another (A B C D A B C D ...); each run
builds a fresh copy of the same initial network, trains ``1 + epochs_per_rep`` epochs and the
first (warm-up) epoch is discarded. A Lightning epoch is timed from one ``on_train_epoch_start``
to the next (the last one to ``on_train_end``), by a callback placed first, so it includes every
per-epoch cost of the loop (iterator creation, epoch-end hooks, metric aggregation). The table
reports the median wall-clock epoch time over all timed epochs, its ratio to ``bare``, the median of
the per-repetition ratios (paired within a repetition, robust to drift on a shared machine) and the
median CPU time of the process per epoch (``time.process_time``, less sensitive to other processes
competing for the cores; the 1-minute load average is stored with every run in the JSON).

``--device cuda`` runs every contender on the GPU: the batches live in GPU memory (the
DataLoader reference keeps its samples on the host, as users' DataLoaders do, and Lightning copies
each batch over), the bare loop and the epoch timer synchronize the device before reading the clock.

Example::

    python scripts/bench_overhead.py --models mlp resnet20 --reps 5 --epochs-per-rep 2 \\
        --out bench_overhead.json
    python scripts/bench_overhead.py --device cuda --subset resnet20=20000 --out gpu.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelPruning
from torchmetrics.classification import MulticlassAccuracy

from prunelab.data import iter_batches
from prunelab.models import build_model
from prunelab.module import ClassifierModule
from prunelab.pruning.callback import PruningCallback
from prunelab.pruning.masks import MaskSet
from prunelab.pruning import Magnitude, default_prunable
from prunelab.pruning.schedules import OneShot

SPARSITY = 0.9
DEFAULT_CONTENDERS = ("bare", "modelpruning", "prunelab", "prunelab_g8", "modelpruning_dl")
GROUP = 8  # prunelab_g8: data.steps_per_batch=8
DIAGNOSTIC_CONTENDERS = ("bare_masked", "pl_minimal", "pl_minimal_prune", "pl_minimal_mp",
                         "pl_dense", "pl_typical", "prunelab_tbl", "prunelab_cl")
ALL_CONTENDERS = DEFAULT_CONTENDERS + DIAGNOSTIC_CONTENDERS

#: model -> input shape, default samples per epoch, target (max prunelab / bare epoch-time ratio)
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"input_shape": (1, 28, 28), "subset": 20000, "target": 1.3,
            "data": "MNIST (bundled IDX files, normalized)", "label": "LeNet-300-100"},
    "lenet5": {"input_shape": (1, 28, 28), "subset": 10000, "target": 1.3,
               "data": "MNIST (bundled IDX files, normalized)", "label": "LeNet-5"},
    "resnet20": {"input_shape": (3, 32, 32), "subset": 2048, "target": 1.1,
                 "data": "synthetic CIFAR-shaped N(0,1) 3x32x32, 10 classes", "label": "ResNet-20"},
}


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def load_mnist(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` MNIST training samples (bundled IDX files, normalized) from ``MNISTDataModule``."""
    from prunelab.data import MNISTDataModule

    dm = MNISTDataModule(subset=n, seed=seed, val_size=5000)
    dm.setup("fit")
    x, y = dm.data_train
    return x.contiguous(), y.long()


def synthetic_cifar(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


class BatchList:
    """A plain in-memory iterable of pre-made batches, with ``__len__``.

    Not a ``list``: Lightning's ``CombinedLoader`` would take a list of ``(x, y)`` tuples for a
    collection of dataloaders. Every ``__iter__`` yields the same tensors in the same order."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                 device: str = "cpu") -> tuple[BatchList, torch.Tensor, torch.Tensor]:
    """Shuffle once (seeded) and cut into contiguous batches held in memory.

    Returns the batches (on ``device``) and the shuffled tensors on the host (which the DataLoader
    contender iterates in order, so it produces batches equal to these)."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
    xs, ys = x[perm].contiguous(), y[perm].contiguous()
    batches = [(xs[i:i + batch_size].to(device).contiguous(), ys[i:i + batch_size].to(device).contiguous())
               for i in range(0, len(xs), batch_size)]
    return BatchList(batches), xs, ys


# ---------------------------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------------------------
def make_optimizer(params, lr: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def sync() -> None:
    """Wait for the GPU (if any) so that a clock read after it counts the queued work."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def run_bare(net: nn.Module, batches, epochs: int, lr: float, momentum: float,
             masked: bool = False) -> dict[str, list[float]]:
    """Plain loop; returns the wall and CPU time of every epoch (warm-up included)."""
    opt = make_optimizer(net.parameters(), lr, momentum)
    masks = None
    if masked:
        pruner = Magnitude()
        masks = MaskSet(pruner.resolve(net))
        masks.update(pruner.compute_masks(masks.params, masks.as_dict(), SPARSITY))
        masks.apply_()
    net.train()
    wall, cpu = [], []
    for _ in range(epochs):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for x, y in batches:
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            if masks is not None:
                masks.apply_()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}


class EpochTimer(pl.Callback):
    """Records ``perf_counter`` and ``process_time`` at every ``on_train_epoch_start`` and at
    ``on_train_end``.

    Must be the first callback so that its epoch-start stamp precedes the other callbacks' work
    and its train-end stamp precedes ModelPruning's ``make_pruning_permanent``."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync()
        self.stamps.append((time.perf_counter(), time.process_time()))

    def on_train_end(self, trainer, pl_module) -> None:
        sync()
        self.stamps.append((time.perf_counter(), time.process_time()))

    def epoch_times(self) -> dict[str, list[float]]:
        pairs = list(zip(self.stamps, self.stamps[1:]))
        return {"wall": [b[0] - a[0] for a, b in pairs], "cpu": [b[1] - a[1] for a, b in pairs]}


class MinimalModule(pl.LightningModule):
    """The least a LightningModule can do: loss only, no logging, no metrics."""

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer]):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return self.optimizer_factory(params=self.parameters())


class TypicalClassifier(pl.LightningModule):
    """The LightningModule users typically write (reference for ``modelpruning_dl``): automatic
    optimization, ``self.log`` of the loss and a torchmetrics accuracy on every step."""

    def __init__(self, net: nn.Module, num_classes: int,
                 optimizer: Callable[..., torch.optim.Optimizer]):
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc.update(logits.detach(), y)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return self.optimizer_factory(params=self.parameters())


def prunable_modules(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for exactly the tensors prunelab's default pruner prunes."""
    out = []
    for name in default_prunable(net):
        mod_name = name.rsplit(".", 1)[0] if "." in name else ""
        out.append((net.get_submodule(mod_name), "weight"))
    return out


def run_lightning(kind: str, net: nn.Module, batches, loaders: dict[str, Any], epochs: int,
                  lr: float, momentum: float, num_classes: int,
                  device: str = "cpu") -> dict[str, list[float]]:
    optimizer = functools.partial(torch.optim.SGD, lr=lr, momentum=momentum)
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    if kind in ("pl_minimal", "pl_minimal_prune", "pl_minimal_mp"):
        module: pl.LightningModule = MinimalModule(net, optimizer)
    elif kind in ("modelpruning_dl", "pl_typical"):
        module = TypicalClassifier(net, num_classes=num_classes, optimizer=optimizer)
    else:
        module = ClassifierModule(net, num_classes=num_classes, optimizer=optimizer)
    if kind in ("prunelab", "pl_minimal_prune", "prunelab_tbl", "prunelab_g8", "prunelab_cl"):
        pruner = Magnitude()
        callbacks.append(PruningCallback(pruner, OneShot(0), SPARSITY))
    elif kind in ("modelpruning", "modelpruning_dl", "pl_minimal_mp"):
        callbacks.append(ModelPruning(
            "l1_unstructured", parameters_to_prune=prunable_modules(net), amount=SPARSITY,
            use_global_unstructured=False, apply_pruning=lambda epoch: epoch == 0,
            use_lottery_ticket_hypothesis=False, make_pruning_permanent=True, verbose=0,
        ))
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=epochs, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, deterministic=False,
    )
    trainer.fit(module, train_dataloaders=loaders.get(kind, batches))
    times = timer.epoch_times()
    if len(times["wall"]) != epochs:
        raise RuntimeError(f"{kind}: expected {epochs} epoch times, got {len(times['wall'])}")
    check_sparsity(kind, net)
    return times


def check_sparsity(kind: str, net: nn.Module) -> None:
    """Sanity check: pruning contenders end at ~90% zeros in the prunable weights."""
    if kind in ("bare", "pl_minimal", "pl_dense"):
        return
    zeros = total = 0
    for mod, name in prunable_modules(net):
        w = getattr(mod, name)
        zeros += int((w == 0).sum())
        total += w.numel()
    if abs(zeros / total - SPARSITY) > 0.01:
        raise RuntimeError(f"{kind}: sparsity {zeros / total:.3f} after training, expected {SPARSITY}")


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def bench_model(name: str, args: argparse.Namespace, contenders: Sequence[str]) -> dict[str, Any]:
    spec = MODELS[name]
    n = args.subset.get(name, spec["subset"])
    if name in ("mlp", "lenet5"):
        x, y = load_mnist(n, args.seed)
    else:
        x, y = synthetic_cifar(n, args.seed)
    batches, xs, ys = make_batches(x, y, args.batch_size, args.seed, args.device)
    loaders: dict[str, Any] = {
        "modelpruning_dl": torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(xs, ys), batch_size=args.batch_size, shuffle=False,
            num_workers=0),
    }
    if "prunelab_g8" in contenders:  # the same batches, handed to Lightning 8 at a time
        from prunelab.data import BatchGroups

        loaders["prunelab_g8"] = BatchGroups(batches, GROUP)
    if "prunelab_tbl" in contenders:
        from prunelab.data import TensorBatchLoader

        loaders["prunelab_tbl"] = TensorBatchLoader(xs, ys, batch_size=args.batch_size, shuffle=False)
    # the loader-fed contenders must see exactly the same batches
    for loader in loaders.values():
        flat = list(iter_batches(loader))
        assert len(flat) == len(batches)
        for (a, b), (c, d) in zip(batches, flat):
            assert torch.equal(a.cpu(), c.cpu()) and torch.equal(b.cpu(), d.cpu())
    torch.manual_seed(args.seed)
    template = build_model(name, spec["input_shape"], 10).to(args.device)
    epochs = 1 + args.epochs_per_rep
    raw: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    print(f"\n== {spec['label']} ({name}) on {args.device}: {len(xs)} samples, {len(batches)} batches of "
          f"{args.batch_size}, {args.reps} reps x (1 warm-up + {args.epochs_per_rep}) epochs",
          flush=True)
    for rep in range(args.reps):
        for kind in contenders:
            net = copy.deepcopy(template)
            if kind == "prunelab_cl":
                net = net.to(memory_format=torch.channels_last)
            if kind in ("bare", "bare_masked"):
                times = run_bare(net, batches, epochs, args.lr, args.momentum,
                                 masked=kind == "bare_masked")
            else:
                times = run_lightning(kind, net, batches, loaders, epochs, args.lr, args.momentum, 10,
                                      args.device)
            times["loadavg_1min"] = os.getloadavg()[0]
            raw[kind].append(times)
            print(f"  rep {rep} {kind:<17} wall " + " ".join(f"{t:.3f}" for t in times["wall"])
                  + "  cpu " + " ".join(f"{t:.3f}" for t in times["cpu"])
                  + f"  (first = warm-up; load {times['loadavg_1min']:.1f})", flush=True)
    return summarize(name, raw, contenders, len(xs), len(batches), args.device)


def summarize(name: str, raw: dict[str, list[dict[str, Any]]], contenders: Sequence[str],
              n_samples: int, n_batches: int, device: str = "cpu") -> dict[str, Any]:
    rows = []
    for c in contenders:
        row: dict[str, Any] = {"contender": c}
        for key in ("wall", "cpu"):
            timed = [t for rep in raw[c] for t in rep[key][1:]]
            row[f"median_{key}_s"] = statistics.median(timed)
            row[f"min_{key}_s"], row[f"max_{key}_s"] = min(timed), max(timed)
            row["n"] = len(timed)
            if "bare" in raw:
                base = statistics.median([t for rep in raw["bare"] for t in rep[key][1:]])
                row[f"{key}_ratio_to_bare"] = row[f"median_{key}_s"] / base
                paired = [statistics.median(r[key][1:]) / statistics.median(b[key][1:])
                          for r, b in zip(raw[c], raw["bare"])]
                row[f"{key}_median_paired_ratio"] = statistics.median(paired)
        rows.append(row)
    return {"model": name, "label": MODELS[name]["label"], "device": device, "data": MODELS[name]["data"],
            "samples": n_samples, "batches": n_batches, "target_ratio": MODELS[name]["target"],
            "raw_epoch_times_s": raw, "summary": rows}


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['label']} ({result['model']}) on {result.get('device', 'cpu')}, {result['samples']} samples / "
          f"{result['batches']} batches per epoch; target prunelab/bare <= {result['target_ratio']}")
    print(f"  {'contender':<18}{'median epoch s':>15}{'ratio to bare':>15}{'paired ratio':>14}"
          f"{'min s':>8}{'max s':>8}{'median CPU s':>14}{'CPU ratio':>11}")

    def fmt(r, k):
        return f"{r[k]:.2f}x" if k in r else "-"

    for r in result["summary"]:
        print(f"  {r['contender']:<18}{r['median_wall_s']:>15.3f}{fmt(r, 'wall_ratio_to_bare'):>15}"
              f"{fmt(r, 'wall_median_paired_ratio'):>14}{r['min_wall_s']:>8.3f}{r['max_wall_s']:>8.3f}"
              f"{r['median_cpu_s']:>14.3f}{fmt(r, 'cpu_ratio_to_bare'):>11}")
    meds = {r["contender"]: r["median_wall_s"] for r in result["summary"]}
    if {"bare", "prunelab"} <= meds.keys():
        ok = meds["prunelab"] / meds["bare"] <= result["target_ratio"]
        line = (f"  prunelab/bare = {meds['prunelab'] / meds['bare']:.2f}x "
                f"(target <= {result['target_ratio']}x: {'met' if ok else 'MISSED'})")
        if "prunelab_g8" in meds:
            ok8 = meds["prunelab_g8"] / meds["bare"] <= result["target_ratio"]
            line += (f"; with data.steps_per_batch={GROUP}: {meds['prunelab_g8'] / meds['bare']:.2f}x "
                     f"({'met' if ok8 else 'MISSED'})")
        if "modelpruning" in meds:
            faster = meds["prunelab"] < meds["modelpruning"]
            line += (f"; prunelab/modelpruning = {meds['prunelab'] / meds['modelpruning']:.2f}x "
                     f"({'faster' if faster else 'NOT faster'})")
        print(line)


def parse_subset(values: Sequence[str] | None) -> dict[str, int]:
    """``--subset 20000`` (all models) or ``--subset mlp=20000 resnet20=2048``."""
    out: dict[str, int] = {}
    for v in values or []:
        if "=" in v:
            k, n = v.split("=", 1)
            out[k] = int(n)
        else:
            out.update({m: int(v) for m in MODELS})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp", "resnet20"], choices=list(MODELS))
    p.add_argument("--contenders", nargs="+", default=list(DEFAULT_CONTENDERS),
                   choices=list(ALL_CONTENDERS),
                   help="order = order within a repetition; 'bare' is needed for ratios")
    p.add_argument("--reps", type=int, default=5, help="repetitions (each contender once per rep)")
    p.add_argument("--epochs-per-rep", type=int, default=2,
                   help="timed epochs per run, after one warm-up epoch")
    p.add_argument("--subset", nargs="*", default=None,
                   help="samples per epoch: N for all models or MODEL=N "
                        "(default: " + ", ".join(f"{k}={v['subset']}" for k, v in MODELS.items()) + ")")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=None, help="JSON file for the raw epoch times and summary")
    args = p.parse_args(argv)
    args.subset = parse_subset(args.subset)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible to torch")

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    for logger_name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(logger_name).setLevel(logging.ERROR)

    env = {
        "python": platform.python_version(), "torch": torch.__version__, "pytorch_lightning": pl.__version__,
        "platform": platform.platform(), "processor": _cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "command": " ".join(["python"] + sys.argv),
        "loadavg_at_start": os.getloadavg(), "device": args.device,
    }
    if args.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    try:
        import torchmetrics

        env["torchmetrics"] = torchmetrics.__version__
    except ImportError:  # pragma: no cover
        pass
    print(f"torch {env['torch']}, pytorch_lightning {env['pytorch_lightning']}, "
          f"{env['cpu_count']} CPUs ({env['processor']}), torch threads {env['torch_threads']}"
          + (f", GPU {env['gpu']}" if "gpu" in env else ""))
    config = {k: v for k, v in vars(args).items() if k != "out"}
    results = []
    t_start = time.perf_counter()
    for name in args.models:
        results.append(bench_model(name, args, args.contenders))
    for r in results:
        print_table(r)
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s, load average at the end "
          f"{os.getloadavg()[0]:.1f} (at the start {env['loadavg_at_start'][0]:.1f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "config": config, "results": results}, f, indent=1)
        print(f"raw times written to {args.out}")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
