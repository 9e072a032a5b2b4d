"""The variants of a run that ``measure`` compares, each written as the file it would ship as.

- ``dense``: the pruned network as trained (zeros stored, dense kernels): ``model_dense.pt``;
  its weights in the bitmask encoding are ``model_sparse.pt``;
- ``sparse``: Linear layers through the CSR kernel where measured faster (CPU); where no layer
  is, the variant is the dense model itself: recorded as ``same_as: dense`` with its CSR
  timings, and neither timed again nor given a speedup or a MACs reduction;
- ``compact``: dead channels removed, ``model_compact.pt`` (:func:`~prunelab.compress.compact.
  save_compact`: loaded back by :func:`~prunelab.compress.compact.load_compact`);
- ``int8`` / ``int8_qat``: int8 of the compact (else the dense) network: its ONNX export quantized
  by onnxruntime and run there (CPU): ``model_int8.onnx``, and ``model_int8_sparse.pt`` (the same
  model with its int8 weights as bitmask + non-zeros); the size reported is the smaller file's;
- ``bf16`` / ``fp16`` and ``2to4`` on a GPU profile.

Each function adds to ``models`` (name -> network) and ``info`` (name -> what is recorded).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.deploy.loading import DeployRun, calibration_batches, model_meta
from prunelab.deploy.options import DeployError
from prunelab.files import atomic_write, save_torch_atomic

Models = dict[str, nn.Module]
Info = dict[str, dict[str, Any]]


def file_size(obj: Any, path: Path) -> int:
    """Write ``obj`` with ``torch.save`` to ``path``; its size in bytes."""
    save_torch_atomic(obj, path)
    return path.stat().st_size


def float_variants(conf: Any, run: DeployRun, out: Path, gpu: bool) -> tuple[Models, Info,
                                                                               nn.Module]:
    """``dense``, ``sparse`` (CSR, CPU only) and ``compact`` (when channels can go): the models,
    their info and the network the other variants are made of (compact if it exists)."""
    from prunelab.compress.compact import compact, save_compact
    from prunelab.compress.sparse import sparsify
    from prunelab.graph import GraphError
    from prunelab.metrics import (
        count_macs,
        save_dense_state_dict,
        save_sparse_state_dict,
    )

    macs = count_macs(run.net, run.input_shape)
    models: Models = {"dense": copy.deepcopy(run.net).cuda() if gpu else run.net}
    # the one dense size: the same file and bytes as train's results.json (metrics.disk)
    info: Info = {"dense": {"file": "model_dense.pt", "macs": macs["dense"],
                            "bytes": save_dense_state_dict(run.net, out / "model_dense.pt")}}
    save_sparse_state_dict(run.net.state_dict(), out / "model_sparse.pt")
    info["dense"]["sparse_file_bytes"] = (out / "model_sparse.pt").stat().st_size
    if conf.sparse and not gpu:
        sp, sparse = sparsify(copy.deepcopy(run.net), batch_sizes=conf.batch_sizes,
                              threads=conf.threads, force=conf.sparse_layers == "all",
                              input_shape=run.input_shape, runs=conf.runs, warmup=conf.warmup,
                              rounds=conf.rounds)
        on_csr = {c.name for c in sparse.layers if c.sparse}
        if on_csr:  # executed: the CSR layers' non-zero MACs, every other layer's dense ones
            models["sparse"] = sp
            executed = sum(v["effective" if n in on_csr else "dense"]
                           for n, v in macs["per_layer"].items())
            info["sparse"] = {"file": "model_sparse.pt", "macs": executed,
                              "bytes": info["dense"]["sparse_file_bytes"], **sparse.as_dict()}
        elif sparse.layers:  # CSR on no layer: the dense model itself, not timed again
            info["sparse"] = {"same_as": "dense", **sparse.as_dict()}
    try:
        small, report = compact(run.net, run.input_shape)
    except GraphError as exc:  # not traceable, or not understood: the other variants still run
        info["compact"] = {"skipped": str(exc)}
        print(f"prunelab: no compact variant: {exc}", file=sys.stderr)
        return models, info, run.net
    if report.params_after >= report.params_before:
        return models, info, run.net
    models["compact"] = copy.deepcopy(small).cuda() if gpu else small
    path = save_compact(small, out / "model_compact.pt", **model_meta(run))
    info["compact"] = {"file": path.name, "bytes": path.stat().st_size,
                       "macs": count_macs(small, run.input_shape)["dense"],
                       "compaction": report.as_dict()}
    return models, info, small


def int8_variants(conf: Any, run: DeployRun, base: nn.Module, models: Models, info: Info,
                  out: Path) -> None:
    """``int8`` (post-training) and, with ``qat_epochs``, ``int8_qat`` of ``base``: ONNX models
    quantized by onnxruntime and run there (CPU, ``conf.threads``)."""
    from prunelab.compress.quantize import qat_int8, quantize_int8
    from prunelab.data.loader import iter_batches

    of = "compact" if base is not run.net else "dense"
    if not (conf.quantize or conf.qat_epochs):
        return
    calib = calibration_batches(run, conf.calibration_batches)
    if conf.quantize:
        q, mode = quantize_int8(base, run.input_shape, calib, threads=conf.threads)
        models["int8"] = q
        info["int8"] = {"mode": mode, "of": of, **int8_files(q, out, "model_int8")}
    if conf.qat_epochs:
        batches = [b for _, b in zip(range(conf.qat_batches or 10**9),
                                     iter_batches(run.dm.train_dataloader()))]
        q = qat_int8(base, run.input_shape, batches, epochs=int(conf.qat_epochs), lr=conf.qat_lr,
                     calibration=calib, threads=conf.threads)
        models["int8_qat"] = q
        info["int8_qat"] = {"mode": "qat", "of": of, "qat_epochs": int(conf.qat_epochs),
                            **int8_files(q, out, "model_int8_qat")}


def int8_files(q: Any, out: Path, stem: str) -> dict[str, Any]:
    """An int8 model written as ``<stem>.onnx`` (runnable) and ``<stem>_sparse.pt`` (its int8
    weights as bitmask + non-zeros), with its int8 zeros counted. ``file`` and ``bytes``: the
    smaller of the two (the sparse file, unless too few weights are zero to pay for it)."""
    from prunelab.compress.quantize import count_int8_zeros, save_int8_sparse

    onnx_path = atomic_write(out / f"{stem}.onnx", lambda p: p.write_bytes(q.onnx_bytes))
    onnx_bytes = onnx_path.stat().st_size
    sparse_bytes = save_int8_sparse(q, out / f"{stem}_sparse.pt")
    smaller = ((f"{stem}_sparse.pt", sparse_bytes) if sparse_bytes < onnx_bytes
               else (onnx_path.name, onnx_bytes))
    return {"file": smaller[0], "bytes": smaller[1], "onnx_file": onnx_path.name,
            "onnx_bytes": onnx_bytes, "sparse_file_bytes": sparse_bytes,
            "runtime": "onnxruntime", "int8_zeros": count_int8_zeros(q)}


def gpu_variants(conf: Any, run: DeployRun, base: nn.Module, target: str, models: Models,
                 info: Info, out: Path) -> None:
    """The half-precision model of a GPU target and, for ``gpu_2to4``, its 2:4 semi-structured
    version (the layers left dense are listed with the reason)."""
    from prunelab.compress.semi_structured import to_semi_structured

    of = "compact" if base is not run.net else "dense"
    half_name, dtype = ("fp16", torch.float16) if target == "gpu_2to4" else ("bf16", torch.bfloat16)
    half = copy.deepcopy(base).to("cuda", dtype).eval()
    models[half_name] = half
    info[half_name] = {"file": f"model_{half_name}.pt", "of": of, "macs": info[of]["macs"],
                       "bytes": file_size(half.state_dict(), out / f"model_{half_name}.pt")}
    if target != "gpu_2to4" or not conf.sparse:
        return
    example = torch.randn(64, *run.input_shape, generator=torch.Generator().manual_seed(0))
    measured = conf.sparse_layers == "measured"
    try:
        sparse, report = to_semi_structured(base, example, dtype=dtype,
                                            batch_sizes=conf.batch_sizes if measured else None,
                                            runs=conf.runs, warmup=conf.warmup, rounds=conf.rounds)
    except RuntimeError as exc:
        raise DeployError(str(exc).splitlines()[0]) from None
    if not report.converted:
        print(f"prunelab: warning: hardware=gpu_2to4 but no Linear layer runs as 2:4 "
              f"({'; '.join(f'{k}: {v}' for k, v in report.skipped.items())})", file=sys.stderr)
        info[half_name]["semi_structured_skipped"] = report.skipped
        info[half_name]["semi_structured_timings"] = report.timings
        return
    models["2to4"] = sparse
    info["2to4"] = {"file": "model_2to4.pt", "of": half_name, "macs": info[of]["macs"],
                    "bytes": file_size(sparse.state_dict(), out / "model_2to4.pt"),
                    "converted": report.converted, "skipped": report.skipped,
                    "timings": report.timings, "max_abs_diff": report.max_abs_diff}
