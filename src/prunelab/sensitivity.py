"""Sensitivity analysis: ``python -m prunelab.sensitivity run=<run dir or checkpoint>``.

The classic recipe (Han et al. 2015; Distiller's sensitivity analysis): prune each prunable layer
alone, by magnitude, at a ladder of sparsities, measure validation accuracy without retraining,
and give the layers whose accuracy falls first the least pruning. Writes into its own run
directory:

- ``sensitivity.csv``: layer, sparsity, val_acc, drop (one row per layer and ratio);
- ``sensitivity.png``: validation accuracy against sparsity, one line per layer;
- ``profile.yaml``: per-layer sparsities reaching ``target_sparsity`` over all prunable weights,
  for ``python -m prunelab.train pruner=sensitivity pruner.profile=<profile.yaml>``.

Profile: for an allowed accuracy drop ``d``, each layer may go up to the largest ladder sparsity
before its drop first exceeds ``d``; the smallest ``d`` whose total reaches the target is found,
and the layers that step at that ``d`` are interpolated so that the total is exactly the target.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from prunelab.config import register_configs
from prunelab.runs import RunError, load_run, locate_checkpoint


class SensitivityError(RunError):
    """Bad input to the sensitivity analysis (one-line message)."""


def evaluate(net, loader, max_batches: int | None = None) -> float:
    import torch

    net.eval()
    correct = total = 0
    with torch.inference_mode():
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            correct += int((net(x).argmax(1) == y).sum())
            total += int(y.numel())
    return correct / max(total, 1)


def analyze(net, loader, names: Sequence[str], ratios: Sequence[float],
            max_batches: int | None = None) -> tuple[float, list[dict[str, Any]]]:
    """Base accuracy and one row per (layer, ratio): the layer alone pruned by magnitude."""
    import torch

    from prunelab.pruning.selection import select_masks

    params = dict(net.named_parameters())
    base = evaluate(net, loader, max_batches)
    rows = []
    for name in names:
        p = params[name]
        saved = p.detach().clone()
        for r in ratios:
            keep = select_masks({name: saved.abs()}, {name: saved != 0}, float(r), "layer")[name]
            with torch.no_grad():
                p.copy_(saved * keep)
            acc = evaluate(net, loader, max_batches)
            rows.append({"layer": name, "sparsity": float(r), "val_acc": acc, "drop": base - acc})
        with torch.no_grad():
            p.copy_(saved)
    return base, rows


def make_profile(rows: Sequence[Mapping[str, Any]], sizes: Mapping[str, int],
                 target: float) -> dict[str, float]:
    """Per-layer sparsities whose size-weighted mean is exactly ``target`` (see module doc)."""
    layers = list(sizes)
    curves = {n: sorted((r["sparsity"], r["drop"]) for r in rows if r["layer"] == n) for n in layers}
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
            lo = {n: allowed(n, prev) for n in layers} if prev is not None else {n: 0.0 for n in layers}
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


def plot(rows: Sequence[Mapping[str, Any]], base: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
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


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    import yaml

    from prunelab.pruning import Pruner

    ratios = list(cfg.ratios)
    if not ratios or any(not isinstance(r, (int, float)) or not 0 < r < 1 for r in ratios):
        raise SensitivityError(f"ratios={ratios} must be numbers in (0, 1)")
    target = cfg.target_sparsity
    if not isinstance(target, (int, float)) or not 0 < target < 1:
        raise SensitivityError(f"target_sparsity={target!r} must be a number in (0, 1)")
    ckpt = locate_checkpoint(cfg.run, cfg.checkpoint)
    run_cfg, net, dm = load_run(ckpt)
    out = Path(output_dir or HydraConfig.get().runtime.output_dir)
    pcfg = run_cfg.pruner
    names = list(Pruner(include=pcfg.get("include"), exclude=pcfg.get("exclude")).resolve(net))
    dm.setup("fit")
    loader = dm.val_dataloader()
    base, rows = analyze(net, loader, names, sorted(ratios), cfg.get("max_batches"))
    sizes = {n: dict(net.named_parameters())[n].numel() for n in names}
    profile = make_profile(rows, sizes, float(target))
    with open(out / "sensitivity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["layer", "sparsity", "val_acc", "drop"])
        w.writeheader()
        w.writerows(rows)
    plot(rows, base, out / "sensitivity.png")
    doc = {"target_sparsity": float(target), "base_val_acc": base, "checkpoint": str(ckpt),
           "layers": {n: round(float(s), 6) for n, s in profile.items()}}
    (out / "profile.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"base val acc {base:.4f}; per-layer profile for sparsity {target}:")
    for n, s in profile.items():
        print(f"  {n:40s} {s:.4f}")
    print(f"wrote {out / 'sensitivity.csv'}, {out / 'sensitivity.png'}, {out / 'profile.yaml'}")
    print(f"use: python -m prunelab.train pruner=sensitivity pruner.profile={out / 'profile.yaml'}")
    return {"base_val_acc": base, "rows": rows, "profile": profile, "output_dir": str(out)}


@hydra.main(version_base="1.3", config_path="conf", config_name="sensitivity")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except RunError as exc:
        print(f"prunelab: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
