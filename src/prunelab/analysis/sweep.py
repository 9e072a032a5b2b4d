"""Sweep reports: every ``results.json`` under a directory as one table and plots.

:func:`write_report` writes ``report.md``, ``report.csv`` and the plots of :mod:`prunelab.plots`
beside the runs, listing the jobs that failed or did not finish. Seeds of one configuration are
combined (mean and std); runs that differ in anything but the seed stay apart (``group_hash``).
Lottery runs (:mod:`prunelab.tickets`) below the directory get their own report:
``lottery_report.md|csv`` (mean and spread over seeds per control and level) and ``lottery.png``.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunelab.errors import UserError
from prunelab.formatting import Column, fixed, markdown_table, percent
from prunelab.results import CONTROL_DIR


class ReportError(UserError):
    """Nothing to report (one-line message)."""


GROUP_KEYS = ("data", "model", "pruner", "granularity", "scope", "schedule", "target_sparsity")


#: What the table needs of every run's results.json.
REQUIRED_KEYS = ("test_acc", "sparsity", "wall_time_s")


def read_results(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(a run's results, None), or (None, why the file cannot be reported: unreadable, not
    JSON, keys missing)."""
    try:
        res = json.loads(path.read_text())
    except OSError as exc:
        return None, f"bad results.json: cannot read it ({exc.strerror})"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"bad results.json: not valid JSON ({exc.__class__.__name__}: {exc})"
    if not isinstance(res, dict):
        return None, f"bad results.json: a JSON {type(res).__name__}, not an object"
    if res.get("kind") == "lottery_level":
        return res, None
    missing = [k for k in REQUIRED_KEYS if k not in res]
    if not isinstance(res.get("sparsity", {}), dict) or "global" not in res.get("sparsity", {}):
        missing.append("sparsity.global")
    if missing:
        return None, f"bad results.json: no {', '.join(missing)}"
    return res, None


def collect(directory: str | Path) -> list[dict[str, Any]]:
    """Every good ``results.json`` under ``directory`` (recursively), with its run directory
    (the bad ones are failures: :func:`collect_failures`)."""
    rows = []
    for path in sorted(Path(directory).rglob("results.json")):
        if CONTROL_DIR in path.parts[:-1]:
            continue  # a run's scratch control: reported in its run's row (scratch_acc)
        res, _ = read_results(path)
        if res is None or res.get("kind") == "lottery_level":
            continue  # a level of a lottery run: see collect_lottery
        res["run_dir"] = str(path.parent)
        rows.append(res)
    return rows


def distinct(rows: Sequence[dict[str, Any]], identity: Any,
             root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per ``identity(row)`` (the first by run directory), and a line for each run
    directory that repeats one counted already: the same configuration and seed run twice (two
    directories of one tree) is one sample, not two seeds."""
    seen: dict[Any, str] = {}
    kept, repeats = [], []
    for r in sorted(rows, key=lambda r: r["run_dir"]):
        key = identity(r)
        if key not in seen:
            seen[key] = r["run_dir"]
            kept.append(r)
            continue
        line = (f"`{Path(r['run_dir']).relative_to(root)}` repeats "
                f"`{Path(seen[key]).relative_to(root)}`")
        if line not in repeats:
            repeats.append(line)
    return kept, repeats


def run_identity(res: dict[str, Any]) -> Any:
    """What makes two runs of a tree the same run: the whole composed config
    (``.hydra/config.yaml`` without ``logger`` and ``resume``), seeds included. ``config_hash``
    alone leaves out settings that change reported numbers (the tested checkpoint's rule,
    measurement, the scratch control's budget); a run without its config is its own."""
    import yaml

    path = Path(res["run_dir"]) / ".hydra" / "config.yaml"
    try:
        conf = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        conf = None
    if not isinstance(conf, dict):
        return ("dir", res["run_dir"])
    for key in ("logger", "resume"):
        conf.pop(key, None)
    return json.dumps(conf, sort_keys=True, default=str)


def lottery_identity(row: dict[str, Any]) -> Any:
    """A lottery level's identity: its run's (:func:`collect_lottery`), control and level."""
    return (row["run_identity"], row["control"], row["level"])


def _lottery_run_identity(run: Path) -> Any:
    """A lottery run's identity config (``lottery.json``: seeds and data split included); a run
    without a readable one is its own."""
    from prunelab.tickets.store import read_meta

    try:
        return json.dumps(read_meta(run)["config"], sort_keys=True, default=str)
    except (OSError, ValueError, KeyError, TypeError):
        return ("dir", str(run))


def _repeated(repeats: Sequence[str]) -> str:
    if not repeats:
        return ""
    lines = ["", f"**{len(repeats)} run(s) repeat a configuration and seed already counted** "
                 f"(counted once: the same seed twice is not two seeds):", ""]
    return "\n".join(lines + [f"- {x}" for x in repeats]) + "\n"


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _macs(res: dict[str, Any], kind: str) -> float | None:
    """A run's ``kind`` MACs (compact, nonzero) as a fraction of its dense MACs, or None."""
    macs = res.get("macs") or {}
    value = macs.get(kind, macs.get("effective") if kind == "nonzero" else None)
    return None if value is None or not macs.get("dense") else value / macs["dense"]


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (seeds combined): mean and std of test accuracy; means of
    sparsity, parameters kept, MACs kept (of the compact network, and non-zero), size and
    latency."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        # runs that differ in anything but the seed (regularizer, epochs, ...) stay apart
        groups[tuple(r.get(k) for k in GROUP_KEYS) + (adversarial_training(r),
                                                      r.get("group_hash"))].append(r)
    out = []
    for key, rs in groups.items():
        accs = [r["test_acc"] for r in rs]
        row = dict(zip(GROUP_KEYS, key))
        row["adv_train"], row["group_hash"] = key[-2:]  # with/without adversarial training apart
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
            # MACs named for what they are (compress.compact.macs_report): the compact network's
            # (None for results written before it was recorded) and the non-zero MACs
            "macs_compact_ratio": _mean([_macs(r, "compact") for r in rs]),
            "macs_nonzero_ratio": _mean([_macs(r, "nonzero") for r in rs]),
            "size_kb": _mean([r["size_bytes"]["sparse_bytes"] / 1e3 for r in rs
                              if "size_bytes" in r]),
            "latency_b1_ms": _mean([x.get("batch_1") for x in lat]),
            "latency_b64_ms": _mean([x.get("batch_64") for x in lat]),
            # a latency that stayed disturbed by other work (metrics.timing): named in the report
            "latency_noisy": any(v.get("noisy") for r in rs
                                 for v in (r.get("latency_detail") or {}).values()),
            # accuracy under eval.adversarial's attack, beside the clean test accuracy
            "adv_attack": next((f"{x['attack']} eps={x['epsilon']:g}" for x in adv if x), None),
            "adv_acc": _mean([x.get("acc") for x in adv]),
            "adv_clean_acc": _mean([x.get("clean_acc") for x in adv]),  # same images, clean
            # control=scratch (Liu et al. 2019): the same architecture trained from scratch
            "scratch_acc": _mean([(r.get("control") or {}).get("test_acc") for r in rs]),
            "wall_time_s": statistics.mean(r["wall_time_s"] for r in rs),
            "per_layer": {n: statistics.mean(r["sparsity"]["per_layer"].get(n, 0.0) for r in rs)
                          for n in (rs[0]["sparsity"].get("per_layer") or {})},
        })
        out.append(row)
    out.sort(key=lambda r: tuple(str(r[k]) for k in ("data", "model", "target_sparsity"))
             + (-r["test_acc_mean"],))
    _beside(out)
    return out


def _beside(rows: list[dict[str, Any]]) -> None:
    """Dense and random accuracy of the same data and model (random: at the same target) beside
    every row, when the sweep has them (``dense_acc``, ``random_acc``)."""
    dense = defaultdict(list)
    rand = defaultdict(list)
    for r in rows:
        if r["pruner"] == "none":
            dense[(r["data"], r["model"])].append(r["test_acc_mean"])
        elif r["pruner"] == "random":
            rand[(r["data"], r["model"], r["target_sparsity"])].append(r["test_acc_mean"])
    for r in rows:
        r["dense_acc"] = _mean(dense.get((r["data"], r["model"]), []))
        r["random_acc"] = _mean(rand.get((r["data"], r["model"], r["target_sparsity"]), []))


def collect_failures(directory: str | Path) -> list[dict[str, str]]:
    """Jobs of a sweep without usable results: a bad ``results.json`` (with the reason), failed
    (``error.json``, written by the failing job) or unfinished (a Hydra job directory,
    ``.hydra/``, and nothing else)."""
    out = []
    directory = Path(directory)
    for d in sorted({p.parent for p in directory.rglob("error.json")}
                    | {p.parent for p in directory.rglob(".hydra")}
                    | {p.parent for p in directory.rglob("results.json")}):
        if (d / "results.json").is_file():
            _, problem = read_results(d / "results.json")
            if problem is not None:
                out.append({"run_dir": str(d.relative_to(directory)) or ".", "error": problem})
            continue
        if (d / "lottery.json").is_file():
            continue
        err = "unfinished: no results.json (killed or still running)"
        if (d / "error.json").is_file():
            try:
                err = json.loads((d / "error.json").read_text()).get("error", err)
            except (OSError, json.JSONDecodeError):
                pass
        out.append({"run_dir": str(d.relative_to(directory)) or ".", "error": err})
    return out


COLUMNS: list[Column] = [
    ("data", "data", None), ("model", "model", None), ("pruner", "pruner", None),
    ("target_sparsity", "target", fixed(4, floats_only=True)),
    ("sparsity", "sparsity", fixed(4, floats_only=True)),
    ("channel_sparsity", "channels", fixed(4, floats_only=True)),
    ("adv_train", "adv. training", None),
    ("test_acc_mean", "test acc", percent), ("test_acc_std", "std", percent),
    ("adv_attack", "attack", None), ("adv_acc", "adv acc", percent),
    ("scratch_acc", "scratch acc", percent),  # control=scratch; shown when a run has one
    ("dense_acc", "dense acc", percent), ("random_acc", "random acc", percent),
    ("seeds", "seeds", None), ("params_kept", "params kept", fixed(4, floats_only=True)),
    ("macs_compact_ratio", "MACs kept (compact)", fixed(4, floats_only=True)),
    ("macs_nonzero_ratio", "MACs kept (non-zero)", fixed(4, floats_only=True)),
    ("size_kb", "size KB", fixed(1)),
    ("latency_b1_ms", "ms @1", fixed(3)), ("latency_b64_ms", "ms @64", fixed(3)),
    ("wall_time_s", "wall s", fixed(1))]
#: Columns shown only when some row has a value (the others are always shown).
OPTIONAL_COLUMNS = ("scratch_acc", "adv_attack", "adv_acc", "adv_train", "dense_acc",
                    "random_acc")


def adversarial_training(res: dict[str, Any]) -> str:
    """A run's ``train.adversarial`` in words (``no``: trained on clean batches only)."""
    at = res.get("adversarial_training")
    if not at:
        return "no"
    return (f"{at['attack']} eps={at['epsilon']:g} frac={at['fraction']:g} from epoch "
            f"{at['start_epoch']}")


def markdown(summary: Sequence[dict[str, Any]], failures: Sequence[dict[str, str]] = (),
             repeats: Sequence[str] = ()) -> str:
    shown = [c for c in COLUMNS if c[0] not in OPTIONAL_COLUMNS
             or any(r.get(c[0]) not in (None, "no") for r in summary)]
    md = markdown_table(summary, shown)
    noisy = [r for r in summary if r.get("latency_noisy")]
    if noisy:
        md += ("\n**Latency measured while other work shared the cores** (marked `\"noisy\": "
               "true` in results.json; not a clean figure): "
               + ", ".join(f"{r['model']} {r['pruner']} @{r['target_sparsity']}" for r in noisy)
               + "\n")
    if failures:
        lines = ["", f"**{len(failures)} job(s) without results:**", ""]
        lines += [f"- `{f['run_dir']}`: {f['error']}" for f in failures]
        md += "\n".join(lines) + "\n"
    return md + _repeated(repeats)


def write_report(directory: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    """``report.md``, ``report.csv`` and the plots for the runs under ``directory`` (and the
    lottery report for lottery runs). Raises ReportError when there is nothing to report."""
    from prunelab.plots import plot_sweep

    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"{str(directory)!r} is not a directory; allowed: a directory holding "
                          f"prunelab runs (results.json, lottery runs)")
    lottery = write_lottery_report(directory, quiet=quiet)
    rows, repeats = distinct(collect(directory), run_identity, directory)
    summary = summarize(rows)
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
        raise ReportError(f"no results.json under {directory}")
    fields = [k for k in summary[0] if k != "per_layer"]
    with open(directory / "report.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(summary)
    md = markdown(summary, failures, repeats)
    pngs = plot_sweep(summary, directory)
    md += "\n" + "".join(f"![{p.stem}]({p.name})\n" for p in pngs)
    (directory / "report.md").write_text(md)
    if not quiet:
        print(md, end="")
        print(f"wrote {directory / 'report.md'}, report.csv and {len(pngs)} plots")
    return summary


# -- lottery tickets -------------------------------------------------------------------------------
def collect_lottery(directory: str | Path) -> list[dict[str, Any]]:
    """The finished levels of every lottery run under ``directory`` (a control's own copy of its
    ticket, ``<run>/ticket/``, is left out: the ticket run itself is counted)."""
    from prunelab.tickets.store import read_levels, runs_below

    rows = []
    for run in runs_below(directory):
        identity = _lottery_run_identity(run)  # lottery.json read once per run
        rows += [dict(row, run_dir=str(run), run_identity=identity) for row in read_levels(run)]
    return rows


def write_lottery_report(directory: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    """``lottery_report.md|csv`` and ``lottery.png`` for the lottery runs under ``directory``."""
    from prunelab.plots import plot_lottery
    from prunelab.tickets.summary import lottery_curves, write_table

    directory = Path(directory)
    rows, repeats = distinct(collect_lottery(directory), lottery_identity, directory)
    curves = lottery_curves(rows)
    if not curves:
        return []
    md = write_table(directory / "lottery_report", curves, _repeated(repeats))
    seeds = max(r["seeds"] for r in curves)
    plot_lottery(curves, directory / "lottery.png",
                 title=f"lottery tickets, mean of {seeds} seed(s)")
    if not quiet:
        print(md, end="")
        print(f"wrote {directory / 'lottery_report.md'}, lottery_report.csv and lottery.png")
    return curves
