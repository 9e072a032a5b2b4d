"""The "Rethinking" control (Liu et al. 2019, "Rethinking the Value of Network Pruning"):
``control=scratch`` trains a pruned run's final architecture from a fresh initialization, in
``<run>/control_scratch/``, and records its accuracy beside the pruned run's (results.json
``control``; the sweep report's ``scratch acc`` column).

- The architecture: for a structured run, the compact network (its dead channels removed,
  :func:`prunelab.compress.compact`), trained dense; for an unstructured run, the final mask,
  trained as a fixed mask from the first step (``pruner=fixed_mask``).
- The initialization is fresh: the network is built again with another seed (the run's seed
  through :func:`prunelab.seeds.derive_seed`), while the data split and order keep the run's
  seed.
- The budget: ``control_budget=epochs`` (Scratch-E) trains as many epochs as the pruned run;
  ``compute`` (Scratch-B) scales them by the dense over the pruned network's MACs (compact MACs
  for structured, non-zero MACs for unstructured), at most ``control_max_factor`` times.

The control is an ordinary run in its own directory, so a killed control resumes from its own
last checkpoint when the command is run again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from prunelab.config import target_name
from prunelab.errors import ConfigError
from prunelab.results import CONTROL_DIR

BUDGETS = ("epochs", "compute")
SCRATCH_SALT = 0x5C2A7C  # derive_seed(seed, SCRATCH_SALT): the control's initialization seed


def control_kind(cfg: DictConfig) -> str | None:
    """``control`` of a run config: ``scratch`` or None (a one-line ConfigError otherwise)."""
    value = cfg.get("control")
    if value in (None, "", "None", "null"):
        return None
    if value != "scratch":
        raise ConfigError(f"control={value!r}; allowed: scratch, null")
    return "scratch"


def check_control(cfg: DictConfig, sparsity: float) -> None:
    """``control``, ``control_budget`` and ``control_max_factor``; a run without a final mask
    (dense, or sparsity=0) has nothing to train from scratch."""
    if control_kind(cfg) is None:
        return
    budget = cfg.get("control_budget", "epochs")
    if budget not in BUDGETS:
        raise ConfigError(f"control_budget={budget!r}; allowed: {', '.join(BUDGETS)}")
    factor = cfg.get("control_max_factor", 2.0)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1:
        raise ConfigError(f"control_max_factor={factor!r} must be a number >= 1")
    if sparsity == 0 or target_name(cfg.get("pruner")) == "Dense":
        raise ConfigError("control=scratch trains this run's final pruned architecture from a "
                          "fresh initialization, but this run has no final mask (sparsity=0 or "
                          "pruner=none); allowed: a pruning run with sparsity > 0")
    if int(cfg.get("epochs", 0)) == 0:
        raise ConfigError("control=scratch trains for the pruned run's epochs, and epochs=0 "
                          "trains none; allowed: epochs >= 1")


def fresh_architecture(path: str, input_shape: Any = None, num_classes: Any = None) -> nn.Module:
    """The compact architecture saved at ``path`` with fresh weights (``model=custom``): the
    model is built again from its config (fresh initialization from the current seed), its
    layers shrunk to the saved shapes and initialized again: ``reset_parameters`` (PyTorch's
    default), then a zoo model's own ``init`` scheme over the whole network (xavier, kaiming,
    ...). A library model's shrunk layers keep PyTorch's default initialization."""
    from prunelab.compress.compact import compact_architecture

    model, saved, shrunk = compact_architecture(path)
    for name in shrunk:
        m = model.get_submodule(name)
        if not hasattr(m, "reset_parameters"):
            raise ConfigError(f"control=scratch cannot initialize the shrunk module {name!r} "
                              f"({type(m).__name__} has no reset_parameters)")
        m.reset_parameters()
    scheme = (saved.get("model_config") or saved.get("model_kwargs") or {}).get("init")
    if isinstance(scheme, str) and scheme != "default":  # the zoo model's own scheme, as built
        from prunelab.models.base import init_weights

        init_weights(model, scheme)
    return model


def _budget(cfg: DictConfig, results: dict[str, Any], structured: bool) -> tuple[int, float]:
    epochs = int(cfg.epochs)
    if cfg.get("control_budget", "epochs") != "compute":
        return epochs, 1.0
    macs = results.get("macs") or {}
    pruned = macs.get("compact" if structured else "nonzero") or macs.get("dense") or 1
    factor = min(float(macs.get("dense", pruned)) / float(pruned),
                 float(cfg.get("control_max_factor", 2.0)))
    return max(1, int(round(epochs * factor))), factor


def run_scratch(cfg: DictConfig, out: Path,
                results: dict[str, Any], run: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Train the control in ``out/control_scratch`` with ``run`` (``prunelab.train.run``) and
    return what the pruned run's results.json records of it."""
    from prunelab.compress.compact import compact, save_compact
    from prunelab.files import save_torch_atomic
    from prunelab.runs import load_run
    from prunelab.seeds import derive_seed

    sub = out / CONTROL_DIR
    sub.mkdir(parents=True, exist_ok=True)
    loaded = load_run(out)
    structured = results.get("granularity") == "structured"
    epochs, factor = _budget(cfg, results, structured)
    ccfg = copy.deepcopy(cfg)
    OmegaConf.set_readonly(ccfg, False)
    seed = int(cfg.seed)
    with open_dict(ccfg):
        if isinstance(ccfg.get("data"), DictConfig) and "seed" in ccfg.data:
            ccfg.data.seed = seed  # the same split and order as the pruned run
        ccfg.seed = derive_seed(seed, SCRATCH_SALT) % 2**32  # a fresh initialization
        ccfg.epochs = epochs
        ccfg.control = None
        ccfg.resume = None
        ccfg.init_from = None
        ccfg.pop("init_from_sha256", None)
        if isinstance(ccfg.get("model"), DictConfig) and "weights" in ccfg.model:
            ccfg.model.weights = None  # fresh: no pretrained weights either
        if isinstance(ccfg.get("schedule"), DictConfig) and "rewind" in ccfg.schedule:
            ccfg.schedule.rewind = "none"  # the control prunes nothing on a schedule
        if structured:
            shape = tuple(int(d) for d in loaded.datamodule.input_shape)
            small, _ = compact(loaded.net, shape)
            model_config = OmegaConf.to_container(cfg.model, resolve=True)
            save_compact(small, sub / "architecture.pt", input_shape=shape,
                         num_classes=int(loaded.datamodule.num_classes),
                         model_config=model_config)
            ccfg.model = {"_target_": "prunelab.control.fresh_architecture",
                          "path": str(sub / "architecture.pt")}
            ccfg.pruner = {"_target_": "prunelab.pruning.methods.Dense", "include": None,
                           "exclude": [], "default_sparsity": 0.0}
            ccfg.sparsity = 0.0
        else:
            masks = {n: m.cpu() for n, m in loaded.masks.items()}
            save_torch_atomic(masks, sub / "masks.pt")
            total = sum(m.numel() for m in masks.values())
            ccfg.pruner = {"_target_": "prunelab.pruning.methods.FixedMask",
                           "masks": str(sub / "masks.pt"),
                           "include": list(masks), "exclude": [], "default_sparsity": 0.0}
            ccfg.sparsity = sum(int((~m).sum()) for m in masks.values()) / total
    done = run(ccfg, sub)
    return {"kind": "scratch", "budget": cfg.get("control_budget", "epochs"),
            "architecture": "compact" if structured else "mask", "epochs": epochs,
            "epochs_factor": factor, "init_seed": int(ccfg.seed),
            "test_acc": done.get("test_acc"), "best_val_acc": done.get("best_val_acc"),
            "dir": CONTROL_DIR}


__all__ = ["BUDGETS", "check_control", "control_kind", "fresh_architecture", "run_scratch"]
