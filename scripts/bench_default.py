#!/usr/bin/env python
"""The default command's training loop against a bare PyTorch loop.

``python -m prunelab.train`` (LeNet-300-100 on MNIST, magnitude pruning on the gradual schedule,
Adam, cosine LR, CSV logger, progress bar, checkpoints; ``data.steps_per_batch=auto``) is built
here exactly as ``train`` builds it (``prunelab.assemble``: the composed config, the data module,
the network, the pruning callback, ``FinalSparsityCheckpoint``, ``build_module``,
``build_trainer``), and its training epochs are timed against:

* ``bare``      -- a plain PyTorch loop over the same training tensors: the same network (same
                   initial weights), the same optimizer built from the same config, a fresh
                   permutation every epoch and ``x[idx]`` batches (what the data module does), no
                   Lightning, no pruning, no validation;
* ``default``   -- the default command as it is (``data.steps_per_batch=auto``, resolved to 8 on
                   this single-device run of a small network);
* ``ungrouped`` -- the default command with ``data.steps_per_batch=1`` (the default before
                   ``auto``), for reference.

Method: every repetition runs the contenders one after another (A B C A B C ...); each run
trains the config's epochs (10 by default; ``--overrides epochs=3`` for a quick look), the
first epoch of every run is a warm-up and is discarded. A Lightning epoch is timed from
``on_train_epoch_start`` (by a callback placed first, so the pruning callback's epoch-start work
is inside) to the start of validation (or the epoch end when there is none): the training loop,
without validation and checkpointing, which the bare loop does not do either. Reported: the
median epoch over all repetitions, its ratio to ``bare`` and the median of the per-repetition
ratios (paired, robust to drift on a shared machine); raw times and load averages in ``--out``.

Example::

    python scripts/bench_default.py --reps 5 --out scripts/bench_default_results.json 2>/dev/null
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

import pytorch_lightning as pl

CONTENDERS = ("bare", "default", "ungrouped")


class TrainLoopTimer(pl.Callback):
    """(start, end) ``perf_counter`` of every training epoch's batches: from
    ``on_train_epoch_start`` to the start of validation, or to the epoch end without one."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.epochs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def _stop(self) -> None:
        if self.start is not None:
            self.epochs.append(time.perf_counter() - self.start)
            self.start = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._stop()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()


def compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from prunelab.cli import CONF_DIR
    from prunelab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="bench"):
        return hydra_compose("train", overrides=list(overrides))


def run_prunelab(cfg, out_dir: str) -> dict[str, Any]:
    """``train.run``'s objects up to ``trainer.fit``; the training epochs' wall times."""
    from omegaconf import OmegaConf

    from prunelab.assemble import assemble, build_module, build_trainer
    from prunelab.pruning import FinalSparsityCheckpoint

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    parts = assemble(cfg)  # the top-level checks included
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    module = build_module(cfg, parts.net, int(parts.datamodule.num_classes),
                          optimizer=parts.optimizer, regularizer=parts.regularizer,
                          distiller=parts.distiller, config=resolved)
    ckpt = FinalSparsityCheckpoint(dirpath=os.path.join(out_dir, "checkpoints"), filename="best",
                                   monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode,
                                   save_last=cfg.checkpoint.save_last, save_top_k=1,
                                   auto_insert_metric_name=False, enable_version_counter=False)
    timer = TrainLoopTimer()
    trainer = build_trainer(cfg, out_dir, [timer, parts.callback, ckpt])
    trainer.fit(module, datamodule=parts.datamodule)
    return {"wall": timer.epochs, "steps_per_batch": parts.datamodule.steps_per_batch,
            "global_step": trainer.global_step,
            "sparsity": parts.callback.masks.stats()["global"]}


def run_bare(cfg) -> dict[str, Any]:
    """The same network, data and optimizer in a plain loop."""
    from hydra.utils import instantiate

    from prunelab.assemble import data_and_model

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm, net, _ = data_and_model(cfg)  # the same initial weights as the default run's
    dm.setup("fit")
    x, y = dm.data_train
    opt = instantiate(cfg.optimizer)(params=list(net.parameters()))
    bs, n = int(cfg.data.batch_size), len(x)
    net.train()
    wall = []
    for epoch in range(int(cfg.epochs)):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(cfg.seed) + epoch))
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
        wall.append(time.perf_counter() - t0)
    return {"wall": wall, "global_step": int(cfg.epochs) * -(-n // bs)}


def summarize(raw: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    base = statistics.median(t for rep in raw["bare"] for t in rep["wall"][1:])
    for c, reps in raw.items():
        timed = [t for rep in reps for t in rep["wall"][1:]]
        paired = [statistics.median(r["wall"][1:]) / statistics.median(b["wall"][1:])
                  for r, b in zip(reps, raw["bare"])]
        rows.append({"contender": c, "median_s": statistics.median(timed), "min_s": min(timed),
                     "max_s": max(timed), "epochs": len(timed),
                     "ratio": statistics.median(timed) / base,
                     "paired_ratio": statistics.median(paired),
                     "paired_ratios": paired,
                     "steps_per_batch": reps[0].get("steps_per_batch")})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--overrides", nargs="*", default=[],
                   help="train overrides applied to every contender (e.g. epochs=3)")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--out", default=None, help="JSON file for the raw epoch times and summary")
    args = p.parse_args(argv)
    if "bare" not in args.contenders:
        p.error("--contenders: 'bare' is needed for the ratios")
    warnings.filterwarnings("ignore")
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from prunelab.hardware import job_threads

    cfgs = {"bare": compose(args.overrides), "default": compose(args.overrides),
            "ungrouped": compose([*args.overrides, "data.steps_per_batch=1"])}
    threads = job_threads(cfgs["default"])
    if threads:
        torch.set_num_threads(threads)
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "pytorch_lightning": pl.__version__, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "command": " ".join(["python"] + sys.argv),
           "loadavg_at_start": os.getloadavg()}
    print(f"torch {env['torch']}, pytorch_lightning {env['pytorch_lightning']}, "
          f"{env['cpu_count']} CPUs, torch threads {env['torch_threads']}", flush=True)
    raw: dict[str, list[dict[str, Any]]] = {c: [] for c in args.contenders}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for c in args.contenders:
                cfg = copy.deepcopy(cfgs[c])
                res = (run_bare(cfg) if c == "bare"
                       else run_prunelab(cfg, os.path.join(tmp, f"{c}{rep}")))
                res["loadavg_1min"] = os.getloadavg()[0]
                raw[c].append(res)
                print(f"  rep {rep} {c:<10} epochs " + " ".join(f"{t:.3f}" for t in res["wall"])
                      + f"  (first = warm-up; steps {res['global_step']}; load "
                      f"{res['loadavg_1min']:.1f})", flush=True)
    rows = summarize(raw)
    print(f"\n{'contender':<12}{'steps/batch':>12}{'median s':>10}{'ratio':>8}{'paired':>8}"
          f"{'min s':>8}{'max s':>8}")
    for r in rows:
        print(f"{r['contender']:<12}{str(r['steps_per_batch'] or '-'):>12}{r['median_s']:>10.3f}"
              f"{r['ratio']:>7.2f}x{r['paired_ratio']:>7.2f}x{r['min_s']:>8.3f}{r['max_s']:>8.3f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average at the end "
          f"{os.getloadavg()[0]:.1f} (start {env['loadavg_at_start'][0]:.1f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "config": vars(args), "summary": rows, "raw": raw}, f,
                      indent=1)
        print(f"raw times written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
