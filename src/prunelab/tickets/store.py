"""A lottery run on disk: every file name in this one module (as open_lth keeps them).

::

    <run>/lottery.json       the config (checked on every rerun), overrides
    <run>/init.pt, rewind.pt θ0 and θk
    <run>/level_XX/          mask.pt, start.pt, end.pt, results.json, checkpoints/, csv/
    <run>/summary.md|csv, lottery.png   after every level
    <run>/ticket/            a control's own ticket run (when no lottery.masks_from is given)

A level is finished when its ``results.json`` exists; that file is written last, after
everything else the level writes is complete, and every file is written atomically
(:mod:`prunelab.files`), so a killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunelab.files import save_torch_atomic, write_json_atomic

META = "lottery.json"
INIT = "init.pt"
REWIND = "rewind.pt"
MASK = "mask.pt"
START = "start.pt"
END = "end.pt"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
#: ``ModelCheckpoint`` file name of the best checkpoint (the iteration is read back from it).
BEST_CHECKPOINT = "best-step={step}"
SUMMARY = "summary"  # summary.md and summary.csv
PLOT = "lottery.png"
OWN_TICKET = "ticket"


def level_dir(run_dir: str | Path, level: int) -> Path:
    return Path(run_dir) / f"level_{level:02d}"


def level_done(run_dir: str | Path, level: int) -> bool:
    return (level_dir(run_dir, level) / RESULTS).is_file()


def read_levels(run_dir: str | Path) -> list[dict[str, Any]]:
    """The results of the finished levels of a run, in level order."""
    rows = []
    for path in sorted(Path(run_dir).glob(f"level_*/{RESULTS}")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(rows, key=lambda r: r["level"])


def read_result(run_dir: str | Path, level: int) -> dict[str, Any]:
    return json.loads((level_dir(run_dir, level) / RESULTS).read_text())


def write_result(run_dir: str | Path, level: int, result: Mapping[str, Any]) -> None:
    """The level's ``results.json``: written last, it marks the level finished."""
    write_json_atomic(level_dir(run_dir, level) / RESULTS, result)


def load(path: str | Path) -> Any:
    """A tensor file of a run (weights_only: never executes pickled code)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def save(obj: Any, path: str | Path) -> None:
    save_torch_atomic(obj, path)


def last_checkpoint(run_dir: str | Path, level: int) -> Path:
    return level_dir(run_dir, level) / CHECKPOINTS / LAST_CHECKPOINT


def step_of(path: str | Path | None) -> int | None:
    """The iteration in a best checkpoint's name (``best-step=1234.ckpt``), None if unknown."""
    if not path:
        return None
    stem = Path(path).stem
    try:
        return int(stem.split("=", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return None


# -- lottery.json ----------------------------------------------------------------------------------
def is_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / META).is_file()


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / META).read_text())


def write_meta(run_dir: str | Path, config: Mapping[str, Any], control: str, seed: int,
               internal: bool, overrides: Sequence[str]) -> None:
    """``lottery.json``, once: a rerun never rewrites it."""
    path = Path(run_dir) / META
    if path.is_file():
        return
    write_json_atomic(path, {"config": dict(config), "control": control, "seed": int(seed),
                             "internal": internal, "overrides": list(overrides),
                             "created": time.strftime("%Y-%m-%d %H:%M:%S")})


def runs_below(directory: str | Path, internal: bool = False) -> list[Path]:
    """The lottery run directories under ``directory`` (itself included), without the controls'
    own ticket runs unless ``internal``."""
    out = []
    for meta in sorted(Path(directory).rglob(META)):
        try:
            if not internal and json.loads(meta.read_text()).get("internal"):
                continue
        except (OSError, json.JSONDecodeError):
            continue
        out.append(meta.parent)
    return out
