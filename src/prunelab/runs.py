"""Finished runs: find a run's checkpoint and rebuild its network, masks, data and config.

``prunelab.load_run`` (:func:`load_run`) is the public way to load a run::

    run = prunelab.load_run("outputs/runs/2024-01-01_12-00-00-000000")  # or a .ckpt file
    logits = run.net(x)                        # the trained network, eval mode
    run.masks["features.0.weight"]             # bool, True = kept
    run.config.pruner, run.datamodule, run.checkpoint

Checkpoints are read with ``torch.load(..., weights_only=True)``: plain containers and tensors
only, no pickled objects (a teacher or ``resume=`` path may be someone else's file). A file
that needs pickle is refused with a one-line :class:`RunError` naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from prunelab.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["RunError", "LoadedRun", "load_run", "locate_checkpoint", "resume_location",
           "read_checkpoint", "checkpoint_config", "checkpoint_masks", "build_network"]

CHECKPOINTS = ("best", "last")


class RunError(UserError):
    """A run directory or checkpoint that cannot be used (one-line message)."""


@dataclass
class LoadedRun:
    """A finished run as a user sees it (see :func:`load_run`)."""

    #: the trained network with the checkpoint's weights, float32 on the CPU, in eval mode.
    net: nn.Module
    #: prunable parameter name (as in ``net.named_parameters()``) -> bool mask (True = kept);
    #: empty when the checkpoint holds no pruning state.
    masks: dict[str, torch.Tensor]
    #: the run's resolved config.
    config: DictConfig
    #: the run's data module (built, not set up: call ``setup()`` to read the data).
    datamodule: Any
    #: the checkpoint file the weights come from.
    checkpoint: Path

    @property
    def run_dir(self) -> Path:
        """The run directory (the parent of ``checkpoints/``, else the checkpoint's folder)."""
        parent = self.checkpoint.parent
        return parent.parent if parent.name == "checkpoints" else parent


def locate_checkpoint(run: str | Path | None, which: str = "best") -> Path:
    """The checkpoint of a run directory (``checkpoints/<which>.ckpt``, else ``last.ckpt``), or
    ``run`` itself when it is a file."""
    if run is None or str(run) == "":
        raise RunError("run= is required: a prunelab run directory or a .ckpt file")
    if which not in CHECKPOINTS:
        raise RunError(f"checkpoint={which!r}; allowed: {', '.join(CHECKPOINTS)}")
    run = str(run)
    path = Path(run).expanduser()
    if path.is_dir():
        for name in (f"{which}.ckpt", "last.ckpt"):
            cand = path / "checkpoints" / name
            if cand.is_file():
                return cand
        raise RunError(f"run={run!r}: no checkpoints/{which}.ckpt or checkpoints/last.ckpt "
                       f"there; allowed: a prunelab run directory or a .ckpt file")
    if not path.is_file():
        raise RunError(f"run={run!r} does not exist; allowed: a prunelab run directory or "
                       f"a .ckpt file")
    return path


def resume_location(value: str) -> tuple[Path, Path]:
    """(run directory, checkpoint) of ``resume=<value>``: a run directory (its
    ``checkpoints/last.ckpt``, which may not exist yet) or a ``.ckpt`` file in a run's
    ``checkpoints/`` folder (a run continues in its own directory); RunError otherwise."""
    path = Path(value).expanduser()
    if path.is_dir():
        return path, path / "checkpoints" / "last.ckpt"
    if path.is_file() and path.parent.name == "checkpoints":
        return path.parent.parent, path
    if path.is_file():
        raise RunError(f"resume={value!r} is not in a run's checkpoints/ folder: a run continues "
                       f"in its own directory; allowed: a run directory or a .ckpt file in its "
                       f"checkpoints/")
    raise RunError(f"resume={value!r}: no checkpoint found at {path}; allowed: a run directory "
                   f"with checkpoints/last.ckpt or a .ckpt file in one")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU; a one-line :class:`RunError` for a file
    that needs pickle (a pickled object inside) or is not a checkpoint at all."""
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None and not _looks_pickled(path):  # e.g. a text file
            raise RunError(f"run={str(path)!r} is not a readable checkpoint "
                           f"(UnpicklingError)") from None
        what = f"pickled object {found.group(1)}" if found else "unsupported pickle content"
        raise RunError(f"run={str(path)!r} needs pickle to load ({what}); prunelab loads "
                       f"checkpoints with weights_only=True") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input here
        raise RunError(f"run={str(path)!r} is not a readable checkpoint "
                       f"({type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise RunError(f"run={str(path)!r} is not a prunelab checkpoint (it holds a "
                       f"{type(ckpt).__name__}, not a dict)")
    return ckpt


def _looks_pickled(path: str | Path) -> bool:
    """Whether a file starts like a torch.save zip archive or a pickle stream (protocol >= 2)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def checkpoint_config(ckpt: dict[str, Any], path: str | Path) -> DictConfig:
    """The run config saved in a checkpoint (hyper-parameter ``config``)."""
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(config, dict) or "state_dict" not in ckpt or "model" not in config:
        raise RunError(f"run={str(path)!r} is not a prunelab checkpoint (no saved run "
                       f"config); allowed: checkpoints written by python -m prunelab.train")
    return OmegaConf.create(config)


def checkpoint_masks(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The pruning masks saved by :class:`~prunelab.pruning.PruningCallback` (``{}`` if none)."""
    states = ckpt.get("callbacks") or {}
    ordered = [states[k] for k in states if k == "PruningCallback"]
    ordered += [v for k, v in states.items() if k != "PruningCallback"]
    for state in ordered:
        if isinstance(state, dict) and "masks" in state and "events_done" in state:
            masks = state["masks"] or {}
            return {name: m.bool() for name, m in masks.items()}
    return {}


def build_network(cfg: DictConfig) -> tuple[nn.Module, Any]:
    """A fresh (untrained) network and data module from a run config (``model.weights`` not
    read: the checkpoint's state dict replaces them)."""
    from prunelab.data import build_datamodule
    from prunelab.models import build_from_config

    dm = build_datamodule(cfg.data)
    net = build_from_config(cfg.model, tuple(dm.input_shape), int(dm.num_classes),
                            load_weights=False)
    return net, dm


def _network(cfg: DictConfig, ckpt: dict[str, Any], path: Path) -> tuple[nn.Module, Any]:
    net, dm = build_network(cfg)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunError(f"run={str(path)!r}: its weights do not fit the network its config "
                       f"builds ({first})") from None
    return net, dm


def load_run(path: str | Path, checkpoint: str = "best") -> LoadedRun:
    """Load a finished run: ``path`` is a run directory (its ``checkpoints/<checkpoint>.ckpt``,
    else ``last.ckpt``) or a ``.ckpt`` file."""
    ckpt_path = locate_checkpoint(path, checkpoint)
    ckpt = read_checkpoint(ckpt_path)
    cfg = checkpoint_config(ckpt, ckpt_path)
    net, dm = _network(cfg, ckpt, ckpt_path)
    return LoadedRun(net=net.float().cpu().eval(), masks=checkpoint_masks(ckpt), config=cfg,
                     datamodule=dm, checkpoint=ckpt_path)
