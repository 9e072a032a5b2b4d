"""The lottery's settings: validation, the result-relevant config of a run and its identity.

A lottery run directory is identified by :func:`result_config` (the resolved config without the
keys in :data:`FREE_KEYS`): a rerun must match it, a control must match its ticket run but for
:data:`CONTROL_KEYS`. :func:`group_hash` is the identity of the runs a report averages together
(seeds and control left out). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prunelab.errors import ConfigError

CONTROLS = ("none", "random_reinit", "random_mask")
#: Keys that may differ between invocations on one run directory (length, where masks come
#: from, and settings that do not change results).
FREE_KEYS = ("resume", "lottery.levels", "lottery.masks_from", "logger", "hydra",
             "hardware.threads", "data.steps_per_batch", "data.num_workers", "data.pin_memory",
             "data.persistent_workers", "trainer.enable_progress_bar", "trainer.enable_model_summary",
             "trainer.log_every_n_steps")
#: Keys in which a control run and the ticket run it takes masks from may differ.
CONTROL_KEYS = ("lottery.control",)
#: Keys added after lottery runs were written, left out at these defaults (so those runs keep
#: their identity: reruns, controls, report groups).
ADDED_KEYS = {"hardware.memory_format": "contiguous"}
#: Flattened keys that :func:`group_hash` leaves out besides the top-level ``seed``.
GROUP_FREE_KEYS = ("data.seed", *CONTROL_KEYS)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def validate(cfg: DictConfig) -> dict[str, Any]:
    """The checked lengths, rewind point and control (no heavy import; ConfigError). The
    pruning values (fractions, scope, include/exclude) are checked where they become the
    :class:`~prunelab.pruning.IMP` method (:func:`prunelab.tickets.masks.imp_method`)."""
    lc = cfg.lottery
    out = {
        "levels": _count("lottery.levels", lc.levels, 1),
        "epochs": _count("epochs", cfg.epochs, 1),
        "rewind_step": _count("lottery.rewind_step", lc.rewind_step, 0),
        "rewind_epoch": (None if lc.rewind_epoch is None
                         else _count("lottery.rewind_epoch", lc.rewind_epoch, 0)),
    }
    if lc.control not in CONTROLS:
        raise ConfigError(f"lottery.control={lc.control!r}; allowed: {', '.join(CONTROLS)}")
    if out["rewind_epoch"] is not None and out["rewind_step"]:
        raise ConfigError(f"lottery.rewind_step={out['rewind_step']} and lottery.rewind_epoch="
                          f"{out['rewind_epoch']}: set one of them")
    if out["rewind_epoch"] is not None and out["rewind_epoch"] >= out["epochs"]:
        raise ConfigError(f"lottery.rewind_epoch={out['rewind_epoch']} is beyond level 0's "
                          f"length: allowed 0..{out['epochs'] - 1} (epochs={out['epochs']})")
    return out


def result_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, flattened (``a.b.c`` keys), without the keys in :data:`FREE_KEYS`
    (what a rerun must match)."""
    from prunelab.results import flatten

    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    return {k: v for k, v in flatten(resolved).items()
            if not any(k == f or k.startswith(f + ".") for f in FREE_KEYS)}


def _without_added(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not (k in ADDED_KEYS and v == ADDED_KEYS[k])}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                ignore: Sequence[str] = ()) -> list[str]:
    """``key (old vs new)`` for every key whose value differs (``RETIRED_KEYS`` left out)."""
    from prunelab.results import RETIRED_KEYS
    from prunelab.results import config_diff as diff

    return diff(_without_added(old), _without_added(new), ignore=(*ignore, *RETIRED_KEYS))


def group_hash(config: Mapping[str, Any]) -> str:
    """The identity of the runs a report averages together: :func:`prunelab.results.config_hash`
    (``seedless``) of a :func:`result_config` without :data:`GROUP_FREE_KEYS` (seeds, control)."""
    from prunelab.results import config_hash

    return config_hash({k: v for k, v in _without_added(config).items()
                        if k not in GROUP_FREE_KEYS}, seedless=True)
