"""``report.md`` of a search: the front, the chosen policies, the baselines, the final retrains
and how the chosen policies compare with the uniform ones (``search.json`` has the numbers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _value(row: Mapping[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None:
        return ""
    if key in ("val_acc", "test_acc", "test_acc_std"):
        return f"{100 * v:.2f}"
    if key in ("sparsity", "macs_fraction"):
        return f"{v:.3f}"
    if key in ("latency", "latency_search_ms"):
        return f"{v:.4f}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_value(r, k) for k in keys) + " |" for r in rows]
    return lines


def write_report(out: Path, summary: Mapping[str, Any]) -> Path:
    """``report.md`` of a search from its summary (what ``search.json`` holds)."""
    objectives = list(summary["objectives"])
    budgets = summary.get("budgets") or {}
    costs = [o for o in objectives if o != "val_acc"]
    keys = ["name", *objectives, "sparsity", "macs_fraction", "test_acc"]
    md = [f"# Policy search: {', '.join(objectives)}", "",
          f"{summary['trials']} trials; front: {len(summary['front'])} points "
          f"(accuracies in %; macs_fraction: of the dense network).", "",
          "## Front (proxy trials)", "", *_table(sorted(summary["front"], key=lambda r: [
              r.get(o) or 0 for o in costs or objectives]), keys), ""]
    if summary["chosen"]:
        md += ["## Chosen policies", "",
               *_table(summary["chosen"], ["name", "policy", *objectives, "sparsity",
                                           "hyperparameters"]), "",
               *(["Use one: `python -m prunelab.train pruner=sensitivity pruner.profile=<search "
                  "dir>/best_policy_<i>.yaml init_from=<run> ...` with its hyperparameters as "
                  "overrides", ""]
                 if any(r.get("policy") for r in summary["chosen"]) else [])]
    if summary["baselines"]:
        md += ["## Baselines (proxy)", "", *_table(summary["baselines"], keys), ""]
    if summary["finals"]:
        fkeys = ["name", "seeds", "test_acc", "test_acc_std", *costs, "macs_fraction"]
        if any("latency_search_ms" in r for r in summary["finals"]):
            fkeys.append("latency_search_ms")  # as the search timed it, beside the side-by-side
        md += ["## Final retrains (test accuracy, mean over seeds)", "",
               *_table(summary["finals"], fkeys), ""]
    if summary["comparison"]:
        md += ["## Chosen against uniform", "", *[f"- {line}" for line in summary["comparison"]], ""]
    for k, v in budgets.items():
        under = [r for r in summary["finals"] if r.get(k) is not None and r[k] <= v]
        md += [f"## Budget {k} <= {v:g}", ""]
        md += [f"- {r['name']}: test acc {100 * r['test_acc']:.2f} %" for r in under] or [
            "- no retrained policy within the budget"]
        md.append("")
    if summary.get("pareto_png"):
        md += ["![pareto](pareto.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


def rewrite(out: Path) -> str:
    """``python -m prunelab.report <search dir>``: ``report.md`` and ``pareto.png`` drawn again
    from ``search.json``; returns the report's text."""
    import json

    from prunelab.plots import plot_pareto

    summary = json.loads((out / "search.json").read_text())
    plot_pareto(summary["trial_rows"], summary["baselines"], summary["finals"],
                summary["objectives"], out / "pareto.png", summary.get("budgets"))
    return write_report(out, summary).read_text()
