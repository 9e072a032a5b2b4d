"""The figures a pruning paper shows (matplotlib, imported only when a figure is drawn).

Sweeps, from :func:`prunelab.analysis.sweep.summarize` rows (:func:`plot_sweep`):

- ``acc_vs_sparsity.png``: test accuracy against sparsity, one line per method (error bars: std
  over seeds), the dense baseline (``pruner=none``) as a horizontal band;
- ``acc_vs_macs.png``: test accuracy against the fraction of non-zero MACs kept (the report's
  table also has the compact network's MACs, what a structured-pruned run executes);
- ``acc_vs_latency.png``: test accuracy against measured CPU latency at batch 1 (when measured);
- ``layer_sparsity.png``: per-layer sparsity, one row per method and sparsity (a heat map).

Runs of different data sets or models go to separate panels, never onto one axis. The series
drawn in every figure are listed in ``plots.json`` beside the images.

Lottery tickets (:func:`plot_lottery`): test accuracy against percent of weights remaining, from
:func:`prunelab.tickets.summary.lottery_curves` rows. Sensitivity analysis
(:func:`plot_sensitivity`): validation accuracy against each layer's sparsity.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _panels(summary: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in summary:
        out[(r["data"], r["model"])].append(r)
    return dict(out)


def _method(r: dict[str, Any]) -> str:
    name = str(r["pruner"])
    if r.get("granularity") not in (None, "unstructured") and r["pruner"] != "structured":
        name += f" ({r['granularity']})"
    if r.get("adv_train") not in (None, "no"):  # train.adversarial: its own line
        name += f" + adv. training ({str(r['adv_train']).split(' ')[0]})"
    return name


def _is_dense(r: dict[str, Any]) -> bool:
    return r["pruner"] == "none" or not r.get("target_sparsity")


def _figure(n: int, size: tuple[float, float] | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=size or (6.5 * n, 4.5), squeeze=False)
    return plt, fig, axes[0]


def _xy_plot(summary, path: Path, x_key: str, x_label: str, log_x: bool = False,
             x_scale: float = 1.0) -> dict[str, list[str]] | None:
    panels = {k: [r for r in rs if r.get(x_key) is not None] for k, rs in _panels(summary).items()}
    panels = {k: rs for k, rs in panels.items() if rs}
    if not panels:
        return None
    plt, fig, axes = _figure(len(panels))
    drawn: dict[str, list[str]] = {}
    for ax, ((data, model), rs) in zip(axes, sorted(panels.items())):
        names = []
        dense = [r for r in rs if _is_dense(r)]
        if dense:
            m, s = 100 * dense[0]["test_acc_mean"], 100 * dense[0]["test_acc_std"]
            ax.axhspan(m - max(s, 0.02), m + max(s, 0.02), color="grey", alpha=0.3,
                       label=f"dense {m:.2f}%")
            names.append("dense")
        lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rs:
            if not _is_dense(r):
                lines[_method(r)].append(r)
        for method, pts in sorted(lines.items()):
            pts = sorted(pts, key=lambda r: r[x_key])
            ax.errorbar([x_scale * r[x_key] for r in pts], [100 * r["test_acc_mean"] for r in pts],
                        yerr=[100 * r["test_acc_std"] for r in pts], marker="o", ms=4, capsize=3,
                        label=method)
            names.append(method)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model} / {data}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        drawn[f"{data}/{model}"] = names
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _heatmap(summary, path: Path) -> dict[str, list[str]] | None:
    panels = {k: [r for r in rs if r.get("per_layer") and not _is_dense(r)]
              for k, rs in _panels(summary).items()}
    panels = {k: rs for k, rs in panels.items() if rs}
    if not panels:
        return None
    plt, fig, axes = _figure(len(panels))
    drawn = {}
    for ax, ((data, model), rs) in zip(axes, sorted(panels.items())):
        rs = sorted(rs, key=lambda r: (_method(r), r["target_sparsity"]))
        layers = list(rs[0]["per_layer"])
        grid = [[r["per_layer"].get(n, 0.0) for n in layers] for r in rs]
        im = ax.imshow(grid, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis")
        rows = [f"{_method(r)} @{r['target_sparsity']:g}" for r in rs]
        ax.set_yticks(range(len(rs)), rows, fontsize=7)
        ax.set_xticks(range(len(layers)), [n.removesuffix(".weight") for n in layers],
                      rotation=60, ha="right", fontsize=7)
        ax.set_title(f"per-layer sparsity, {model} / {data}")
        fig.colorbar(im, ax=ax, fraction=0.04)
        drawn[f"{data}/{model}"] = rows
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_sweep(summary: Sequence[dict[str, Any]], directory: str | Path) -> list[Path]:
    """Write the sweep's figures into ``directory``; returns their paths."""
    directory = Path(directory)
    specs = {
        "acc_vs_sparsity.png": lambda p: _xy_plot(summary, p, "sparsity", "sparsity (fraction of "
                                                  "prunable weights at zero)"),
        "acc_vs_macs.png": lambda p: _xy_plot(summary, p, "macs_nonzero_ratio",
                                              "non-zero MACs kept (%)", log_x=True, x_scale=100.0),
        "acc_vs_latency.png": lambda p: _xy_plot(summary, p, "latency_b1_ms",
                                                 "CPU latency at batch 1 (ms)"),
        "layer_sparsity.png": lambda p: _heatmap(summary, p),
    }
    written, series = [], {}
    for name, fn in specs.items():
        drawn = fn(directory / name)
        if drawn is not None:
            written.append(directory / name)
            series[name] = drawn
    (directory / "plots.json").write_text(json.dumps(series, indent=2) + "\n")
    return written


def plot_lottery(curves: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test accuracy against percent of weights remaining (log axis, decreasing to the right),
    one line per control (error bars: std over seeds), the dense level as a band."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    plt, fig, axes = _figure(1, (7, 4.5))
    ax = axes[0]
    series: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in curves:
        series[(r["group_hash"], r["control"])].append(r)
    several = len({g for g, _ in series}) > 1
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


def plot_sensitivity(rows: Sequence[dict[str, Any]], base: float, path: str | Path) -> Path:
    """Validation accuracy against the sparsity of each layer pruned alone, one line per layer,
    the unpruned accuracy as a dashed line."""
    plt, fig, axes = _figure(1, (7, 4.5))
    ax = axes[0]
    for layer in dict.fromkeys(r["layer"] for r in rows):
        pts = [(0.0, base)] + [(r["sparsity"], r["val_acc"]) for r in rows if r["layer"] == layer]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=layer)
    ax.axhline(base, color="gray", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("sparsity of the layer (others unpruned)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Per-layer pruning sensitivity")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


_COST_LABELS = {"macs": "MACs (fraction of dense)", "params": "non-zero parameters",
                "size": "bytes on disk", "latency": "latency (ms, in the runtime)"}


def plot_pareto(trials: Sequence[dict[str, Any]], baselines: Sequence[dict[str, Any]],
                finals: Sequence[dict[str, Any]], objectives: Sequence[str], path: str | Path,
                budgets: dict[str, float] | None = None) -> Path | None:
    """A policy search (:mod:`prunelab.policy_search`): validation accuracy of the proxy trials
    against the first cost objective, the front joined, the uniform and sensitivity baselines on
    the same axes; a second panel with the final retrains' test accuracy (mean, std over seeds).
    None when there is no cost objective or no validation accuracy to plot."""
    costs = [o for o in objectives if o != "val_acc"]
    if not costs or "val_acc" not in objectives or not trials:
        return None
    cost = costs[0]
    scale = "macs_fraction" if cost == "macs" else cost

    def xs(rows: Sequence[dict[str, Any]]) -> list[float]:
        return [r.get(scale) for r in rows]

    plt, fig, axes = _figure(2 if finals else 1)
    ax = axes[0]
    ax.scatter(xs(trials), [100 * r["val_acc"] for r in trials], s=14, c="0.65", label="trials")
    front = sorted((r for r in trials if r.get("on_front")), key=lambda r: r.get(scale) or 0)
    ax.plot(xs(front), [100 * r["val_acc"] for r in front], "o-", c="tab:red", label="front")
    styles = {"uniform": ("s--", "tab:blue"), "sensitivity": ("^--", "tab:green")}
    for kind, (marker, color) in styles.items():
        rows = sorted((r for r in baselines if r["kind"] == kind and r.get("val_acc") is not None),
                      key=lambda r: r.get(scale) or 0)
        if rows:
            ax.plot(xs(rows), [100 * r["val_acc"] for r in rows], marker, c=color, label=kind)
    ax.set(xlabel=_COST_LABELS[cost], ylabel="val accuracy (%), proxy", title="search (proxy trials)")
    if budgets and cost in budgets:
        ax.axvline(budgets[cost], c="k", ls=":", label=f"budget {budgets[cost]:g}")
    ax.legend()
    if finals:
        ax = axes[1]
        for kind, (marker, color) in {"chosen": ("o-", "tab:red"), **styles}.items():
            rows = sorted((r for r in finals if r["kind"] == f"final:{kind}"),
                          key=lambda r: r.get(scale) or 0)
            if rows:
                ax.errorbar(xs(rows), [100 * r["test_acc"] for r in rows],
                            [100 * r["test_acc_std"] for r in rows], fmt=marker, c=color,
                            capsize=3, label=kind)
        ax.set(xlabel=_COST_LABELS[cost], ylabel="test accuracy (%)", title="final retrains")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
