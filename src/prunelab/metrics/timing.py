"""Inference latency: one model over batch sizes, or several timed in turn (A B A B ...)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["measure_latency", "placement", "time_alternating", "time_in_turn"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    warmup: int = 10,
    min_runs: int = 50,
    max_runs: int = 200,
    max_time_s: float = 2.0,
) -> dict[str, dict[str, float | int]]:
    """Wall-clock forward latency for each batch size.

    The model runs in eval mode under :func:`torch.inference_mode` on the
    device of its parameters, on a fixed random input.  For each batch size:
    ``warmup`` untimed runs, then at least ``min_runs`` timed runs
    (``time.perf_counter``, CUDA synchronised).  More runs, up to ``max_runs``,
    are taken only while the batch size's timed runs have used less than
    ``max_time_s`` seconds, which bounds the cost for big models without ever
    going below ``min_runs``.  ``torch.set_num_threads(threads)`` is applied
    when ``threads`` is given; the previous thread count and the model's
    train/eval modes are restored afterwards.

    Returns:
        ``{"batch_<bs>": {"median_ms", "iqr_ms", "mean_ms", "min_ms", "runs"}}``
    """
    if min_runs < 1:
        raise ValueError(f"min_runs must be >= 1, got {min_runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    shape = tuple(int(s) for s in input_shape)
    max_runs = max(int(max_runs), int(min_runs))
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    previous_threads = torch.get_num_threads()
    modes = {m: m.training for m in model.modules()}
    results: dict[str, dict[str, float | int]] = {}
    generator = torch.Generator().manual_seed(0)
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        model.eval()
        with torch.inference_mode():
            for batch_size in batch_sizes:
                x = torch.randn(int(batch_size), *shape, generator=generator).to(device, dtype)
                for _ in range(warmup):
                    model(x)
                _sync(device)
                times: list[float] = []
                spent = 0.0
                while len(times) < min_runs or (len(times) < max_runs and spent < max_time_s):
                    start = time.perf_counter()
                    model(x)
                    _sync(device)
                    elapsed = time.perf_counter() - start
                    times.append(elapsed)
                    spent += elapsed
                ms = np.asarray(times) * 1e3
                q25, q50, q75 = np.percentile(ms, [25, 50, 75])
                results[f"batch_{int(batch_size)}"] = {
                    "median_ms": float(q50),
                    "iqr_ms": float(q75 - q25),
                    "mean_ms": float(ms.mean()),
                    "min_ms": float(ms.min()),
                    "runs": len(times),
                }
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)
        for module, training in modes.items():
            module.training = training
    return results


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a model's first floating parameter (CPU float32 if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def time_in_turn(calls: Mapping[Any, Callable[[], Any]], runs: int, warmup: int,
                 rounds: int) -> dict[Any, float]:
    """Median milliseconds of each call: ``warmup`` untimed calls each, then the calls timed in
    turn (A B C A B C ...), ``runs`` at a time, for ``rounds`` rounds."""
    from statistics import median

    times: dict[Any, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        for _ in range(warmup):
            call()
    for _ in range(rounds):
        for k, call in calls.items():
            for _ in range(runs):
                t = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - t)
    return {k: 1e3 * median(v) for k, v in times.items()}


def time_alternating(models: Mapping[Any, nn.Module], input_shape: Sequence[int],
                     batch_sizes: Sequence[int], runs: int, warmup: int, rounds: int,
                     threads: int | None) -> dict[Any, dict[str, float]]:
    """Median latency (ms) per model and batch size, the models timed in turn (A B C A B C ...)
    for ``rounds`` rounds of ``runs`` runs after ``warmup`` runs each.

    Each model gets the input on the device and in the floating dtype of its first parameter;
    CUDA is synchronized after every run, so a run's time includes its kernels."""
    def forward(m: nn.Module, x: torch.Tensor) -> Callable[[], None]:
        def call() -> None:
            m(x)
            _sync(x.device)
        return call

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    out: dict[Any, dict[str, float]] = {k: {} for k in models}
    try:
        with torch.inference_mode():
            for b in batch_sizes:
                x = torch.randn(int(b), *input_shape, generator=torch.Generator().manual_seed(b))
                calls = {k: forward(m.eval(), x.to(*placement(m))) for k, m in models.items()}
                for k, ms in time_in_turn(calls, runs, warmup, rounds).items():
                    out[k][f"batch_{b}"] = ms
    finally:
        torch.set_num_threads(previous)
    return out
