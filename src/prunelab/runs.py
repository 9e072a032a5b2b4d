"""Finished runs: find a run's checkpoint and rebuild its network, data and config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


class RunError(ValueError):
    """A run directory or checkpoint that cannot be used (one-line message)."""


def locate_checkpoint(run: str | None, which: str = "best") -> Path:
    """A checkpoint path from a run directory (``checkpoints/<which>.ckpt``, else last) or a file."""
    if not run:
        raise RunError("run= is required: a prunelab run directory or a .ckpt file")
    path = Path(run)
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


def load_run(ckpt_path: Path):
    """(config, network with the checkpoint's weights, datamodule) of a prunelab checkpoint."""
    import torch
    from hydra.utils import instantiate

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input here
        raise RunError(f"run={str(ckpt_path)!r} is not a readable checkpoint "
                       f"({type(exc).__name__})") from None
    config = (ckpt.get("hyper_parameters") or {}).get("config") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict) or "state_dict" not in ckpt or "model" not in config:
        raise RunError(f"run={str(ckpt_path)!r} is not a prunelab checkpoint (no saved run "
                       f"config); allowed: checkpoints written by python -m prunelab.train")
    cfg = OmegaConf.create(config)
    dm = instantiate(cfg.data)
    net = instantiate(cfg.model, input_shape=tuple(dm.input_shape), num_classes=int(dm.num_classes))
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return cfg, net, dm
