"""Per-layer pruning sensitivity (Han et al. 2015; Distiller's sensitivity analysis).

Prune each prunable layer alone, by magnitude, at a ladder of sparsities, measure validation
accuracy without retraining (:func:`analyze`), and give the layers whose accuracy falls first the
least pruning (:func:`make_profile`).

Profile: for an allowed accuracy drop ``d``, each layer may go up to the largest ladder sparsity
before its drop first exceeds ``d``; the smallest ``d`` whose total reaches the target is found,
and the layers that step at that ``d`` are interpolated so that the total is exactly the target.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunelab.runs import RunError

#: Columns of ``sensitivity.csv``.
FIELDS = ("layer", "sparsity", "val_acc", "drop")


class SensitivityError(RunError):
    """Bad input to the sensitivity analysis (one-line message)."""


def analyze(net, loader, names: Sequence[str], ratios: Sequence[float],
            max_batches: int | None = None) -> tuple[float, list[dict[str, Any]]]:
    """Base accuracy and one row per (layer, ratio): the layer alone pruned by magnitude. The
    network's weights are the same afterwards."""
    import torch

    from prunelab.metrics import accuracy
    from prunelab.pruning.selection import select_masks

    params = dict(net.named_parameters())
    base = accuracy(net, loader, max_batches)
    rows = []
    for name in names:
        p = params[name]
        saved = p.detach().clone()
        for r in ratios:
            keep = select_masks({name: saved.abs()}, {name: saved != 0}, float(r), "layer")[name]
            with torch.no_grad():
                p.copy_(saved * keep)
            acc = accuracy(net, loader, max_batches)
            rows.append({"layer": name, "sparsity": float(r), "val_acc": acc, "drop": base - acc})
        with torch.no_grad():
            p.copy_(saved)
    return base, rows


def make_profile(rows: Sequence[Mapping[str, Any]], sizes: Mapping[str, int],
                 target: float) -> dict[str, float]:
    """Per-layer sparsities whose size-weighted mean is exactly ``target`` (see module doc)."""
    layers = list(sizes)
    curves = {n: sorted((r["sparsity"], r["drop"]) for r in rows if r["layer"] == n)
              for n in layers}
    total = sum(sizes.values())

    def allowed(n: str, d: float) -> float:
        s = 0.0
        for ratio, drop in curves[n]:
            if drop > d:
                break
            s = ratio
        return s

    def reach(d: float) -> float:
        return sum(allowed(n, d) * sizes[n] for n in layers) / total

    candidates = sorted({0.0, *(drop for c in curves.values() for _, drop in c)})
    prev = None
    for d in candidates:
        if reach(d) >= target - 1e-12:
            lo = ({n: allowed(n, prev) for n in layers} if prev is not None
                  else {n: 0.0 for n in layers})
            hi = {n: allowed(n, d) for n in layers}
            lo_t = sum(lo[n] * sizes[n] for n in layers) / total
            hi_t = sum(hi[n] * sizes[n] for n in layers) / total
            if prev is None and lo_t > target:
                lo, lo_t = {n: 0.0 for n in layers}, 0.0
            a = 0.0 if hi_t == lo_t else (target - lo_t) / (hi_t - lo_t)
            return {n: lo[n] + a * (hi[n] - lo[n]) for n in layers}
        prev = d
    best = reach(float("inf"))
    raise SensitivityError(f"target_sparsity={target} cannot be reached with ratios up to "
                           f"{max(r['sparsity'] for r in rows)}: at most {best:.4f}")


def write_outputs(out: Path, rows: Sequence[Mapping[str, Any]], base: float,
                  profile: Mapping[str, float], target: float, checkpoint: Path) -> dict[str, Path]:
    """``sensitivity.csv``, ``sensitivity.png`` and ``profile.yaml`` (the profile last) in
    ``out``; returns their paths."""
    import yaml

    from prunelab.files import atomic_write
    from prunelab.plots import plot_sensitivity

    paths = {"csv": out / "sensitivity.csv", "png": out / "sensitivity.png",
             "profile": out / "profile.yaml"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS))
        w.writeheader()
        w.writerows(rows)
    plot_sensitivity(rows, base, paths["png"])
    doc = {"target_sparsity": float(target), "base_val_acc": base, "checkpoint": str(checkpoint),
           "layers": {n: round(float(s), 6) for n, s in profile.items()}}
    text = yaml.safe_dump(doc, sort_keys=False)
    atomic_write(paths["profile"], lambda tmp: tmp.write_text(text))
    return paths
