"""What a search writes: the Pareto front of its trials, the policies chosen from it, and how
their final retrains compare with the uniform policy.

Rows are plain dicts (one per trial or baseline run): ``kind`` (trial, uniform, sensitivity,
final), ``name``, each objective's value, ``macs_fraction`` (of the dense network), ``sparsity``
(the policy's), ``val_acc``, ``test_acc``, ``run_dir``, ``on_front``.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: pareto.csv columns, in order (objective columns come after ``name``).
COLUMNS = ("kind", "name", "number", "on_front", "sparsity", "macs_fraction", "val_acc",
           "test_acc", "seeds", "test_acc_std", "run_dir")


def measured(results: Mapping[str, Any], granularity: str) -> dict[str, float | None]:
    """The objective values a run's ``results.json`` holds (latency is timed by the search)."""
    macs = results.get("macs") or {}
    work = macs.get("compact") if granularity == "channels" else macs.get("nonzero")
    size = results.get("size_bytes") or {}
    return {"val_acc": results.get("best_val_acc"), "test_acc": results.get("test_acc"),
            "macs": work, "macs_fraction": (work / macs["dense"]) if work and macs.get("dense")
            else None,
            "params": (results.get("params") or {}).get("nonzero"),
            "size": size.get("sparse_bytes")}


def dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[int]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one (signs: +1 maximize)."""
    better = [s * x > s * y for x, y, s in zip(a, b, signs)]
    worse = [s * x < s * y for x, y, s in zip(a, b, signs)]
    return any(better) and not any(worse)


def mark_front(rows: list[dict[str, Any]], objectives: Sequence[str], signs: Sequence[int]) -> None:
    """Set ``on_front`` on every row: no other row dominates it."""
    vals = [[r[o] for o in objectives] for r in rows]
    for r, v in zip(rows, vals):
        r["on_front"] = not any(dominates(w, v, signs) for w in vals if w is not v)


def choose(front: Sequence[dict[str, Any]], objectives: Sequence[str], k: int) -> list[dict[str, Any]]:
    """Up to ``k`` front rows spread along the first cost (``objectives[0]`` is val_acc; with
    no cost: the most accurate)."""
    if not front or k <= 0:
        return []
    if len(objectives) == 1:
        return [max(front, key=lambda r: r["val_acc"])]
    ordered = sorted(front, key=lambda r: (r[objectives[1]], -r[objectives[0]]))
    if len(ordered) <= k:
        return ordered
    picks = sorted({round(i * (len(ordered) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [ordered[i] for i in picks]


def write_csv(path: Path, rows: Sequence[dict[str, Any]], objectives: Sequence[str]) -> Path:
    from prunelab.files import atomic_write

    fields = list(COLUMNS[:3]) + [o for o in objectives if o not in COLUMNS] + list(COLUMNS[3:])

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    return atomic_write(path, write)


def final_rows(runs: Mapping[str, Sequence[dict[str, Any]]], kinds: Mapping[str, str],
               costs: Sequence[str]) -> list[dict[str, Any]]:
    """One row per retrained policy: its seeds' mean test accuracy (and std), the mean of each
    cost the runs measured, the run directories."""
    out = []
    for name, rs in runs.items():
        accs = [r["test_acc"] for r in rs if r.get("test_acc") is not None]
        if not accs:
            continue
        row = {"kind": f"final:{kinds[name]}", "name": name, "seeds": len(accs),
               "test_acc": statistics.fmean(accs),
               "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
               "sparsity": rs[0].get("sparsity"),
               "run_dir": ";".join(str(r["run_dir"]) for r in rs)}
        for key in (*costs, "macs_fraction"):
            values = [r[key] for r in rs if r.get(key) is not None]
            row[key] = statistics.fmean(values) if values else None
        out.append(row)
    return out


def compare_with_uniform(finals: Sequence[dict[str, Any]], objective: str) -> list[str]:
    """Per uniform policy: the most accurate chosen policy at no more cost, and the cheapest
    chosen policy at no less accuracy (test accuracy, mean over seeds)."""
    chosen = [r for r in finals if r["kind"] == "final:chosen" and r.get(objective) is not None]
    lines = []
    for u in (r for r in finals if r["kind"] == "final:uniform" and r.get(objective) is not None):
        cheaper = [c for c in chosen if c[objective] <= u[objective]]
        as_good = [c for c in chosen if c["test_acc"] >= u["test_acc"]]
        acc = max(cheaper, key=lambda c: c["test_acc"]) if cheaper else None
        cost = min(as_good, key=lambda c: c[objective]) if as_good else None
        parts = [f"{u['name']} ({objective} {u[objective]:.4g}, test acc {100 * u['test_acc']:.2f} %)"]
        parts.append(f"most accurate chosen at no more {objective}: " + (
            f"{acc['name']} {100 * acc['test_acc']:.2f} % ({100 * (acc['test_acc'] - u['test_acc']):+.2f} "
            f"points)" if acc else "none"))
        parts.append("cheapest chosen at no less accuracy: " + (
            f"{cost['name']} {objective} {cost[objective]:.4g} ({100 * (cost[objective] / u[objective] - 1):+.1f} %)"
            if cost else "none"))
        lines.append("; ".join(parts))
    return lines
