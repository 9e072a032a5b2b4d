"""ExecuTorch in ``export`` and ``measure`` (:mod:`prunelab.compress.executorch_model`).

- ``export format=executorch``: a run as ExecuTorch programs lowered to XNNPACK (one ``.pte`` per
  batch size: a program's shapes are static), checked against PyTorch and timed in ExecuTorch's
  runtime beside the dense PyTorch model;
- ``measure``'s ExecuTorch variants (``et_dense``, ``et_compact``, ``et_int8``,
  ``et_compact_int8``), timed in the runtime in turn, their speedup also against ``et_dense``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.deploy.loading import DeployRun, calibration_batches
from prunelab.deploy.options import DeployError
from prunelab.files import atomic_write


def float_zeros(net: nn.Module) -> int:
    """Zeros in the weights of the network's convolutions and Linear layers."""
    return sum(int((m.weight == 0).sum()) for m in net.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)))


def executorch_programs(net: nn.Module, input_shape: Any, batch_sizes: Any,
                        calibration: list[torch.Tensor] | None = None) -> tuple[dict, dict]:
    """``net`` (int8 when ``calibration`` batches are given) lowered once per batch size:
    ``({batch: Lowered}, info)``; info has the ops XNNPACK did not take (per op, the most any
    program left) and, for int8, the weights' zeros before and after. A weight pruned to zero that
    is not an int8 zero is a DeployError."""
    from prunelab.compress.executorch_model import (
        int8_weight_zeros,
        lower,
        name_ops,
        quantize_pt2e,
    )

    info: dict[str, Any] = {}
    graph: nn.Module = net
    if calibration is not None:
        graph = quantize_pt2e(net, input_shape, calibration)
        info.update(float_zeros=float_zeros(net), int8_zeros=int8_weight_zeros(graph))
        if info["int8_zeros"] < info["float_zeros"]:
            raise DeployError(f"int8 has {info['int8_zeros']} zero weights, fewer than the "
                              f"{info['float_zeros']} pruned ones")
    programs = {int(b): lower(graph, input_shape, int(b)) for b in batch_sizes}
    left: dict[str, int] = {}
    for p in programs.values():
        for op, count in p.not_delegated.items():
            left[op] = max(left.get(op, 0), count)
    info["not_delegated"] = left
    if left:
        print(f"prunelab: warning: XNNPACK does not take {name_ops(left)}; these run as "
              f"ExecuTorch's portable operators", file=sys.stderr)
    return programs, info


def check_programs(net: nn.Module, programs: dict, input_shape: Any, atol: float | None
                   ) -> float:
    """The largest |ExecuTorch - PyTorch| over one random batch per program; above ``atol`` (float
    programs; ``None``: not checked) a DeployError."""
    from prunelab.compress.executorch_model import ExecuTorchModule

    diff = 0.0
    for b, p in programs.items():
        x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            ref = net.eval()(x)
        diff = max(diff, float((ExecuTorchModule(p.buffer, b)(x) - ref).abs().max()))
    if atol is not None and diff > atol:
        raise DeployError(f"the ExecuTorch program differs from PyTorch by {diff:.2e} > "
                          f"atol={atol}")
    return diff


def time_programs(programs: dict[str, dict], input_shape: Any, runs: int, warmup: int,
                  rounds: int) -> dict[str, dict[str, float]]:
    """Median latency (ms) of ExecuTorch programs (``{name: {batch: Lowered}}``), per batch size,
    the names timed in turn (A B A B ...)."""
    from prunelab.compress.executorch_model import load_method
    from prunelab.metrics.timing import time_in_turn

    out: dict[str, dict[str, float]] = {k: {} for k in programs}
    sizes = sorted({b for per in programs.values() for b in per})
    for b in sizes:
        x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(b))
        calls = {k: functools.partial(load_method(per[b].buffer).execute, [x])
                 for k, per in programs.items() if b in per}
        for k, ms in time_in_turn(calls, runs, warmup, rounds).items():
            out[k][f"batch_{b}"] = ms
    return out


def export_executorch(conf: Any, run: DeployRun, net: nn.Module, out: Path, stem: str
                      ) -> dict[str, Any]:
    """The ``format=executorch`` part of :func:`prunelab.deploy.export_run`: ``<stem>_b<B>.pte``
    per batch size, checked (float: every program within ``atol`` of PyTorch; int8: test
    accuracy beside PyTorch's), timed beside the dense PyTorch model."""
    from prunelab.compress.executorch_model import ExecuTorchModule, set_threads
    from prunelab.metrics.accuracy import accuracy
    from prunelab.metrics.timing import time_alternating

    set_threads(conf.threads)
    int8 = conf.quantize == "int8"
    calib = calibration_batches(run, 8) if int8 else None
    programs, info = executorch_programs(net, run.input_shape, conf.batch_sizes, calib)
    diff = check_programs(net, programs, run.input_shape, None if int8 else conf.atol)
    files = {}  # written once every program passed its check
    for b, p in programs.items():
        path = atomic_write(out / f"{stem}_b{b}.pte", functools.partial(_write, p.buffer))
        files[f"batch_{b}"] = path.name
    result: dict[str, Any] = {"pte": files, "bytes": {f"batch_{b}": len(p.buffer)
                                                      for b, p in programs.items()},
                              "max_abs_diff": diff, **info}
    if int8:  # the check of an int8 program: its accuracy on the test set beside PyTorch's
        run.dm.setup("test")
        largest = max(programs)
        loader = run.dm.test_dataloader()
        result["test_acc"] = accuracy(ExecuTorchModule(programs[largest].buffer, largest), loader)
        result["pytorch_test_acc"] = accuracy(net, loader)
    result["dense_latency_ms"] = time_alternating({"dense": run.net}, run.input_shape,
                                                  conf.batch_sizes, conf.runs, 10, 1,
                                                  conf.threads)["dense"]
    result["latency_ms"] = time_programs({"pte": programs}, run.input_shape, conf.runs, 10,
                                         1)["pte"]
    return result


def _write(data: bytes, path: Path) -> None:
    path.write_bytes(data)


def print_executorch(result: dict[str, Any], out: Path) -> None:
    """What ``export format=executorch`` prints."""
    sizes = ", ".join(f"{k.removeprefix('batch_')}: {v / 1e3:.1f} KB"
                      for k, v in result["bytes"].items())
    print(f"wrote {len(result['pte'])} ExecuTorch program(s) to {out} ({sizes}; dense PyTorch "
          f"weights {result['dense_bytes'] / 1e3:.1f} KB)")
    if "test_acc" in result:
        print(f"int8 ExecuTorch test accuracy {100 * result['test_acc']:.2f} % (PyTorch float "
              f"{100 * result['pytorch_test_acc']:.2f} %); pruned weights {result['float_zeros']}, "
              f"int8 zeros {result['int8_zeros']}")
    else:
        print(f"ExecuTorch vs PyTorch: max |diff| {result['max_abs_diff']:.2e}")
    for k, ms in result["latency_ms"].items():
        print(f"batch {k.removeprefix('batch_')}: ExecuTorch {ms:.3f} ms, dense PyTorch "
              f"{result['dense_latency_ms'][k]:.3f} ms")


# ---------------------------------------------------------------------------------- measure
#: measure's ExecuTorch variants: name -> (the float variant it is made of, int8)
ET_VARIANTS = {"et_dense": ("dense", False), "et_int8": ("dense", True),
               "et_compact": ("compact", False), "et_compact_int8": ("compact", True)}


def wants_executorch(conf: Any, target: str) -> bool:
    """Whether ``measure`` adds the ExecuTorch variants: ``executorch=true`` (the extra is then
    required), ``false``, or ``null``: on the ``edge_cpu`` profile when ExecuTorch is installed."""
    from prunelab.compress.executorch_model import executorch_available
    from prunelab.deploy.options import need_executorch

    if conf.executorch is None:
        return target == "edge_cpu" and executorch_available()
    if conf.executorch:
        need_executorch("executorch=true")
    return bool(conf.executorch)


def executorch_variants(conf: Any, run: DeployRun, floats: dict[str, nn.Module],
                        info: dict[str, dict[str, Any]], out: Path) -> dict[str, dict]:
    """The ExecuTorch variants of the float ``dense`` and ``compact`` networks (float, and int8
    when ``conf.quantize``): programs per batch size written as ``model_<name>_b<B>.pte``, float
    ones checked against PyTorch (1e-4), their info added to ``info``; returns ``{name: {batch:
    Lowered}}`` for :func:`time_programs`. A variant that cannot be exported, lowered or checked
    is a one-line DeployError with ``executorch=true``, else skipped with the reason (in
    ``info`` and on stderr)."""
    from prunelab.compress.executorch_model import set_threads

    set_threads(conf.threads)
    calib = calibration_batches(run, conf.calibration_batches) if conf.quantize else None
    programs: dict[str, dict] = {}
    for name, (of, int8) in ET_VARIANTS.items():
        if of not in floats or (int8 and calib is None):
            continue
        net = floats[of]
        try:
            progs, extra = executorch_programs(net, run.input_shape, conf.batch_sizes,
                                               calib if int8 else None)
            diff = check_programs(net, progs, run.input_shape, None if int8 else 1e-4)
        except Exception as exc:  # noqa: BLE001 - export, lowering or check: said in one line
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            if conf.executorch:  # asked for: the command fails in one line
                raise DeployError(f"executorch=true: {name} cannot run on ExecuTorch: "
                                  f"{reason}") from None
            info[name] = {"skipped": reason}  # on by default (edge_cpu): the rest is measured
            print(f"prunelab: warning: no {name} variant: {reason}", file=sys.stderr)
            continue
        files = {b: atomic_write(out / f"model_{name}_b{b}.pte",
                                 functools.partial(_write, p.buffer)) for b, p in progs.items()}
        first = min(files)  # the size column: the program at the smallest batch (weights dominate)
        info[name] = {"file": files[first].name, "bytes": files[first].stat().st_size, "of": of,
                      "macs": info[of]["macs"], "runtime": "executorch",
                      "programs": {f"batch_{b}": f.name for b, f in files.items()},
                      "max_abs_diff": diff, **extra}
        programs[name] = progs
    return programs


def executorch_accuracy(programs: dict[str, dict], loader: Any, max_batches: int | None
                        ) -> dict[str, float]:
    """Test accuracy of each ExecuTorch variant (its program at the largest batch size)."""
    from prunelab.compress.executorch_model import ExecuTorchModule
    from prunelab.metrics.accuracy import accuracy

    out = {}
    for name, progs in programs.items():
        b = max(progs)
        out[name] = accuracy(ExecuTorchModule(progs[b].buffer, b), loader, max_batches)
    return out


__all__ = ["ET_VARIANTS", "check_programs", "executorch_accuracy", "executorch_programs",
           "executorch_variants", "export_executorch", "print_executorch", "time_programs",
           "wants_executorch"]
