"""The latency objective: a channel policy's compacted network timed in the hardware profile's
runtime (``eager``, ``executorch`` or ``onnxruntime``), threads and first batch size.

Each policy is measured, not predicted: ``pruner=latency_aware``'s additive per-layer table
(each layer's saving measured with the others whole, summed) over-predicts what narrowing two
chained layers saves, since a layer's cost depends on both its input and output widths (seed_cnn
on ExecuTorch, every unit at half width: 0.026 ms predicted, 0.078 ms measured). A policy is
timed in turn with the unpruned network and reported as the unpruned latency measured at the
start times their ratio, so that a machine that slows down or speeds up during a long search
does not move the numbers; widths already timed are not timed again. Weights do not matter for
latency, shapes do: the trained network is narrowed by keeping each unit's first channels.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from prunelab.policy_search.space import Space


class PolicyLatency:
    """Latency of ``net`` under channel policies of ``space`` at ``batch`` and ``threads``."""

    def __init__(self, net: Any, space: Space, runtime: str, batch: int, threads: int | None,
                 runs: int = 30):
        from prunelab.graph import channel_groups
        from prunelab.pruning.methods.channels import output_weights
        from prunelab.pruning.methods.latency_aware import LatencyModel, _candidates, _weights

        shape = tuple(net.input_shape)
        groups = channel_groups(net, shape)
        prunable = [w for ws in space.weights.values() for w in ws]
        protected = sorted(output_weights(net, dict(net.named_parameters())))
        self.index: dict[str, int] = {}
        for gi in _candidates(groups, prunable, protected):
            for n in space.names:
                if n in _weights(groups[gi]):
                    self.index[n] = gi
        self.sizes = {n: groups[gi].size for n, gi in self.index.items()}
        self.key = {"runtime": runtime, "batch": int(batch), "threads": threads}
        self.lat = LatencyModel(net, shape, groups, batch, threads, runs, runtime)
        self.full_model = self.lat.build({})
        self.full_ms = self.floor_ms = float("nan")
        self._cache: dict[tuple[int, ...], float] = {}
        self._lock = threading.Lock()  # trials of n_jobs threads time one at a time

    def width(self, name: str, ratio: float) -> int:
        """Channels a unit keeps (as ``pruner=sensitivity`` with a structured profile keeps)."""
        size = self.sizes[name]
        return size - min(size - 1, int(round(ratio * size)))

    def keeps(self, ratios: Mapping[str, float]) -> dict[int, torch.Tensor]:
        out = {}
        for n, gi in self.index.items():
            keep = torch.zeros(self.sizes[n], dtype=torch.bool)
            keep[:self.width(n, ratios.get(n, 0.0))] = True
            out[gi] = keep
        return out

    def calibrate(self) -> None:
        """The unpruned latency and the floor (every unit at one channel), timed in turn."""
        floor = self.lat.build(self.keeps({n: 1.0 for n in self.index}))
        self.full_ms, self.floor_ms = self.lat.time(self.full_model, floor, rounds=5)

    def policy_ms(self, ratios: Mapping[str, float]) -> float:
        """The policy's latency: timed in turn with the unpruned network, scaled to
        :attr:`full_ms` (see the module docstring)."""
        widths = tuple(self.width(n, ratios.get(n, 0.0)) for n in self.index)
        with self._lock:
            if widths not in self._cache:
                full, mine = self.lat.time(self.full_model, self.lat.build(self.keeps(ratios)))
                self._cache[widths] = self.full_ms * mine / full
            return self._cache[widths]

    def measure(self, policies: Sequence[Mapping[str, float]], rounds: int = 5) -> list[float]:
        """Each policy's compacted network timed for real, all in turn (A B C A B C ...)."""
        return self.lat.time(*[self.lat.build(self.keeps(r)) for r in policies], rounds=rounds)
