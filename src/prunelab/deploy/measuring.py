"""``measure``: the variants of a run built, then timed side by side, in alternating order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prunelab.deploy.executorch import wants_executorch
from prunelab.deploy.loading import load
from prunelab.deploy.memory_format import choose_memory_format
from prunelab.deploy.onnx import onnx_sessions, time_sessions
from prunelab.deploy.options import GPU_TARGETS, apply_profile, check_measure_options
from prunelab.deploy.tables import print_table
from prunelab.deploy.variants import float_variants, gpu_variants, int8_variants
from prunelab.files import write_json_atomic
from prunelab.metrics.accuracy import accuracy
from prunelab.metrics.timing import retime_noisy, time_alternating, warn_noisy


def measure_run(conf: Any, hardware_name: str | None = None) -> dict[str, Any]:
    """Build the variants of ``conf.run`` and measure them side by side (see
    :mod:`prunelab.deploy`): latency, test accuracy, size on disk, MACs. Writes the variants'
    files and ``measure.json`` to ``conf.out`` (default ``<run>/deploy``), prints the table and
    returns the result. ``hardware_name``: the profile's name when ``conf.hardware`` is the
    profile itself. Every option is checked before the run is loaded."""
    target = apply_profile(conf, hardware_name)
    name = hardware_name or (conf.hardware if isinstance(conf.hardware, str) else target)
    check_measure_options(conf, target, name)
    gpu = target in GPU_TARGETS
    run = load(conf.run, conf.checkpoint)
    out = Path(conf.out) if conf.out else run.run_dir / "deploy"
    out.mkdir(parents=True, exist_ok=True)
    run.dm.setup("fit")
    run.dm.setup("test")
    models, info, base = float_variants(conf, run, out, gpu)
    if gpu:
        gpu_variants(conf, run, base, target, models, info, out)
    else:
        int8_variants(conf, run, base, models, info, out)
    floats = {k: models[k] for k in ("dense", "compact") if k in models}
    if conf.onnx:  # exported and checked first, so a bad export fails before the long timing
        sessions, diffs = onnx_sessions(floats, run.input_shape, conf.threads)
    et_programs = {}
    if not gpu and wants_executorch(conf, target):  # lowered before the memory format is chosen
        from prunelab.deploy.executorch import executorch_variants

        et_programs = executorch_variants(conf, run, floats, info, out)
    if not gpu:
        choose_memory_format(conf, models, info, run.input_shape)
    latency = retime_noisy(time_alternating, models, run.input_shape, conf.batch_sizes, conf.runs,
                           conf.warmup, conf.rounds, None if gpu else conf.threads)
    for k, reasons in latency.noisy.items():  # still disturbed after a second timing: marked
        info[k]["latency_noisy"] = reasons
        warn_noisy(f"latency of {k}", "; ".join(f"{b}: {r}" for b, r in reasons.items()),
                   "marked in measure.json (latency_noisy)")
    if conf.onnx:  # timed after PyTorch (the sessions' worker threads do not spin when idle)
        ort_lat = time_sessions(sessions, run.input_shape, conf.batch_sizes, conf.runs,
                                conf.warmup, conf.rounds)
        for k in sessions:
            info[k]["onnxruntime_latency_ms"] = ort_lat[k]
            info[k]["onnxruntime_max_abs_diff"] = diffs[k]
    loader = run.dm.test_dataloader()
    for k, m in models.items():
        info[k]["latency_ms"] = latency[k]
        info[k]["test_acc"] = accuracy(m, loader, conf.eval_batches)
    if et_programs:  # timed in ExecuTorch's runtime after PyTorch, in turn with each other
        from prunelab.deploy.executorch import executorch_accuracy, time_programs

        et_lat = time_programs(et_programs, run.input_shape, conf.runs, conf.warmup, conf.rounds)
        for k, acc in executorch_accuracy(et_programs, loader, conf.eval_batches).items():
            info[k].update(latency_ms=et_lat[k], test_acc=acc)
    _ratios(info)
    result = {"run": str(run.run_dir), "checkpoint": str(run.ckpt),
              "threads": None if gpu else conf.threads or torch.get_num_threads(),
              "target": target, "device": torch.cuda.get_device_name() if gpu else "cpu",
              "batch_sizes": list(conf.batch_sizes), "runs": conf.runs, "rounds": conf.rounds,
              "variants": info, "model": run.results.get("model"),
              "pruner": run.results.get("pruner"),
              "sparsity": run.results.get("sparsity", {}).get("global")}
    write_json_atomic(out / "measure.json", result)
    print_table(result)
    print(f"wrote {out / 'measure.json'}")
    return result


def _ratios(info: dict[str, dict[str, Any]]) -> None:
    """Each variant's speedup, size ratio and MACs reduction against ``dense`` (none for a
    variant that is the dense model itself, ``same_as``); a variant that runs on onnxruntime
    (int8) also gets its speedup against dense on onnxruntime where that was timed, and an
    ExecuTorch variant its speedup against ``et_dense`` (the same runtime)."""
    dense = info["dense"]
    for v in info.values():
        if "same_as" in v or "skipped" in v:
            continue
        v["speedup"] = {b: dense["latency_ms"][b] / v["latency_ms"][b] for b in v["latency_ms"]}
        ort = v.get("onnxruntime_latency_ms") or (v["latency_ms"] if v.get("runtime") ==
                                                  "onnxruntime" else None)
        if ort is not None and "onnxruntime_latency_ms" in dense:
            v["onnxruntime_speedup"] = {b: dense["onnxruntime_latency_ms"][b] / t
                                        for b, t in ort.items()}
        if v.get("runtime") == "executorch" and "et_dense" in info:
            v["executorch_speedup"] = {b: info["et_dense"]["latency_ms"][b] / t
                                       for b, t in v["latency_ms"].items()}
        v["size_ratio"] = dense["bytes"] / v["bytes"]
        if "macs" in v:
            v["macs_reduction"] = dense["macs"] / max(v["macs"], 1)
