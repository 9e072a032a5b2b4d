"""How a global sparsity budget is spread over the layers: ``uniform`` or ``erk``.

``erk`` is the Erdős–Rényi-Kernel rule of Evci et al. (2020, "Rigging the Lottery", appendix),
extending the Erdős–Rényi rule of Mocanu et al. (2018): a layer's density is proportional to
``sum(shape) / prod(shape)`` (its fan-in plus fan-out plus kernel size over its number of
weights), scaled by one factor so that the kept weights add up to the budget. A layer whose
density would exceed 1 is kept dense and the factor is solved again over the others (the
reference's loop). Small layers (the first convolution, the output layer) end up denser than
large ones.

The number of weights a layer keeps is ``round(density * numel)``: the per-layer counts are exact,
and the total differs from ``round((1 - sparsity) * total)`` by at most one weight per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DISTRIBUTIONS = ("uniform", "erk")


def layer_densities(shapes: Mapping[str, Sequence[int]], sparsity: float,
                    kind: str = "erk") -> dict[str, float]:
    """Each layer's density (fraction kept) for a total ``sparsity`` over ``shapes``."""
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"distribution={kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity {sparsity} outside [0, 1]")
    density = 1.0 - sparsity
    if kind == "uniform" or sparsity == 0.0:
        return {name: density for name in shapes}
    numel = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        if not free:  # every layer dense: only possible at density 1
            return {n: 1.0 for n in shapes}
        # kept weights: density * total = sum(dense numel) + eps * sum(raw * numel) over the rest
        rhs = sum(density * numel[n] for n in free) - sum((1.0 - density) * numel[n] for n in dense)
        eps = rhs / sum(raw[n] * numel[n] for n in free)
        top = max(raw[n] for n in free)
        if eps * top <= 1.0:
            return {n: (1.0 if n in dense else eps * raw[n]) for n in shapes}
        dense.update(n for n in free if raw[n] == top)


def layer_sparsities(shapes: Mapping[str, Sequence[int]], sparsity: float,
                     kind: str = "erk") -> dict[str, float]:
    """Each layer's sparsity: ``1 - density`` (:func:`layer_densities`)."""
    return {n: 1.0 - d for n, d in layer_densities(shapes, sparsity, kind).items()}


def kept_counts(shapes: Mapping[str, Sequence[int]], sparsity: float,
                kind: str = "erk") -> dict[str, int]:
    """The number of weights each layer keeps: ``round(density * numel)``."""
    return {n: int(round(d * math.prod(shapes[n])))
            for n, d in layer_densities(shapes, sparsity, kind).items()}


__all__ = ["DISTRIBUTIONS", "kept_counts", "layer_densities", "layer_sparsities"]
