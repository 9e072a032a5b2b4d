"""ExecuTorch benchmark (issue 17): does channel pruning pay in the runtime models ship in?

    python scripts/bench_executorch.py                   # needs pip install -e ".[executorch]"
    python scripts/bench_executorch.py --models lenet5 --threads 1 --reps 3

For seed_cnn, lenet5 (MNIST shapes), resnet20 (CIFAR shapes) and torchvision's mobilenet_v2
(3x64x64 inputs, 10 classes): 50 % of the output channels of every prunable layer but the output
layer removed (L1 norm, prunelab's structured pruner, then ``compact``). At batch 1 and 32 each
model is lowered to ExecuTorch with the XNNPACK delegate four times: dense and compact, fp32 and
int8 (PT2E, XNNPACK quantizer, static per-channel, calibrated on random batches: latency only).
At 1 and 2 threads (torch and XNNPACK) the eager dense model is timed, then the four programs in
turn (A B C D A B C D ...), ``--reps`` rounds of ``--runs`` runs after a warm-up; medians.

Score = (ExecuTorch dense / ExecuTorch compact) / (dense MACs / compact MACs): 1.0 = the time fell
as much as the arithmetic. Goals: score >= 0.8 at batch 32 and >= 0.7 at batch 1 on every model;
int8 compact faster than fp32 compact.

Writes ``scripts/bench_executorch_results.json`` and prints a markdown table. Weights are random:
latency depends on the shapes, not on the values.

``--widths`` instead times a stack of four 3x3 conv-BN-ReLU layers of C -> C channels on 32x32
inputs for C in 8..64 and prints the arithmetic rate (GMAC/s) each width gets in the runtime:
what a compact network's narrow layers cost beyond their MACs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_deploy import prune_half_channels  # scripts/ is on sys.path when run as a script

from prunelab.compress.compact import compact
from prunelab.compress.executorch_model import lower, quantize_pt2e, set_threads
from prunelab.deploy.executorch import time_programs
from prunelab.metrics import count_macs, time_alternating
from prunelab.models import build_model

MODELS = {"seed_cnn": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32),
          "mobilenet_v2": (3, 64, 64)}


def build(name: str, shape: tuple[int, ...]) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "mobilenet_v2":
        import torchvision

        return torchvision.models.mobilenet_v2(num_classes=10).eval()
    return build_model(name, input_shape=shape, num_classes=10).eval()


def programs_for(net, small, shape, batch: int) -> dict:
    calib = [torch.randn(batch, *shape, generator=torch.Generator().manual_seed(i))
             for i in range(4)]
    out = {}
    for key, model in (("dense", net), ("compact", small)):
        out[key] = {batch: lower(model, shape, batch)}
        out[f"{key}_int8"] = {batch: lower(quantize_pt2e(model, shape, calib), shape, batch)}
    return out


def width_rates(batch: int, threads: int, runs: int, reps: int,
                widths: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64)) -> dict[int, dict]:
    """Per channel width C: ExecuTorch ms and GMAC/s of four C -> C 3x3 conv-BN-ReLU layers."""
    nn = torch.nn
    torch.set_num_threads(threads)
    set_threads(threads)
    out = {}
    for c in widths:
        torch.manual_seed(0)
        net = nn.Sequential(*[nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False),
                                            nn.BatchNorm2d(c), nn.ReLU()) for _ in range(4)]).eval()
        shape = (c, 32, 32)
        ms = time_programs({"net": {batch: lower(net, shape, batch)}}, shape, runs, 5,
                           reps)["net"][f"batch_{batch}"]
        macs = count_macs(net, shape)["dense"] * batch
        out[c] = {"ms": ms, "gmac_per_s": macs / ms / 1e6}
    return out


def main_widths(args: argparse.Namespace) -> None:
    print("| channels | batch | threads | ET ms | GMAC/s |")
    print("|---|---|---|---|---|")
    results = {}
    for b in args.batches:
        for t in args.threads:
            for c, r in width_rates(b, t, args.runs, args.reps).items():
                results[f"c{c}_b{b}_t{t}"] = r
                print(f"| {c} | {b} | {t} | {r['ms']:.3f} | {r['gmac_per_s']:.1f} |", flush=True)
    Path(args.out).with_name("bench_executorch_widths.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("bench_executorch_results.json")))
    ap.add_argument("--widths", action="store_true",
                    help="time conv stacks of 8..64 channels instead (bench_executorch_widths.json)")
    args = ap.parse_args()
    if args.widths:
        main_widths(args)
        return
    results: dict = {"torch": torch.__version__, "runs": args.runs, "reps": args.reps,
                     "models": {}}
    print("| model | batch | threads | eager dense ms | ET dense ms | ET compact ms | speedup | "
          "MACs cut | score | ET int8 dense ms | ET int8 compact ms | int8 compact vs fp32 "
          "compact | not delegated |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        shape = MODELS[name]
        net = prune_half_channels(build(name, shape))
        small, rep = compact(net, shape)
        cut = count_macs(net, shape)["dense"] / count_macs(small, shape)["dense"]
        row: dict = {"channels": [rep.channels_before, rep.channels_after], "macs_cut": cut,
                     "cells": []}
        for b in args.batches:
            t0 = time.perf_counter()
            progs = programs_for(net, small, shape, b)
            lower_s = time.perf_counter() - t0
            left = {k: p[b].not_delegated for k, p in progs.items() if p[b].not_delegated}
            for t in args.threads:
                torch.set_num_threads(t)
                set_threads(t)
                eager = time_alternating({"dense": net}, shape, [b], args.runs, 5, args.reps,
                                         t)["dense"][f"batch_{b}"]
                et = {k: v[f"batch_{b}"] for k, v in
                      time_programs(progs, shape, args.runs, 5, args.reps).items()}
                speedup = et["dense"] / et["compact"]
                cell = {"batch": b, "threads": t, "eager_dense_ms": eager, "et_ms": et,
                        "speedup": speedup, "score": speedup / cut,
                        "int8_vs_fp32_compact": et["compact"] / et["compact_int8"],
                        "bytes": {k: len(p[b].buffer) for k, p in progs.items()},
                        "not_delegated": left, "lowering_s": lower_s}
                row["cells"].append(cell)
                print(f"| {name} | {b} | {t} | {eager:.3f} | {et['dense']:.3f} | "
                      f"{et['compact']:.3f} | {speedup:.2f} | {cut:.2f} | {speedup / cut:.2f} | "
                      f"{et['dense_int8']:.3f} | {et['compact_int8']:.3f} | "
                      f"{cell['int8_vs_fp32_compact']:.2f}x | {left or '-'} |", flush=True)
        results["models"][name] = row
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
