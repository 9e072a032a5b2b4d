"""Sweep reports: collect ``results.json`` files under a directory into one table.

``python -m prunelab.report <sweep dir>`` prints the table and writes ``summary.csv`` and
``summary.md`` beside the runs; Hydra multiruns of ``prunelab.train`` do the same at their end
(:class:`prunelab.hydra_callbacks.SweepSummary`).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GROUP_KEYS = ("data", "model", "pruner", "granularity", "scope", "schedule", "target_sparsity")


def collect(directory: str | Path) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``directory`` (recursively), with its run directory."""
    rows = []
    for path in sorted(Path(directory).rglob("results.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        res["run_dir"] = str(path.parent)
        rows.append(res)
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (seeds combined): mean and std of test accuracy, sparsity."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        # runs that differ in anything but the seed (regularizer, epochs, ...) stay apart
        groups[tuple(r.get(k) for k in GROUP_KEYS) + (r.get("group_hash"),)].append(r)
    out = []
    for key, rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        row = dict(zip(GROUP_KEYS, key))
        row["group_hash"] = key[-1]
        row.update({
            "seeds": len(rs),
            "test_acc_mean": statistics.mean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "sparsity": statistics.mean(r["sparsity"]["global"] for r in rs),
            "channel_sparsity": statistics.mean(r.get("channel_sparsity", {}).get("global", 0.0)
                                                for r in rs),
            "macs_ratio": statistics.mean(r["macs"]["effective"] / r["macs"]["dense"] for r in rs),
            "wall_time_s": statistics.mean(r["wall_time_s"] for r in rs),
        })
        out.append(row)
    out.sort(key=lambda r: tuple(str(r[k]) for k in ("data", "model", "target_sparsity"))
             + (-r["test_acc_mean"],))
    return out


COLUMNS = [("data", "data"), ("model", "model"), ("pruner", "pruner"),
           ("target_sparsity", "target"), ("sparsity", "sparsity"),
           ("channel_sparsity", "channels"), ("test_acc_mean", "test acc"),
           ("test_acc_std", "std"), ("seeds", "seeds"), ("macs_ratio", "MACs kept"),
           ("wall_time_s", "wall s")]


def _fmt(key: str, v: Any) -> str:
    if key in ("test_acc_mean", "test_acc_std"):
        return f"{100 * v:.2f}"
    if key in ("sparsity", "channel_sparsity", "macs_ratio", "target_sparsity"):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    if key == "wall_time_s":
        return f"{v:.1f}"
    return str(v)


def markdown(summary: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in summary:
        lines.append("| " + " | ".join(_fmt(k, r[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_report(directory: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    directory = Path(directory)
    summary = summarize(collect(directory))
    if not summary:
        raise FileNotFoundError(f"no results.json under {directory}")
    with open(directory / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    md = markdown(summary)
    (directory / "summary.md").write_text(md)
    if not quiet:
        print(md, end="")
        print(f"wrote {directory / 'summary.csv'} and {directory / 'summary.md'}")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m prunelab.report <directory with results.json files>", file=sys.stderr)
        sys.exit(2)
    try:
        write_report(args[0])
    except FileNotFoundError as exc:
        print(f"prunelab: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
