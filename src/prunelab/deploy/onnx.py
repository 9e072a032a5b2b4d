"""ONNX: export a network, load it in onnxruntime, check it against PyTorch and time it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.deploy.options import DeployError
from prunelab.metrics.timing import time_in_turn


def export_onnx(net: nn.Module, input_shape: Sequence[int], path: Any) -> None:
    """``net`` as ONNX (opset 17, dynamic batch) to ``path`` (a file name or a binary buffer)."""
    import warnings

    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), path, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"},
                                                                 "logits": {0: "batch"}},
                          opset_version=17)


def quantize_onnx_int8(src: Any, dst: Any) -> None:
    """onnxruntime's dynamic int8 quantization of the ONNX file ``src`` into ``dst``."""
    import logging
    import warnings

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's advice to pre-process first
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def ort_session(model: Any, threads: int | None):
    """An onnxruntime CPU session of ``model`` (a file name or the ONNX bytes) whose idle
    worker threads do not spin (they would take the cores from whatever runs next)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def time_sessions(sessions: dict[str, Any], input_shape: Sequence[int], batch_sizes: Sequence[int],
                  runs: int, warmup: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median latency (ms) of onnxruntime sessions per batch size, timed in turn (A B A B ...)
    like :func:`~prunelab.metrics.timing.time_alternating`."""
    out: dict[str, dict[str, float]] = {k: {} for k in sessions}
    for b in batch_sizes:
        feed = {"input": torch.randn(int(b), *input_shape,
                                     generator=torch.Generator().manual_seed(b)).numpy()}
        calls = {k: functools.partial(sess.run, None, feed) for k, sess in sessions.items()}
        for k, ms in time_in_turn(calls, runs, warmup, rounds).items():
            out[k][f"batch_{b}"] = ms
    return out


def onnx_sessions(models: dict[str, nn.Module], input_shape: Sequence[int], threads: int | None,
                  atol: float = 1e-4) -> tuple[dict[str, Any], dict[str, float]]:
    """Each model exported to ONNX and loaded in onnxruntime, its outputs checked against
    PyTorch on a random batch (max |diff| above ``atol`` is a DeployError): the sessions and
    the differences."""
    import io

    sessions, diffs = {}, {}
    x = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(1))
    for k, m in models.items():
        buf = io.BytesIO()
        export_onnx(m, input_shape, buf)
        sessions[k] = ort_session(buf.getvalue(), threads)
        with torch.inference_mode():
            ref = m(x).numpy()
        diffs[k] = float(abs(sessions[k].run(None, {"input": x.numpy()})[0] - ref).max())
        if diffs[k] > atol:
            raise DeployError(f"the ONNX export of {k} differs from PyTorch by {diffs[k]:.2e} "
                              f"(more than {atol:g}); measure without it: onnx=false")
    return sessions, diffs


def onnxruntime_latency(models: dict[str, nn.Module], input_shape: Sequence[int],
                        batch_sizes: Sequence[int], runs: int, warmup: int, rounds: int,
                        threads: int | None, atol: float = 1e-4) -> dict[str, dict[str, Any]]:
    """:func:`onnx_sessions` of the models, timed on onnxruntime in turn: ``{name:
    {"latency_ms", "max_abs_diff"}}``."""
    sessions, diffs = onnx_sessions(models, input_shape, threads, atol)
    lat = time_sessions(sessions, input_shape, batch_sizes, runs, warmup, rounds)
    return {k: {"latency_ms": lat[k], "max_abs_diff": diffs[k]} for k in models}
