#!/usr/bin/env python
"""2:4 semi-structured sparsity on a CUDA GPU: correctness and speedup of the ``gpu_2to4`` path.

A model with large Linear layers (prunelab's ``mlp`` with wide hidden layers, by default
4096 -> 11008 -> 4096 -> 11008 -> 4096, the feed-forward shapes of a 7B-parameter transformer)
is pruned to 2:4 by prunelab's N:M pruner (``pruner=nm``: keep the 2 largest of every 4
consecutive input weights), then converted by :func:`prunelab.compress.to_semi_structured`
(``torch.sparse.to_sparse_semi_structured``: compressed weights on the sparse tensor cores).

Correctness: the semi-structured model's outputs against the masked dense model in float64
(relative error ``||out - ref|| / ||ref||``) next to the dense half-precision model's own error.
Speed: the dense half-precision model (2:4 zeros stored) and the semi-structured one, timed in
turn (A B A B ...) for ``--rounds`` rounds after a warm-up, each round ``--iters`` forwards
between two CUDA events, at every batch size (rows of the matrix products); medians and the
ratio. The same for the single layers, so the model number can be read against the kernels'.

Example::

    python scripts/bench_2to4.py --out bench_2to4.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.compress import to_semi_structured
from prunelab.models import build_model
from prunelab.pruning import NM
from prunelab.pruning.masks import MaskSet

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def pruned_two_four(width: int, hidden: Sequence[int], seed: int) -> nn.Module:
    """prunelab's ``mlp`` (``width`` inputs and outputs) pruned to 2:4 by the N:M pruner."""
    torch.manual_seed(seed)
    net = build_model("mlp", (width,), width, hidden=list(hidden)).cuda()
    pruner = NM(n=2, m=4)
    masks = MaskSet(pruner.resolve(net))
    masks.update(pruner.compute_masks(masks.params, masks.as_dict(), 0.5))
    masks.apply_()
    return net.eval()


def time_pair(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, iters: int,
              warmup: int) -> dict[str, float]:
    """Median milliseconds per forward of each model, the models timed in turn."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(warmup):
                m(x)
        torch.cuda.synchronize()
        for _ in range(rounds):
            for k, m in models.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    m(x)
                end.record()
                end.synchronize()
                times[k].append(start.elapsed_time(end) / iters)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def rel_error(model: nn.Module, ref: torch.Tensor, x: torch.Tensor) -> float:
    out = model(x).double()
    return float((out - ref).norm() / ref.norm())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--hidden", type=int, nargs="+", default=[11008, 4096, 11008])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512, 2048, 8192, 16384])
    p.add_argument("--dtype", choices=list(DTYPES), default="float16")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (semi-structured sparsity runs on sparse tensor cores)")
    dtype = DTYPES[args.dtype]
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(), "capability": torch.cuda.get_device_capability(),
           "command": " ".join(["python"] + sys.argv), "dtype": args.dtype}
    print(f"torch {env['torch']}, {env['gpu']} (sm {env['capability']}), {args.dtype}")

    net = pruned_two_four(args.width, args.hidden, args.seed)
    x_check = torch.randn(256, args.width, device="cuda")
    ref_net = copy.deepcopy(net).double()
    sparse, report = to_semi_structured(net, x_check, dtype=dtype, atol=1.0)
    dense = net.to(dtype)
    shapes = {n: tuple(m.weight.shape) for n, m in dense.named_modules() if isinstance(m, nn.Linear)}
    print(f"layers (out x in): {shapes}")
    print(f"converted to 2:4: {report.converted}; skipped: {report.skipped}")
    with torch.no_grad():
        ref = ref_net(x_check.double())
    check = {"rel_err_semi_structured": rel_error(sparse, ref, x_check.to(dtype)),
             "rel_err_dense_half": rel_error(dense, ref, x_check.to(dtype)),
             "max_abs_diff_vs_dense_half": report.max_abs_diff}
    del ref_net, ref
    print(f"relative error vs float64: 2:4 {check['rel_err_semi_structured']:.2e}, dense "
          f"{args.dtype} {check['rel_err_dense_half']:.2e}; max |2:4 - dense| "
          f"{check['max_abs_diff_vs_dense_half']:.3g}")
    zeros = {n: float((m.weight == 0).float().mean()) for n, m in dense.named_modules()
             if isinstance(m, nn.Linear)}

    rows: list[dict[str, Any]] = []
    for b in args.batch_sizes:
        x = torch.randn(b, args.width, device="cuda", dtype=dtype)
        t = time_pair({"dense": dense, "2:4": sparse}, x, args.rounds, args.iters, args.warmup)
        rows.append({"what": "model", "batch": b, "dense_ms": t["dense"], "sparse_ms": t["2:4"],
                     "speedup": t["dense"] / t["2:4"]})
        for name in report.converted:
            d, s = dense.get_submodule(name), sparse.get_submodule(name)
            xi = torch.randn(b, d.in_features, device="cuda", dtype=dtype)
            t = time_pair({"dense": d, "2:4": s}, xi, args.rounds, args.iters, args.warmup)
            rows.append({"what": f"layer {name} {d.out_features}x{d.in_features}", "batch": b,
                         "dense_ms": t["dense"], "sparse_ms": t["2:4"],
                         "speedup": t["dense"] / t["2:4"]})
    print(f"\n{'what':<28}{'batch':>7}{'dense ms':>11}{'2:4 ms':>10}{'speedup':>9}")
    for r in rows:
        print(f"{r['what']:<28}{r['batch']:>7}{r['dense_ms']:>11.4f}{r['sparse_ms']:>10.4f}"
              f"{r['speedup']:>8.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "config": vars(args), "shapes": shapes, "zeros": zeros,
                       "converted": report.converted, "skipped": report.skipped,
                       "check": check, "rows": rows}, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
