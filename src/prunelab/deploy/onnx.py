"""ONNX: export a network, load it in onnxruntime, check it against PyTorch and time it (the export
and the session are :mod:`prunelab.compress.onnx_model`'s)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.compress.onnx_model import export_onnx, ort_session
from prunelab.deploy.options import DeployError
from prunelab.metrics.timing import time_in_turn


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
    sessions, diffs = {}, {}
    x = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(1))
    for k, m in models.items():
        sessions[k] = ort_session(export_onnx(m, input_shape), threads)
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
