"""2:4 semi-structured sparse inference for N:M-pruned Linear layers on CUDA GPUs.

``torch.sparse.to_sparse_semi_structured`` stores a 2:4-sparse weight compressed and runs the
matrix product on sparse tensor cores (CUTLASS on compute capability 8.x; cuSPARSELt, which also
serves 9.x, needs both weight dimensions to be multiples of 16). The speedup only shows for
large matrices (a few thousand rows and more; the measurements are in BENCHMARKS.md, "GPU: 2:4
semi-structured sparsity"), so this module converts what is eligible, keeps dense (given
``batch_sizes``) the layers where the sparse product measured slower, says why for every layer
left dense, and checks the outputs against the masked dense model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

#: Both weight dimensions must be multiples of this (cuSPARSELt's constraint, the stricter one).
DIM_MULTIPLE = 16
DTYPES = (torch.float16, torch.bfloat16)


def is_two_four(weight: torch.Tensor) -> bool:
    """Whether every group of 4 consecutive input weights has at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(-1, 4) != 0).sum(1) <= 2).all())


@dataclass
class SemiStructuredReport:
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> reason
    max_abs_diff: float | None = None
    timings: list[dict] = field(default_factory=list)  # per measured layer: dense / 2:4 ms


def shape_reason(rows: int, cols: int) -> str | None:
    """Why a ``rows x cols`` weight cannot be semi-structured (``None`` if its shape can)."""
    if rows % DIM_MULTIPLE or cols % DIM_MULTIPLE:
        return f"shape {rows}x{cols}: both dimensions must be multiples of {DIM_MULTIPLE}"
    return None


def semi_structured_eligibility(model: nn.Module) -> dict[str, str | None]:
    """Per Linear layer: ``None`` if it can be converted, else the reason it cannot."""
    out: dict[str, str | None] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        w = mod.weight
        if (reason := shape_reason(*w.shape)) is not None:
            out[name] = reason
        elif not is_two_four(w.detach()):
            out[name] = "weight is not 2:4 sparse (prune with pruner=nm pruner.n=2 pruner.m=4)"
        else:
            out[name] = None
    return out


@torch.no_grad()
def to_semi_structured(model: nn.Module, example: torch.Tensor, dtype: torch.dtype = torch.float16,
                       atol: float = 1e-2, batch_sizes: Sequence[int] | None = None,
                       runs: int = 50, warmup: int = 10,
                       rounds: int = 3) -> tuple[nn.Module, SemiStructuredReport]:
    """A copy of ``model`` on CUDA in ``dtype`` whose eligible Linear weights are semi-structured
    sparse tensors, and a report with the max abs output difference against the masked dense
    copy on ``example``. With ``batch_sizes``, each converted layer and its dense twin are timed
    in turn (``rounds`` x ``runs`` after ``warmup``, medians) on inputs of the layer's shape, and the layer
    stays 2:4 only where that was faster at every batch size. Raises ``RuntimeError`` without a
    CUDA GPU."""
    if not torch.cuda.is_available():
        raise RuntimeError("semi-structured sparsity needs a CUDA GPU with sparse tensor cores")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype} not supported; allowed: float16, bfloat16")
    from torch.sparse import to_sparse_semi_structured

    dense = copy.deepcopy(model).to("cuda", dtype).eval()
    sparse = copy.deepcopy(dense)
    report = SemiStructuredReport()
    for name, reason in semi_structured_eligibility(sparse).items():
        if reason is not None:
            report.skipped[name] = reason
            continue
        mod = sparse.get_submodule(name)
        try:
            mod.weight = nn.Parameter(to_sparse_semi_structured(mod.weight.detach()),
                                      requires_grad=False)
        except (RuntimeError, ValueError) as exc:  # backend refuses (device capability, shape)
            report.skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            continue
        if batch_sizes:
            from prunelab.metrics.timing import time_alternating

            twin = dense.get_submodule(name)
            lat = time_alternating({"dense": twin, "2:4": mod}, (mod.in_features,),
                                   [int(b) for b in batch_sizes], runs, warmup, rounds, None)
            times = {"name": name, "dense_ms": lat["dense"], "sparse_ms": lat["2:4"]}
            report.timings.append(times)
            slower = [k for k in lat["dense"] if lat["2:4"][k] >= lat["dense"][k]]
            if slower:
                k = slower[0]
                mod.weight = nn.Parameter(twin.weight.detach().clone(), requires_grad=False)
                report.skipped[name] = (f"2:4 measured slower than dense at {k.replace('_', ' ')}"
                                        f" ({lat['2:4'][k]:.3f} vs {lat['dense'][k]:.3f} ms)")
                continue
        report.converted.append(name)
    x = example.to("cuda", dtype)
    diff = (sparse(x).float() - dense(x).float()).abs().max().item()
    report.max_abs_diff = diff
    if diff > atol:
        raise RuntimeError(f"semi-structured outputs differ from the masked dense model by {diff:.3g}"
                           f" > atol={atol}")
    return sparse, report
