"""Deployment benchmark: does pruning make models faster and smaller on this CPU?

    python scripts/bench_deploy.py                       # compaction + CSR sections
    python scripts/bench_deploy.py --int8-run outputs/runs/<LeNet-300-100 90% run>

1. Compaction: 50% of the output channels of every layer but the output layer removed (L1 norm,
   prunelab's structured pruner), on seed_cnn, lenet5 (MNIST shapes) and resnet20 (CIFAR shapes).
   The masked dense model and the compacted one are timed in turn (A B A B ...), ``--reps``
   rounds of ``--runs`` runs after a warm-up, batch 1 and 64; the score is the measured speedup
   divided by the MACs reduction (1.0 = the time fell as much as the arithmetic). The same pair
   is timed again exported to ONNX and run by onnxruntime (``--no-onnx`` skips it), and the
   reduction of the activations the layers write is printed beside the MACs reduction. The
   PyTorch models run contiguous (NCHW); ``--memory-format measured`` runs each in its faster
   memory format per batch size, as ``prunelab.measure`` does.
2. Unstructured 95% (layer-wise magnitude): LeNet-300-100 and an MLP with two 4096-wide hidden
   layers; Linear layers through the CSR kernel where measured faster (chosen per batch size),
   against the dense model, timed in turn.
3. The floor (``--sections floor``): the same three models compacted with every prunable channel
   group cut to one channel, timed beside the dense and the 50 % compact ones in PyTorch and on
   onnxruntime: the largest speedup any channel pruning could give on this machine, next to the
   speedup a 0.8 score needs (0.8 x the MACs reduction of 50 %).
4. int8 (``--int8-run``): ``python -m prunelab.measure`` on a trained run: size and accuracy of the
   sparse int8 file against the dense fp32 one.

Writes ``scripts/bench_deploy_results.json`` and prints markdown tables. Weights are random for 1
and 2: latency does not depend on their values, only on the shapes and where the zeros are.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from prunelab.compress.compact import compact
from prunelab.compress.sparse import sparsify
from prunelab.deploy import (
    MeasureConf,
    choose_memory_format,
    measure_run,
    onnxruntime_available,
    onnxruntime_latency,
)
from prunelab.metrics import count_macs, time_alternating
from prunelab.models import build_model
from prunelab.pruning import Magnitude, Structured


def half_channels(name: str, shape: tuple[int, ...]):
    torch.manual_seed(0)
    return prune_half_channels(build_model(name, input_shape=shape, num_classes=10).eval())


def prune_half_channels(net: torch.nn.Module) -> torch.nn.Module:
    """50 % of the output channels of every prunable layer but the output layer masked to zero
    (prunelab's structured pruner, L1 norm, layer scope); ``net`` itself, pruned."""
    pruner = Structured(scope="layer")
    masks = pruner.prepare(net)
    total = sum(p.numel() for p in masks.params.values())
    eligible = sum(p.numel() for n, p in masks.params.items() if n not in pruner._protected)
    masks.update(pruner.compute_masks(masks.params, masks.as_dict(), 0.5 * eligible / total))
    masks.apply_()
    return net


def magnitude(name: str, shape, sparsity: float, **kw):
    torch.manual_seed(0)
    net = build_model(name, input_shape=shape, num_classes=10, **kw).eval()
    pruner = Magnitude()
    masks = pruner.prepare(net)
    masks.update(pruner.compute_masks(masks.params, masks.as_dict(), sparsity))
    masks.apply_()
    return net


def activation_elements(net: torch.nn.Module, shape) -> int:
    """Elements written by the leaf modules in one forward of one sample (memory traffic that
    does not shrink as fast as the MACs when channels go)."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        total += out.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    with torch.inference_mode():
        net.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--int8-run", default=None)
    ap.add_argument("--sections", default="compaction,csr",
                    help="comma-separated: compaction, csr, floor (int8 runs when --int8-run is "
                         "given)")
    ap.add_argument("--memory-format", default="contiguous",
                    choices=["contiguous", "measured", "channels_last"],
                    help="compaction section: the PyTorch models' memory format; measured: each "
                         "model in its faster one per batch size, as prunelab.measure does")
    ap.add_argument("--no-onnx", action="store_true",
                    help="skip the onnxruntime timing of the compaction section")
    ap.add_argument("--out", default=str(Path(__file__).with_name("bench_deploy_results.json")))
    args = ap.parse_args()
    if not args.no_onnx and not onnxruntime_available():
        print("onnx / onnxruntime not installed: the onnxruntime columns are skipped "
              "(pip install 'prunelab[deploy]')")
        args.no_onnx = True
    out = {"threads": args.threads, "reps": args.reps, "runs": args.runs,
           "torch": torch.__version__}

    sections = {x for x in args.sections.split(",") if x}
    if not sections <= {"compaction", "csr", "floor"}:
        ap.error(f"--sections={args.sections!r}; allowed: compaction, csr, floor")
    if "compaction" in sections:
        compaction_section(args, out)
    if "csr" in sections:
        csr_section(args, out)
    if "floor" in sections:
        floor_section(args, out)
    if args.int8_run:
        int8_section(args, out)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def compaction_section(args, out) -> None:
    out["compaction"] = {}
    print(f"## Compaction, 50% of channels ({args.threads} threads, median of {args.reps} x "
          f"{args.runs} runs, PyTorch memory format: {args.memory_format})\n")
    print("| model | channels kept | MACs reduction | activations reduction | batch | dense ms | "
          "compact ms | speedup | speedup / MACs reduction | onnxruntime: dense ms | compact ms | "
          "speedup | / MACs reduction |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, shape in (("seed_cnn", (1, 28, 28)), ("lenet5", (1, 28, 28)),
                        ("resnet20", (3, 32, 32))):
        net = half_channels(name, shape)
        small, rep = compact(net, shape)
        reduction = count_macs(net, shape)["dense"] / count_macs(small, shape)["dense"]
        timed = {"dense": net, "compact": small}
        formats = {}
        if args.memory_format != "contiguous":  # each model in its faster format, per batch size
            conf = MeasureConf(memory_format=args.memory_format, batch_sizes=[1, 64],
                               runs=args.runs, warmup=10, rounds=args.reps, threads=args.threads)
            formats = {k: {} for k in timed}
            choose_memory_format(conf, timed, formats, shape)
        lat = time_alternating(timed, shape, (1, 64), args.runs, 10, args.reps, args.threads)
        acts = activation_elements(net, shape) / activation_elements(small, shape)
        ort_lat = None if args.no_onnx else {
            k: v["latency_ms"] for k, v in onnxruntime_latency(
                {"dense": net, "compact": small}, shape, (1, 64), args.runs, 10, args.reps,
                args.threads).items()}
        row = {"channels": [rep.channels_before, rep.channels_after], "macs_reduction": reduction,
               "activation_reduction": acts, "latency_ms": lat, "onnxruntime_latency_ms": ort_lat,
               "memory_format": {k: v.get("memory_format") for k, v in formats.items()}}
        for b in (1, 64):
            k = f"batch_{b}"
            sp = lat["dense"][k] / lat["compact"][k]
            row[f"speedup_{k}"] = sp
            row[f"score_{k}"] = sp / reduction
            ort_cells = "- | - | - | -"
            if ort_lat is not None:
                osp = ort_lat["dense"][k] / ort_lat["compact"][k]
                row[f"onnxruntime_speedup_{k}"] = osp
                row[f"onnxruntime_score_{k}"] = osp / reduction
                ort_cells = (f"{ort_lat['dense'][k]:.3f} | {ort_lat['compact'][k]:.3f} | "
                             f"{osp:.2f} | {osp / reduction:.2f}")
            print(f"| {name} | {rep.channels_after}/{rep.channels_before} | {reduction:.2f} | "
                  f"{acts:.2f} | {b} | {lat['dense'][k]:.3f} | {lat['compact'][k]:.3f} | "
                  f"{sp:.2f} | {sp / reduction:.2f} | {ort_cells} |", flush=True)
        out["compaction"][name] = row


def csr_section(args, out) -> None:
    out["csr"] = {}
    print(f"\n## Unstructured 95%, CSR where measured faster ({args.threads} threads)\n")
    print("| model | batch | dense ms | sparse ms | speedup | layers on CSR (measured speedup per "
          "layer) |")
    print("|---|---|---|---|---|---|")
    for label, kw in (("LeNet-300-100", {"hidden": [300, 100]}),
                      ("MLP 4096-4096", {"hidden": [4096, 4096]})):
        net = magnitude("mlp", (1, 28, 28), 0.95, **kw)
        out["csr"][label] = {}
        for b in (1, 64):
            sp, res = sparsify(copy.deepcopy(net), batch_sizes=(b,), threads=args.threads,
                               runs=args.runs, input_shape=(1, 28, 28), rounds=args.reps)
            choices = res.layers
            lat = time_alternating({"dense": net, "sparse": sp}, (1, 28, 28), (b,), args.runs, 10,
                                   args.reps, args.threads)
            k = f"batch_{b}"
            speed = lat["dense"][k] / lat["sparse"][k]
            layers = ", ".join(f"{c.name} {c.shape[1]}x{c.shape[0]}: "
                               f"{c.dense_ms[b] / c.sparse_ms[b]:.2f}x"
                               f"{' (CSR)' if c.sparse else ' (dense kept)'}" for c in choices)
            if res.reverted:
                layers = (f"whole model with the faster ones not faster "
                          f"({res.as_dict()['model_speedup'][b]:.2f}x), all kept dense: {layers}")
            out["csr"][label][k] = {"dense_ms": lat["dense"][k], "sparse_ms": lat["sparse"][k],
                                    "speedup": speed, **res.as_dict()}
            print(f"| {label} | {b} | {lat['dense'][k]:.3f} | {lat['sparse'][k]:.3f} | "
                  f"{speed:.2f} | {layers} |")


def one_channel(name: str, shape) -> torch.nn.Module:
    """``name`` compacted with every channel group the structured pruner may shrink cut to one
    channel (what is left when channel pruning has taken everything it can)."""
    from prunelab.graph import channel_groups
    from prunelab.pruning.methods.latency_aware import LatencyModel, one_channel_keeps

    torch.manual_seed(0)
    net = build_model(name, input_shape=shape, num_classes=10).eval()
    pruner = Structured(scope="layer")
    pruner.prepare(net)
    groups = channel_groups(net, shape)
    keeps = one_channel_keeps(groups, list(pruner.resolve(net)), sorted(pruner._protected))
    return LatencyModel(net, shape, groups, 1, None, 1).build(keeps)


def floor_section(args, out) -> None:
    out["floor"] = {}
    print(f"\n## The floor: every prunable channel group cut to one channel ({args.threads} "
          "threads)\n")
    print("| model | batch | runtime | dense ms | 50 % compact ms | one-channel ms | speedup at 50 % "
          "| largest possible speedup | speedup a 0.8 score needs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape in (("seed_cnn", (1, 28, 28)), ("lenet5", (1, 28, 28)),
                        ("resnet20", (3, 32, 32))):
        torch.manual_seed(0)
        dense = build_model(name, input_shape=shape, num_classes=10).eval()
        small, _ = compact(half_channels(name, shape), shape)
        models = {"dense": dense, "compact": small, "one_channel": one_channel(name, shape)}
        need = 0.8 * count_macs(dense, shape)["dense"] / count_macs(small, shape)["dense"]
        lat = {"PyTorch": time_alternating(models, shape, (1, 64), args.runs, 10, args.reps,
                                           args.threads)}
        if not args.no_onnx:
            lat["onnxruntime"] = {k: v["latency_ms"] for k, v in onnxruntime_latency(
                models, shape, (1, 64), args.runs, 10, args.reps, args.threads).items()}
        out["floor"][name] = {"needed_speedup": need, "latency_ms": lat}
        for b in (1, 64):
            k = f"batch_{b}"
            for runtime, t in lat.items():
                d, c, f = t["dense"][k], t["compact"][k], t["one_channel"][k]
                print(f"| {name} | {b} | {runtime} | {d:.3f} | {c:.3f} | {f:.3f} | {d / c:.2f} | "
                      f"{d / f:.2f} | {need:.2f} |", flush=True)


def int8_section(args, out) -> None:
    conf = MeasureConf(run=args.int8_run, threads=args.threads, runs=args.runs, rounds=args.reps)
    res = measure_run(conf)
    v = res["variants"]
    out["int8"] = {"run": args.int8_run, "dense_bytes": v["dense"]["bytes"],
                   "int8_bytes": v["int8"]["bytes"],
                   "size_fraction": v["int8"]["bytes"] / v["dense"]["bytes"],
                   "dense_acc": v["dense"]["test_acc"], "int8_acc": v["int8"]["test_acc"],
                   "int8_zeros": v["int8"]["int8_zeros"]["global"],
                   "latency_ms": {k: v[k]["latency_ms"] for k in v if "latency_ms" in v[k]}}


if __name__ == "__main__":
    main()
