"""Run results: measurement of the final model, ``results.json`` and the printed summary."""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.formatting import count as _fmt_count
from prunelab.formatting import nbytes as _fmt_bytes

#: Config keys that do not change what a run computes (left out of ``config_hash``).
#: ``init_strict`` only decides whether a run starts (a finished run loaded what it loaded).
NON_RESULT_KEYS = ("logger", "resume", "measure", "checkpoint", "hydra", "objective",
                   "init_strict", "control", "control_budget", "control_max_factor")
#: The "Rethinking" control's run directory inside a pruned run's (prunelab.control).
CONTROL_DIR = "control_scratch"
#: Top-level keys added after runs were written, left out at these defaults: a run that does not
#: use them keeps the identity it had before they existed (``config_hash``, ``resume=``).
ADDED_DEFAULTS = {"init_from": None, "calibration_batches": 20,
                  "train": {"adversarial": None, "epsilon": 0.1, "steps": 7, "alpha": None,
                            "fraction": 0.5, "start_epoch": 0}}
#: The same for keys added inside a group (``pruner.distribution``, ``schedule.rewind``).
ADDED_SUBKEY_DEFAULTS = {"pruner": {"distribution": None, "latency_runtime": "eager",
                                    "score": "magnitude"},
                         "hardware": {"runtime": "eager", "memory_format": "contiguous"},
                         "schedule": {"rewind": "none", "rewind_epoch": 0,
                                      "every_steps": None},
                         "data": {"shift": 0}}
#: Keys a method gained after runs were written that count only under one of its settings
#: (``pruner._target_`` -> key -> (setting, value)); left out otherwise, as added defaults are.
CONDITIONAL_METHOD_KEYS = {"prunelab.pruning.methods.Sensitivity": {
    "score_batches": ("score", "taylor"), "seed": ("score", "random")}}
#: Set by the run itself (``pretrained.init_identity``), absent from ``.hydra/config.yaml``:
#: compared only when both configs have it.
DERIVED_KEYS = ("init_from_sha256",)
#: ``hardware.int8`` was never read and is gone from the configs: runs written before its removal
#: keep their identity.
RETIRED_KEYS = ("hardware.int8",)
NON_RESULT_SUBKEYS = {"hardware": ("threads", "int8"), "trainer": ("enable_progress_bar",
                                                            "enable_model_summary",
                                                            "log_every_n_steps"),
                      # grouped batches train step for step the same (tests/unit/test_steps_per_batch.py);
                      # an image folder's workers read the same batches (test_imagefolder.py)
                      "data": ("steps_per_batch", "num_workers", "pin_memory",
                               "persistent_workers")}

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "omegaconf", "torchmetrics",
            "prunelab")


#: Where the seed appears in a resolved config (left out of ``config_hash(..., seedless=True)``).
SEED_KEYS = {"": ("seed",), "data": ("seed",), "pruner": ("seed",)}


def result_config(config: Mapping[str, Any], seedless: bool = False) -> dict[str, Any]:
    """The result-relevant part of a resolved config (what :func:`config_hash` hashes)."""
    cfg = {k: v for k, v in config.items() if k not in (*NON_RESULT_KEYS, *RETIRED_KEYS)
           and not (k in ADDED_DEFAULTS and v == ADDED_DEFAULTS[k])}
    for key, defaults in ADDED_SUBKEY_DEFAULTS.items():
        if isinstance(cfg.get(key), Mapping):
            cfg[key] = {k: v for k, v in cfg[key].items()
                        if not (k in defaults and v == defaults[k])}
    pruner = cfg.get("pruner")
    if isinstance(pruner, Mapping) and pruner.get("_target_") in CONDITIONAL_METHOD_KEYS:
        when = CONDITIONAL_METHOD_KEYS[pruner["_target_"]]
        cfg["pruner"] = {k: v for k, v in pruner.items()
                         if k not in when or pruner.get(when[k][0]) == when[k][1]}
    drop = {key: list(sub) for key, sub in NON_RESULT_SUBKEYS.items()}
    if seedless:
        for key, sub in SEED_KEYS.items():
            drop.setdefault(key, []).extend(sub)
    for key, subkeys in drop.items():
        if key == "":
            cfg = {k: v for k, v in cfg.items() if k not in subkeys}
        elif isinstance(cfg.get(key), Mapping):
            cfg[key] = {k: v for k, v in cfg[key].items() if k not in subkeys}
    return cfg


def config_hash(config: Mapping[str, Any], seedless: bool = False) -> str:
    """SHA-256 (first 16 hex digits) of the result-relevant part of a resolved config.

    ``seedless=True`` also leaves out the seeds: runs that differ only by seed share it (sweep
    reports group seeds by it)."""
    blob = json.dumps(result_config(config, seedless), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (an empty mapping stays a value)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                ignore: Sequence[str] = ()) -> list[str]:
    """``key (old vs new)`` for every flattened key whose value differs (``ignore``: dotted keys
    left out)."""
    old, new = flatten(old), flatten(new)
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [f"{k} ({old.get(k, '<unset>')!r} vs {new.get(k, '<unset>')!r})"
            for k in keys if old.get(k, "<unset>") != new.get(k, "<unset>")]


def run_config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The result-relevant differences of two resolved run configs (``key (old vs new)``)."""
    derived = [k for k in DERIVED_KEYS if k not in old or k not in new]
    return config_diff(result_config(old), result_config(new), ignore=(*RETIRED_KEYS, *derived))


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def measure_model(net: nn.Module, prunable: Sequence[str], input_shape: Sequence[int],
                  directory: Path, latency: bool = True, batch_sizes: Sequence[int] = (1, 64),
                  warmup: int = 10, runs: int = 50, threads: int | None = None,
                  size: bool = True) -> dict[str, Any]:
    """Sparsity, parameters, MACs, size on disk and CPU latency of ``net`` as it is now."""
    from prunelab import metrics as measure

    cpu_net = copy.deepcopy(net).float().cpu().eval().to(  # timed in the default layout,
        memory_format=torch.contiguous_format)             # whatever the training's
    sp = measure.sparsity_report(cpu_net, list(prunable))
    out: dict[str, Any] = {
        "sparsity": {"global": sp["global"], "per_layer": sp["per_layer"],
                     "zeros": sp["zeros"], "prunable": sp["total"]},
        "channel_sparsity": channel_sparsity(cpu_net, prunable),
        "params": measure.count_params(cpu_net),
    }
    from prunelab.compress.compact import macs_report

    # dense (executed on dense kernels), compact (dead channels removed), nonzero (= effective)
    out["macs"] = macs_report(cpu_net, tuple(input_shape))
    if size:
        out["size_bytes"] = measure.size_on_disk(cpu_net, directory)
    if latency:
        lat = measure.measure_latency(cpu_net, tuple(input_shape), batch_sizes=tuple(batch_sizes),
                                      threads=threads, warmup=warmup, min_runs=runs)
        out["latency_ms"] = {k: v["median_ms"] for k, v in lat.items()}
        out["latency_detail"] = lat
    return out


def run_results(cfg: Any, resolved: Mapping[str, Any], parts: Any, trainer: Any, ckpt: Any,
                test_metrics: Mapping[str, Any], measured: Mapping[str, Any], *,
                adversarial: Any, train_time: float, wall_time: float, out: Path,
                post_training: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``results.json`` of a finished ``train`` run (``parts``: its assemble.RunParts;
    ``post_training``: what an ``epochs=0`` run measured before and after pruning)."""
    from prunelab.config import choice
    from prunelab.robust import training_settings

    best_score = ckpt.best_model_score
    distiller = parts.distiller
    return {
        "model": parts.model_name,
        "data": parts.data_name,
        **parts.method.describe(),
        "schedule": choice("schedule", parts.schedule.name),
        "seed": int(cfg.seed),
        "epochs": int(cfg.epochs),
        "epochs_run": int(trainer.current_epoch),
        "target_sparsity": parts.sparsity,
        "init_from": cfg.get("init_from"),  # the starting weights (null: initialized)
        "init_from_sha256": cfg.get("init_from_sha256"),
        "post_training": None if post_training is None else dict(post_training),
        "mask_sparsity": parts.callback.masks.stats()["global"],
        "test_acc": float(test_metrics["test/acc"]),
        "test_loss": float(test_metrics["test/loss"]),
        "best_val_acc": None if best_score is None else float(best_score),
        "best_checkpoint": ckpt.best_model_path or None,
        "adversarial": adversarial,
        "adversarial_training": training_settings(cfg),  # train.adversarial (null: none)
        "ddp": parts.callback.rank_check or None,
        "hardware": choice("hardware", str(cfg.hardware.get("target", "cpu"))),
        "threads": torch.get_num_threads(),
        "warnings": parts.warnings,
        "distill": None if distiller is None else {
            "teacher": distiller.source, "temperature": distiller.temperature,
            "alpha": distiller.alpha},
        **measured,
        "train_time_s": train_time,
        "wall_time_s": wall_time,
        "config_hash": config_hash(resolved),
        "group_hash": config_hash(resolved, seedless=True),
        "versions": package_versions(),
        "results_path": str(out / "results.json"),
    }


def channel_sparsity(net: nn.Module, names: Sequence[str]) -> dict[str, Any]:
    """Fraction of output channels / neurons whose weights are all zero, global and per layer."""
    params = dict(net.named_parameters())
    per_layer, dead, total = {}, 0, 0
    for n in names:
        w = params[n].detach()
        if w.dim() < 2:
            continue
        zero = int((w.reshape(w.shape[0], -1) == 0).all(1).sum())
        per_layer[n] = zero / w.shape[0]
        dead += zero
        total += w.shape[0]
    return {"global": dead / total if total else 0.0, "per_layer": per_layer,
            "pruned_channels": dead, "channels": total}


def _target(res: Mapping[str, Any]) -> str:
    """What the run pruned towards: a sparsity, or latency_aware's budget (it sets no sparsity)."""
    lat = res.get("latency_aware")
    if lat:
        return (f"latency budget {lat['budget_ms']:g} ms at batch {lat['batch']}: "
                f"{lat['achieved_ms']:.3f} ms measured, {'met' if lat['met'] else 'NOT met'}")
    return f"target {res['target_sparsity']:.4f}"


def summary_rows(res: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (label, value) rows of the end-of-run summary."""
    rows = [
        ("run", f"model={res['model']} data={res['data']} pruner={res['pruner']} "
                f"schedule={res['schedule']} seed={res['seed']}"),
        ("sparsity", f"{res['sparsity']['global']:.4f} of weights ({_target(res)}), "
                     f"{res['channel_sparsity']['global']:.4f} of channels"),
        ("test acc", f"{res['test_acc']:.4f}  (loss {res['test_loss']:.4f})"),
        ("best val acc", "n/a" if res["best_val_acc"] is None else f"{res['best_val_acc']:.4f}"),
        ("params", f"{_fmt_count(res['params']['nonzero'])} non-zero / "
                   f"{_fmt_count(res['params']['total'])}"),
        ("MACs", _macs_row(res["macs"])),
    ]
    if "size_bytes" in res:
        rows.append(("size", f"{_fmt_bytes(res['size_bytes']['sparse_bytes'])} sparse / "
                             f"{_fmt_bytes(res['size_bytes']['dense_bytes'])} dense"))
    if "latency_ms" in res:
        rows.append(("CPU latency", "  ".join(f"{k.replace('_', ' ')}: {v:.3f} ms"
                                              for k, v in res["latency_ms"].items())))
    adv = res.get("adversarial")
    if adv:
        rows.append(("under attack", f"{adv['attack']} eps={adv['epsilon']:g}: "
                                      f"{adv['acc']:.4f} (clean {adv['clean_acc']:.4f} on the "
                                      f"same {adv['samples']} images)"))
    at = res.get("adversarial_training")
    if at:
        rows.append(("adv. training", f"{at['attack']} eps={at['epsilon']:g} on "
                                       f"{at['fraction']:g} of each batch from epoch "
                                       f"{at['start_epoch']}"))
    rows.append(("wall time", f"{res['wall_time_s']:.1f} s"))
    rows.append(("results", str(res["results_path"])))
    return rows


def _macs_row(macs: Mapping[str, Any]) -> str:
    """The summary's MACs: the compact network's (when known), non-zero, dense (as executed)."""
    nonzero = macs.get("nonzero", macs.get("effective"))
    parts = [] if macs.get("compact") is None else [f"{_fmt_count(macs['compact'])} compact"]
    return " / ".join(parts + [f"{_fmt_count(nonzero)} non-zero",
                               f"{_fmt_count(macs['dense'])} dense (as executed)"])


def print_summary(res: Mapping[str, Any], file=None) -> None:
    """Print the compact summary table (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prunelab summary", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for k, v in summary_rows(res):
        table.add_row(k, v)
    Console(file=file or sys.stdout, width=120, soft_wrap=True).print(table)
