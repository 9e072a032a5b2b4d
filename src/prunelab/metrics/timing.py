"""Inference latency: one model over batch sizes, or several timed in turn (A B A B ...).

Timings taken while other work shares the cores are not latencies: :func:`timing_noise` tells
them apart (a median far above the fastest run, a wide interquartile range), :func:`measure_latency`
re-measures such a batch size in more rounds and marks a figure that stays disturbed
(``"noisy": true`` and a ``prunelab: warning:`` line on stderr), and :func:`time_alternating`
lists its disturbed medians in its result's ``noisy`` (so that a choice made on them can be
re-timed or refused: :func:`retime_noisy`)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Timings", "machine_load", "measure_latency", "placement", "retime_noisy",
           "time_alternating", "time_in_turn", "timing_noise", "warn_noisy"]

#: A timing whose median is more than this many times its fastest run was disturbed (a clean
#: CPU timing of one forward pass varies by tens of percent, not by a factor).
NOISY_MEDIAN_OVER_MIN = 3.0
#: ... or whose interquartile range is more than this fraction of its median (8+ runs).
NOISY_IQR_OVER_MEDIAN = 0.5
#: Spreads smaller than this (ms) are the timer's and the interpreter's jitter on a very fast
#: call (a few microseconds), not other work.
NOISY_FLOOR_MS = 0.05


def timing_noise(samples_ms: Sequence[float]) -> str | None:
    """Why run times (ms) look disturbed by other work, or None when they look clean.

    Two signs, either suffices: the median above ``NOISY_MEDIAN_OVER_MIN`` times the fastest run
    (3 runs or more), and the interquartile range above ``NOISY_IQR_OVER_MEDIAN`` of the median
    (8 runs or more); spreads under ``NOISY_FLOOR_MS`` are timer jitter, never noise. Fewer
    than 3 runs are not judged."""
    x = np.sort(np.asarray(list(samples_ms), dtype=float))
    if x.size < 3:
        return None
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    fastest = float(x[0])
    reasons = []
    if q50 > NOISY_MEDIAN_OVER_MIN * max(fastest, 1e-9) and q50 - fastest > NOISY_FLOOR_MS:
        reasons.append(f"median {q50:.3g} ms is {q50 / max(fastest, 1e-9):.1f}x the fastest run "
                       f"({fastest:.3g} ms)")
    if x.size >= 8 and q75 - q25 > max(NOISY_IQR_OVER_MEDIAN * q50, NOISY_FLOOR_MS):
        reasons.append(f"IQR {q75 - q25:.3g} ms is {(q75 - q25) / q50:.0%} of the median "
                       f"{q50:.3g} ms")
    return "; ".join(reasons) or None


def machine_load() -> str:
    """The 1-minute load average against the cores (recorded beside noisy figures)."""
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover - no load average on this platform
        load = "unknown"
    return f"load average {load} on {os.cpu_count() or 1} cores"


def warn_noisy(what: str, reason: str, outcome: str) -> None:
    """One ``prunelab: warning:`` line on stderr about a disturbed timing."""
    print(f"prunelab: warning: {what}: timings disturbed by other work ({reason}; "
          f"{machine_load()}): {outcome}", file=sys.stderr)


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
    max_rounds: int = 3,
) -> dict[str, dict[str, Any]]:
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

    A round of runs that :func:`timing_noise` finds disturbed is measured again, up to
    ``max_rounds`` rounds; the first clean round is reported, else the round with the lowest
    median, marked ``"noisy": true`` (with the reason and the machine's load) and warned about
    on stderr.

    Returns:
        ``{"batch_<bs>": {"median_ms", "iqr_ms", "mean_ms", "min_ms", "runs", "rounds",
        "noisy"}}`` (``runs``: of the reported round; a noisy one also has ``noise``, ``load``)
    """
    if min_runs < 1:
        raise ValueError(f"min_runs must be >= 1, got {min_runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
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
                best: dict[str, Any] | None = None
                for rounds in range(1, int(max_rounds) + 1):
                    ms = np.asarray(_one_round(model, x, device, min_runs, max_runs,
                                               max_time_s)) * 1e3
                    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
                    noise = timing_noise(ms)
                    stats = {"median_ms": float(q50), "iqr_ms": float(q75 - q25),
                             "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
                             "runs": int(ms.size), "noisy": noise is not None}
                    if noise is not None:
                        stats.update(noise=noise, load=machine_load())
                    if best is None or noise is None or stats["median_ms"] < best["median_ms"]:
                        best = stats
                    if noise is None:
                        break
                assert best is not None
                best["rounds"] = rounds
                if best["noisy"]:
                    warn_noisy(f"latency at batch {int(batch_size)}", best["noise"],
                               f"still so after {rounds} rounds; the figure is marked "
                               f"\"noisy\": true")
                results[f"batch_{int(batch_size)}"] = best
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)
        for module, training in modes.items():
            module.training = training
    return results


def _one_round(model: nn.Module, x: torch.Tensor, device: torch.device, min_runs: int,
               max_runs: int, max_time_s: float) -> list[float]:
    """Seconds of each timed run: at least ``min_runs``, more while under ``max_time_s``."""
    times: list[float] = []
    spent = 0.0
    while len(times) < min_runs or (len(times) < max_runs and spent < max_time_s):
        start = time.perf_counter()
        model(x)
        _sync(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
    return times


def placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a model's first floating parameter (CPU float32 if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def time_in_turn(calls: Mapping[Any, Callable[[], Any]], runs: int, warmup: int,
                 rounds: int, samples: dict[Any, list[float]] | None = None) -> dict[Any, float]:
    """Median milliseconds of each call: ``warmup`` untimed calls each, then the calls timed in
    turn (A B C A B C ...), ``runs`` at a time, for ``rounds`` rounds. ``samples``: filled with
    every call's run times (ms) when given."""
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
    if samples is not None:
        samples.update({k: [1e3 * t for t in v] for k, v in times.items()})
    return {k: 1e3 * median(v) for k, v in times.items()}


class Timings(dict):
    """:func:`time_alternating`'s result, ``{key: {"batch_<b>": median ms}}``, with ``noisy``:
    ``{key: {"batch_<b>": reason}}`` for the medians :func:`timing_noise` found disturbed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.noisy: dict[Any, dict[str, str]] = {}


def time_alternating(models: Mapping[Any, nn.Module], input_shape: Sequence[int],
                     batch_sizes: Sequence[int], runs: int, warmup: int, rounds: int,
                     threads: int | None) -> Timings:
    """Median latency (ms) per model and batch size, the models timed in turn (A B C A B C ...)
    for ``rounds`` rounds of ``runs`` runs after ``warmup`` runs each; the disturbed medians
    are listed in the result's ``noisy`` (:class:`Timings`).

    Each model gets the input on the device and in the floating dtype of its first parameter;
    CUDA is synchronized after every run, so a run's time includes its kernels. Denormal floats
    are flushed to zero while timing (``torch.set_flush_denormal``, on CPUs that support it): a
    trained, pruned network can carry denormal activations that make the CPU's slow path take
    10x longer (measured: a structured-pruned mobilenet_v2, 370 ms vs 66 ms per forward), a
    cost of the arithmetic, not of the network, that deployment builds turn off."""
    def forward(m: nn.Module, x: torch.Tensor) -> Callable[[], None]:
        def call() -> None:
            m(x)
            _sync(x.device)
        return call

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    out = Timings({k: {} for k in models})
    flushed = torch.set_flush_denormal(True)
    try:
        with torch.inference_mode():
            for b in batch_sizes:
                x = torch.randn(int(b), *input_shape, generator=torch.Generator().manual_seed(b))
                calls = {k: forward(m.eval(), x.to(*placement(m))) for k, m in models.items()}
                samples: dict[Any, list[float]] = {}
                for k, ms in time_in_turn(calls, runs, warmup, rounds, samples).items():
                    out[k][f"batch_{b}"] = ms
                    noise = timing_noise(samples[k])
                    if noise is not None:
                        out.noisy.setdefault(k, {})[f"batch_{b}"] = noise
    finally:
        torch.set_num_threads(previous)
        if flushed:
            torch.set_flush_denormal(False)
    return out


def retime_noisy(timer: Callable[..., Mapping[Any, dict[str, float]]],
                 models: Mapping[Any, nn.Module], input_shape: Sequence[int],
                 batch_sizes: Sequence[int], runs: int, warmup: int, rounds: int,
                 threads: int | None) -> Timings:
    """``timer(models, input_shape, batch_sizes, runs, warmup, rounds, threads)`` (
    :func:`time_alternating`, or a stand-in), with the batch sizes that came back disturbed
    timed once more in twice the rounds (at least 3). The result's ``noisy`` lists what is still
    disturbed then: a choice between the models at those batch sizes rests on noise."""
    first = timer(models, input_shape, batch_sizes, runs, warmup, rounds, threads)
    out = Timings({k: dict(v) for k, v in first.items()})
    out.noisy = {k: dict(v) for k, v in getattr(first, "noisy", {}).items()}
    again = sorted({int(b.removeprefix("batch_")) for v in out.noisy.values() for b in v})
    if again:
        second = timer(models, input_shape, again, runs, warmup, max(3, 2 * int(rounds)), threads)
        still = getattr(second, "noisy", {})
        for k in out:
            out[k].update(second[k])
            out.noisy[k] = {b: r for b, r in (still.get(k) or {}).items()}
        out.noisy = {k: v for k, v in out.noisy.items() if v}
    return out
