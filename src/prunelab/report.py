"""Sweep reports: collect ``results.json`` files under a directory into one table.

``python -m prunelab.report <sweep dir>`` prints the table and writes ``report.md``,
``report.csv`` and the plots of :mod:`prunelab.plots` beside the runs, listing the jobs that
failed or did not finish; Hydra multiruns of ``prunelab.train`` do the same at their end
(:class:`prunelab.hydra_callbacks.SweepSummary`). Lottery runs (``prunelab.lottery``) below the
directory get their own report: ``lottery_report.md|csv`` (mean and spread over seeds per control
and level) and ``lottery.png`` (accuracy against percent of weights remaining).
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
        if res.get("kind") == "lottery_level":
            continue  # a level of a lottery run: see collect_lottery
        res["run_dir"] = str(path.parent)
        rows.append(res)
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (seeds combined): mean and std of test accuracy; means of
    sparsity, parameters kept, MACs kept, size and latency."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        # runs that differ in anything but the seed (regularizer, epochs, ...) stay apart
        groups[tuple(r.get(k) for k in GROUP_KEYS) + (r.get("group_hash"),)].append(r)
    out = []
    for key, rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        row = dict(zip(GROUP_KEYS, key))
        row["group_hash"] = key[-1]
        lat = [r.get("latency_ms") or {} for r in rs]
        adv = [r.get("adversarial") or {} for r in rs]
        row.update({
            "seeds": len(rs),
            "test_acc_mean": statistics.mean(accs),
            "test_acc_std": _std(accs),
            "sparsity": statistics.mean(r["sparsity"]["global"] for r in rs),
            "channel_sparsity": statistics.mean(r.get("channel_sparsity", {}).get("global", 0.0)
                                                for r in rs),
            "params_kept": _mean([r["params"]["nonzero"] / r["params"]["total"] for r in rs
                                  if "params" in r]),
            "macs_ratio": statistics.mean(r["macs"]["effective"] / r["macs"]["dense"] for r in rs),
            "size_kb": _mean([r["size_bytes"]["sparse_bytes"] / 1e3 for r in rs
                              if "size_bytes" in r]),
            "latency_b1_ms": _mean([x.get("batch_1") for x in lat]),
            "latency_b64_ms": _mean([x.get("batch_64") for x in lat]),
            "adv_acc": _mean([x.get("acc") for x in adv]),
            "wall_time_s": statistics.mean(r["wall_time_s"] for r in rs),
            "per_layer": {n: statistics.mean(r["sparsity"]["per_layer"].get(n, 0.0) for r in rs)
                          for n in (rs[0]["sparsity"].get("per_layer") or {})},
        })
        out.append(row)
    out.sort(key=lambda r: tuple(str(r[k]) for k in ("data", "model", "target_sparsity"))
             + (-r["test_acc_mean"],))
    return out


def collect_failures(directory: str | Path) -> list[dict[str, str]]:
    """Jobs of a sweep without ``results.json``: failed (``error.json``, written by the failing
    job) or unfinished (a Hydra job directory, ``.hydra/``, and nothing else)."""
    out = []
    directory = Path(directory)
    for d in sorted({p.parent for p in directory.rglob("error.json")}
                    | {p.parent for p in directory.rglob(".hydra")}):
        if (d / "results.json").is_file() or (d / "lottery.json").is_file():
            continue
        err = "unfinished: no results.json (killed or still running)"
        if (d / "error.json").is_file():
            try:
                err = json.loads((d / "error.json").read_text()).get("error", err)
            except (OSError, json.JSONDecodeError):
                pass
        out.append({"run_dir": str(d.relative_to(directory)) or ".", "error": err})
    return out


COLUMNS = [("data", "data"), ("model", "model"), ("pruner", "pruner"),
           ("target_sparsity", "target"), ("sparsity", "sparsity"),
           ("channel_sparsity", "channels"), ("test_acc_mean", "test acc"),
           ("test_acc_std", "std"), ("seeds", "seeds"), ("params_kept", "params kept"),
           ("macs_ratio", "MACs kept"), ("size_kb", "size KB"), ("latency_b1_ms", "ms @1"),
           ("latency_b64_ms", "ms @64"), ("adv_acc", "adv acc"), ("wall_time_s", "wall s")]


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key in ("test_acc_mean", "test_acc_std", "adv_acc"):
        return f"{100 * v:.2f}"
    if key in ("sparsity", "channel_sparsity", "macs_ratio", "target_sparsity", "params_kept"):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    if key in ("wall_time_s", "size_kb"):
        return f"{v:.1f}"
    if key in ("latency_b1_ms", "latency_b64_ms"):
        return f"{v:.3f}"
    return str(v)


def markdown(summary: Sequence[dict[str, Any]], failures: Sequence[dict[str, str]] = ()) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in summary:
        lines.append("| " + " | ".join(_fmt(k, r[k]) for k, _ in COLUMNS) + " |")
    if failures:
        lines += ["", f"**{len(failures)} job(s) without results:**", ""]
        lines += [f"- `{f['run_dir']}`: {f['error']}" for f in failures]
    return "\n".join(lines) + "\n"


def write_report(directory: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    """``report.md``, ``report.csv`` and the plots for the runs under ``directory`` (and the
    lottery report for lottery runs). Raises FileNotFoundError when there is nothing to report."""
    from prunelab.plots import plot_sweep

    directory = Path(directory)
    lottery = write_lottery_report(directory, quiet=quiet)
    summary = summarize(collect(directory))
    failures = collect_failures(directory)
    if not summary:
        if lottery:
            return lottery
        if failures:
            md = markdown([], failures)
            (directory / "report.md").write_text(md)
            if not quiet:
                print(md, end="")
            return []
        raise FileNotFoundError(f"no results.json under {directory}")
    fields = [k for k in summary[0] if k != "per_layer"]
    with open(directory / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(summary)
    md = markdown(summary, failures)
    best = directory / "optimization_results.yaml"  # written by hydra/sweeper=optuna
    if best.is_file():
        import yaml

        res = yaml.safe_load(best.read_text()) or {}
        params = ", ".join(f"`{k}={v}`" for k, v in (res.get("best_params") or {}).items())
        md += f"\n**Best trial** (Optuna): {params}: objective {res.get('best_value')}\n"
    pngs = plot_sweep(summary, directory)
    md += "\n" + "".join(f"![{p.stem}]({p.name})\n" for p in pngs)
    (directory / "report.md").write_text(md)
    if not quiet:
        print(md, end="")
        print(f"wrote {directory / 'report.md'}, report.csv and {len(pngs)} plots")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m prunelab.report <directory with prunelab.train or prunelab.lottery runs>",
              file=sys.stderr)
        sys.exit(2)
    try:
        write_report(args[0])
    except FileNotFoundError as exc:
        print(f"prunelab: error: {exc}", file=sys.stderr)
        sys.exit(2)


# -- lottery tickets ---------------------------------------------------------------------------------
CONTROL_ORDER = {"none": 0, "random_reinit": 1, "random_mask": 2}


def collect_lottery(directory: str | Path) -> list[dict[str, Any]]:
    """The finished levels of every lottery run under ``directory`` (a control's own copy of its
    ticket, ``<run>/ticket/``, is left out: the ticket run itself is counted)."""
    from prunelab.lottery import read_levels

    rows = []
    for meta in sorted(Path(directory).rglob("lottery.json")):
        try:
            if json.loads(meta.read_text()).get("internal"):
                continue
        except (OSError, json.JSONDecodeError):
            continue
        rows.extend(read_levels(meta.parent))
    return rows


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


LOTTERY_COLUMNS = [("model", "model"), ("control", "control"), ("level", "level"),
                   ("percent_remaining", "% weights"), ("test_acc_mean", "test acc"),
                   ("test_acc_std", "std"), ("test_acc_last_mean", "test acc (last)"),
                   ("best_val_iteration_mean", "best-val it"), ("seeds", "seeds"),
                   ("iterations", "its/level"), ("wall_time_s", "wall s")]


def _lfmt(key: str, v: Any) -> str:
    if v is None:
        return "n/a"
    if key in ("test_acc_mean", "test_acc_std", "test_acc_last_mean"):
        return f"{100 * v:.2f}"
    if key == "percent_remaining":
        return f"{v:.2f}"
    if key in ("best_val_iteration_mean", "wall_time_s"):
        return f"{v:.0f}" if key == "best_val_iteration_mean" else f"{v:.1f}"
    return str(v)


def write_table(stem: Path, curves: Sequence[dict[str, Any]]) -> str:
    """``<stem>.md`` and ``<stem>.csv`` of lottery curves; returns the markdown."""
    stem = Path(stem)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(curves[0]))
        w.writeheader()
        w.writerows(curves)
    lines = ["| " + " | ".join(h for _, h in LOTTERY_COLUMNS) + " |",
             "|" + "---|" * len(LOTTERY_COLUMNS)]
    for r in curves:
        lines.append("| " + " | ".join(_lfmt(k, r[k]) for k, _ in LOTTERY_COLUMNS) + " |")
    md = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(md)
    return md


def plot_lottery(curves: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Test accuracy against percent of weights remaining (log axis, decreasing to the right),
    one line per control (error bars: std over seeds), the dense level as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in curves:
        series[(r["group_hash"], r["control"])].append(r)
    several = len({g for g, _ in series}) > 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    banded = set()
    for (g, control), rs in series.items():
        rs = sorted(rs, key=lambda r: r["level"])
        dense = [r for r in rs if r["level"] == 0]
        if dense and g not in banded:
            m, s = 100 * dense[0]["test_acc_mean"], 100 * dense[0]["test_acc_std"]
            ax.axhspan(m - max(s, 0.01), m + max(s, 0.01), color="grey", alpha=0.25,
                       label="dense" + (f" ({rs[0]['model']})" if several else ""))
            banded.add(g)
        label = control if control != "none" else "winning ticket"
        if several:
            label = f"{rs[0]['model']}/{rs[0]['data']} {label}"
        ax.errorbar([r["percent_remaining"] for r in rs], [100 * r["test_acc_mean"] for r in rs],
                    yerr=[100 * r["test_acc_std"] for r in rs], marker="o", ms=3, capsize=2,
                    label=label)
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    xs = [r["percent_remaining"] for r in curves]
    ticks = [t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1)
             if min(xs) / 1.5 <= t <= max(xs) * 1.01]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.invert_xaxis()
    ax.set_xlabel("percent of weights remaining")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "lottery tickets")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_lottery_report(directory: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    """``lottery_report.md|csv`` and ``lottery.png`` for the lottery runs under ``directory``."""
    directory = Path(directory)
    curves = lottery_curves(collect_lottery(directory))
    if not curves:
        return []
    md = write_table(directory / "lottery_report", curves)
    seeds = max(r["seeds"] for r in curves)
    plot_lottery(curves, directory / "lottery.png",
                 title=f"lottery tickets, mean of {seeds} seed(s)")
    if not quiet:
        print(md, end="")
        print(f"wrote {directory / 'lottery_report.md'}, lottery_report.csv and lottery.png")
    return curves


if __name__ == "__main__":
    main()
