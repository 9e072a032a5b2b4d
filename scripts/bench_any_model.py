#!/usr/bin/env python
"""prunelab's structural engine against Torch-Pruning on torchvision models (issue #15).

For each model (torchvision mobilenet_v2 and resnet18 at 224x224, random weights: timing does
not depend on them), 50 % of the channels of every prunable group are removed two ways in the
same process, from the same starting weights:

* ``prunelab``      -- :class:`prunelab.pruning.methods.channels.ChannelLayout` units (the traced
                       channel groups), 50 % of each unit's channels by L1 norm (layer scope:
                       per unit), masks applied, then :func:`prunelab.compress.compact.compact`;
* ``torch_pruning`` -- Torch-Pruning's ``MagnitudePruner`` (L1 importance, ``pruning_ratio=0.5``,
                       per group, the classifier ignored), physically pruned by its own
                       ``step()``.

Reported per model: dense and pruned MACs (:func:`prunelab.metrics.count_macs`), the MACs
reduction (dense / pruned), CPU latency at batch 1 and 8 with 1 and 2 threads (the dense and
both pruned models timed in turn, A B C A B C ..., after a warm-up: medians of ``--rounds``
rounds of ``--runs`` runs), the speedup (dense / pruned latency) and the score
speedup / MACs reduction (1.0: latency falls as fast as MACs). Paired per round, the ratio of
prunelab's score to Torch-Pruning's is reported as a median too.

    pip install -e ".[bench]"   # torch-pruning
    python scripts/bench_any_model.py --out scripts/bench_any_model_results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics

import torch
import torchvision
from torch import nn

from prunelab.compress.compact import compact
from prunelab.metrics.macs import count_macs
from prunelab.metrics.timing import time_alternating
from prunelab.pruning.methods.channels import prune_fraction


def prunelab_prune(net: nn.Module, shape: tuple[int, ...], ratio: float) -> nn.Module:
    net = copy.deepcopy(net).eval()
    net.input_shape = shape
    prune_fraction(net, ratio)
    return compact(net, shape)[0].eval()


def torch_pruning_prune(net: nn.Module, shape: tuple[int, ...], ratio: float) -> nn.Module:
    import torch_pruning as tp

    net = copy.deepcopy(net).eval()
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(net, torch.zeros(1, *shape),
                                       importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[head])
    pruner.step()
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch_pruning as tp

    shape = (3, args.size, args.size)
    out = {"command": "python scripts/bench_any_model.py " + " ".join(
               f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items() if k != "out" and v is not None),
           "torch": torch.__version__, "torchvision": torchvision.__version__,
           "torch_pruning": tp.__version__, "machine": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "models": {}}
    for name in args.models:
        torch.manual_seed(0)
        dense = torchvision.models.get_model(name, num_classes=1000).eval()
        nets = {"dense": dense, "prunelab": prunelab_prune(dense, shape, args.ratio),
                "torch_pruning": torch_pruning_prune(dense, shape, args.ratio)}
        macs = {k: count_macs(m, shape)["dense"] for k, m in nets.items()}
        params = {k: sum(p.numel() for p in m.parameters()) for k, m in nets.items()}
        row = {"macs": macs, "params": params,
               "macs_reduction": {k: macs["dense"] / macs[k] for k in ("prunelab", "torch_pruning")},
               "latency_ms": {}, "speedup": {}, "score": {}, "score_ratio": {}}
        for threads in (1, 2):
            per_round = []
            for _ in range(args.rounds):  # rounds of alternating runs, paired ratios per round
                per_round.append(time_alternating(nets, shape, (1, 8), args.runs, 3, 1, threads))
            for b in (1, 8):
                key = f"threads_{threads}_batch_{b}"
                lat = {k: statistics.median(r[k][f"batch_{b}"] for r in per_round) for k in nets}
                row["latency_ms"][key] = lat
                row["speedup"][key] = {k: lat["dense"] / lat[k] for k in ("prunelab", "torch_pruning")}
                row["score"][key] = {k: row["speedup"][key][k] / row["macs_reduction"][k]
                                     for k in ("prunelab", "torch_pruning")}
                ratios = [(r["torch_pruning"][f"batch_{b}"] / r["prunelab"][f"batch_{b}"])
                          * (row["macs_reduction"]["torch_pruning"] / row["macs_reduction"]["prunelab"])
                          for r in per_round]
                row["score_ratio"][key] = statistics.median(ratios)
                print(f"{name} {key}: dense {lat['dense']:.2f} ms, prunelab {lat['prunelab']:.2f} ms "
                      f"(score {row['score'][key]['prunelab']:.3f}), torch_pruning "
                      f"{lat['torch_pruning']:.2f} ms (score {row['score'][key]['torch_pruning']:.3f}); "
                      f"prunelab/torch_pruning score {row['score_ratio'][key]:.3f}", flush=True)
        print(f"{name}: MACs {macs['dense']:,} -> prunelab {macs['prunelab']:,}, torch_pruning "
              f"{macs['torch_pruning']:,}; params {params['dense']:,} -> {params['prunelab']:,} / "
              f"{params['torch_pruning']:,}", flush=True)
        out["models"][name] = row
    out["loadavg"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
