"""Unstructured sparsity on the CPU: Linear layers through a CSR kernel, where that is faster.

A sparse kernel pays off only above some sparsity, layer size and batch size, and where exactly
depends on the CPU, so :func:`sparsify` measures: for every Linear layer it times the dense
``F.linear`` and the CSR product (int32 indices; ``torch.addmv`` for one sample, ``torch.addmm``
with a contiguous ``x^T`` for a batch) on
inputs of the layer's real shape at each batch size asked for, and swaps in :class:`SparseLinear`
only where the sparse one is faster at every batch size. A layer timed alone is not the layer
inside its model, though: a layer can measure faster on CSR alone while the whole model with it
is not (the kernels around it pay for it; BENCHMARKS.md has cases). So when the model's input
shape is given, the whole model is then timed with the chosen layers against the dense one, and
if it is not faster at every batch size, every layer stays dense. Timings disturbed by other
work are timed again; a decision that would still rest on disturbed timings is not made (the
layer, or the model, stays dense, and the reason is recorded). Every decision and timing is
returned.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunelab.metrics.timing import retime_noisy, time_alternating, warn_noisy


def _csr32(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch's two notices about sparse tensors (beta; invariant checks off), nothing else
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        warnings.filterwarnings("ignore", "Sparse invariant checks are implicitly disabled",
                                UserWarning)
        csr = weight.detach().to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32),
                                       csr.col_indices().to(torch.int32), csr.values(),
                                       csr.shape)


class SparseLinear(nn.Module):
    """``nn.Linear`` with its weight stored as a CSR matrix (only the non-zeros)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", _csr32(linear.weight))
        bias = (linear.bias.detach().clone() if linear.bias is not None
                else torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                 device=linear.weight.device))
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the buffers are read from ``_buffers`` directly: ``self.weight`` goes through
        # ``nn.Module.__getattr__``, whose cost is a large share of a batch-1 CSR product
        # (BENCHMARKS.md)
        buffers = self._buffers
        weight, bias = buffers["weight"], buffers["bias"]
        if x.dim() == 1:
            return torch.addmv(bias, weight, x)
        if x.dim() == 2 and x.shape[0] == 1:
            # one sample: the CSR matrix-vector product (much faster than addmm with a
            # one-column matrix; BENCHMARKS.md), with as few tensor ops around it as possible:
            # each costs a fixed overhead comparable to a small product
            return torch.addmv(bias, weight, x.view(-1)).view(1, -1)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = torch.addmm(bias.unsqueeze(1), weight, x2.t().contiguous()).t()
        return y.reshape(*lead, self.out_features)

    @property
    def nnz(self) -> int:
        return int(self.weight.values().numel())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


@dataclass
class LayerChoice:
    name: str
    shape: tuple[int, int]
    sparsity: float
    dense_ms: dict[int, float]
    sparse_ms: dict[int, float]
    sparse: bool
    #: why the timings stayed disturbed by other work (then the layer stays dense), or None
    noisy: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "shape": list(self.shape), "sparsity": self.sparsity,
               "dense_ms": self.dense_ms, "sparse_ms": self.sparse_ms, "sparse": self.sparse,
               "speedup": {b: self.dense_ms[b] / self.sparse_ms[b] for b in self.dense_ms}}
        return out if self.noisy is None else {**out, "noisy": self.noisy}


@dataclass
class SparsifyResult:
    """What :func:`sparsify` decided: per candidate layer, and for the whole model."""

    layers: list[LayerChoice]
    #: the whole-model check: median ms per batch size, ``{"dense": {b: ms}, "sparse": {b: ms}}``;
    #: None when it did not run (no input shape given, ``force``, or no layer chosen)
    model_ms: dict[str, dict[int, float]] | None = None
    #: the layers were faster alone but the whole model was not: all were put back dense
    reverted: bool = False
    #: the whole-model timings stayed disturbed by other work (then reverted), or None
    noisy: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layers": [c.as_dict() for c in self.layers],
                               "reverted": self.reverted}
        if self.noisy is not None:
            out["noisy"] = self.noisy
        if self.model_ms is not None:
            out["model_ms"] = self.model_ms
            out["model_speedup"] = {b: self.model_ms["dense"][b] / self.model_ms["sparse"][b]
                                    for b in self.model_ms["dense"]}
        return out


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _noise(lat: Any) -> str | None:
    """The disturbed timings of a :func:`retime_noisy` result in one line, or None."""
    noisy = getattr(lat, "noisy", {})
    return "; ".join(f"{k} at {b}: {r}" for k, v in noisy.items() for b, r in v.items()) or None


@torch.no_grad()
def sparsify(model: nn.Module, batch_sizes: Sequence[int] = (1, 64), min_sparsity: float = 0.5,
             warmup: int = 20, runs: int = 100, threads: int | None = None, force: bool = False,
             input_shape: Sequence[int] | None = None, rounds: int = 3,
             ) -> tuple[nn.Module, SparsifyResult]:
    """Swap (in place) each Linear of ``model`` with at least ``min_sparsity`` zeros for a
    :class:`SparseLinear` where the CSR kernel measured faster at every batch size (``force``:
    every such layer, timed all the same). With ``input_shape`` (one sample's shape) the whole
    model is then timed with those layers against the dense model (``rounds`` rounds, in turn)
    and the swap is undone unless it is faster at every batch size. Returns the model and a
    :class:`SparsifyResult` (every timing, every decision)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    sizes = [int(b) for b in batch_sizes]
    dense = copy.deepcopy(model) if input_shape is not None and not force else None
    choices = []
    originals: dict[str, nn.Module] = {}
    try:
        for name, mod in list(model.named_modules()):
            if not isinstance(mod, nn.Linear):
                continue
            w = mod.weight.detach()
            sparsity = float((w == 0).float().mean())
            if sparsity < min_sparsity:
                continue
            cand = SparseLinear(mod)
            # the dense layer and its CSR twin timed in turn, on inputs of the layer's shape
            lat = retime_noisy(time_alternating, {"dense": mod, "sparse": cand},
                               (mod.in_features,), sizes, runs, warmup, 1, None)
            dense_ms = {b: lat["dense"][f"batch_{b}"] for b in sizes}
            sparse_ms = {b: lat["sparse"][f"batch_{b}"] for b in sizes}
            noisy = _noise(lat)
            if noisy and not force:
                warn_noisy(f"CSR for {name}", noisy, "not chosen on them: the layer stays dense")
            use = force or (noisy is None and all(sparse_ms[b] < dense_ms[b] for b in dense_ms))
            choices.append(LayerChoice(name, tuple(w.shape), sparsity, dense_ms, sparse_ms, use,
                                       noisy))
            if use:
                originals[name] = mod
                _set_module(model, name, cand)
        result = SparsifyResult(choices)
        if dense is not None and originals:
            faster = False  # the model is handed back dense unless the timing says otherwise
            try:
                lat = retime_noisy(time_alternating, {"dense": dense, "sparse": model},
                                   input_shape, sizes, runs, warmup, rounds, None)
                result.model_ms = {k: {b: lat[k][f"batch_{b}"] for b in sizes} for k in lat}
                result.noisy = _noise(lat)
                if result.noisy:
                    warn_noisy("CSR for the whole model", result.noisy,
                               "not chosen on them: every layer stays dense")
                faster = result.noisy is None and all(
                    result.model_ms["sparse"][b] < result.model_ms["dense"][b] for b in sizes)
            finally:
                if not faster:
                    for name, mod in originals.items():
                        _set_module(model, name, mod)
                    for c in choices:
                        c.sparse = False
                    result.reverted = result.model_ms is not None
    finally:
        torch.set_num_threads(previous)
    return model, result
