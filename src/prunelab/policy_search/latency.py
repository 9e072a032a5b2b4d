"""The latency objective: a channel policy's latency on a hardware profile and runtime, predicted
from a per-layer table measured once (``pruner=latency_aware``'s table, timed in ``eager``,
``executorch`` or ``onnxruntime``) and cached in the search directory; chosen policies measured
for real (the compacted network, timed in turn with the others)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
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
        self.key = {"runtime": runtime, "batch": int(batch), "threads": threads,
                    "model": type(net).__name__, "units": self.sizes}
        self.lat = LatencyModel(net, shape, groups, batch, threads, runs, runtime)
        self.table: dict[str, list[list[float]]] = {}
        self.full_ms = self.floor_ms = float("nan")

    def width(self, name: str, ratio: float) -> int:
        size = self.sizes[name]
        return size - min(size - 1, int(round(ratio * size)))

    def keeps(self, ratios: Mapping[str, float]) -> dict[int, torch.Tensor]:
        out = {}
        for n, gi in self.index.items():
            keep = torch.zeros(self.sizes[n], dtype=torch.bool)
            keep[:self.width(n, ratios.get(n, 0.0))] = True
            out[gi] = keep
        return out

    def build(self, cache: Path) -> None:
        """The table: read from ``cache`` when it was measured for the same key, else measured
        (whole model, one-channel floor, every unit at 7/8 ... 1/8; :meth:`save` writes it)."""
        from prunelab.pruning.methods.latency_aware import saving_table

        if cache.is_file():
            data = json.loads(cache.read_text())
            if data.get("key") == self.key:
                self.full_ms, self.floor_ms, self.table = data["full_ms"], data["floor_ms"], data["table"]
                return
        full_model = self.lat.build({})
        self.full_ms = self.lat.time(full_model)[0]
        self.floor_ms = self.lat.measure(self.keeps({n: 1.0 for n in self.index}))
        start = {gi: torch.ones(self.sizes[n], dtype=torch.bool) for n, gi in self.index.items()}

        def first(gi: int, w: int) -> torch.Tensor:
            keep = torch.zeros_like(start[gi])
            keep[:w] = True
            return keep

        table = saving_table(self.lat, full_model, list(self.index.values()), start, first)
        names = {gi: n for n, gi in self.index.items()}
        self.table = {names[gi]: [list(p) for p in pts] for gi, pts in table.items()}

    def save(self, cache: Path) -> None:
        from prunelab.files import write_json_atomic

        write_json_atomic(cache, {"key": self.key, "full_ms": self.full_ms,
                                  "floor_ms": self.floor_ms, "table": self.table})

    def predict(self, ratios: Mapping[str, float]) -> float:
        from prunelab.pruning.methods.latency_aware import interpolate_saving

        saved = sum(interpolate_saving(self.table[n], self.width(n, ratios.get(n, 0.0)))
                    for n in self.index)
        return max(self.full_ms - saved, 0.0)

    def measure(self, policies: Sequence[Mapping[str, float]], rounds: int = 5) -> list[float]:
        """Each policy's compacted network timed for real, all in turn (A B C A B C ...)."""
        return self.lat.time(*[self.lat.build(self.keeps(r)) for r in policies], rounds=rounds)
