"""Lottery results as curves: one row per (config, control, level), seeds combined, and the
table written beside them (``summary.md|csv`` of a run, ``lottery_report.md|csv`` of a sweep)."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunelab.files import atomic_write
from prunelab.formatting import Column, fixed, markdown_table, percent

CONTROL_ORDER = {"none": 0, "random_reinit": 1, "random_mask": 2}

COLUMNS: list[Column] = [
    ("model", "model", None), ("control", "control", None), ("level", "level", None),
    ("percent_remaining", "% weights", fixed(2)), ("test_acc_mean", "test acc", percent),
    ("test_acc_std", "std", percent), ("test_acc_last_mean", "test acc (last)", percent),
    ("best_val_iteration_mean", "best-val it", fixed(0)), ("seeds", "seeds", None),
    ("iterations", "its/level", None), ("wall_time_s", "wall s", fixed(1))]


def lottery_curves(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (config, control, level), seeds combined: mean and std of test accuracy."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r.get("group_hash"), r["control"], r["level"])].append(r)
    out = []
    for (g, control, level), rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        lasts = [r["test_acc_last"] for r in rs]
        its = [r["best_val_iteration"] for r in rs if r.get("best_val_iteration") is not None]
        out.append({
            "model": rs[0].get("model"), "data": rs[0].get("data"), "group_hash": g,
            "control": control, "level": level,
            "percent_remaining": statistics.mean(r["percent_remaining"] for r in rs),
            "seeds": len(rs),
            "test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_acc_last_mean": statistics.mean(lasts),
            "best_val_iteration_mean": statistics.mean(its) if its else None,
            "iterations": max(r["iterations"] for r in rs),
            "wall_time_s": statistics.mean(r["wall_time_s"] for r in rs),
        })
    out.sort(key=lambda r: (str(r["group_hash"]), CONTROL_ORDER.get(r["control"], 9), r["level"]))
    return out


def write_table(stem: str | Path, curves: Sequence[dict[str, Any]], note: str = "") -> str:
    """``<stem>.md`` (the table, then ``note``) and ``<stem>.csv`` of lottery curves; returns
    the markdown."""
    stem = Path(stem)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(curves[0]))
            w.writeheader()
            w.writerows(curves)

    atomic_write(stem.with_suffix(".csv"), write_csv)
    md = markdown_table(curves, COLUMNS, missing="n/a") + note
    atomic_write(stem.with_suffix(".md"), lambda tmp: tmp.write_text(md))
    return md
