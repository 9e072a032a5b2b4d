"""A finished run as measure and export need it: its network, data, prunable names and results,
and its compact network."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunelab.deploy.options import DeployError


@dataclass
class DeployRun:
    cfg: Any  # the run's config
    net: nn.Module  # float32, CPU, eval mode
    dm: Any  # its data module (not set up)
    ckpt: Path
    run_dir: Path
    prunable: list[str]
    input_shape: tuple[int, ...]
    results: dict[str, Any]  # the run's results.json ({} if there is none)


def load(run: str | Path | None, checkpoint: str = "best") -> DeployRun:
    """The run directory or checkpoint ``run`` (see :func:`prunelab.runs.load_run`)."""
    from prunelab.pruning import prunable_parameters
    from prunelab.runs import load_run

    loaded = load_run(run, checkpoint)
    if loaded.masks:
        prunable = list(loaded.masks)
    else:
        pcfg = loaded.config.get("pruner") or {}
        prunable = list(prunable_parameters(loaded.net, include=pcfg.get("include"),
                                            exclude=pcfg.get("exclude") or ()))
    res_path = loaded.run_dir / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    return DeployRun(loaded.config, loaded.net, loaded.datamodule, loaded.checkpoint,
                     loaded.run_dir, prunable, tuple(loaded.datamodule.input_shape), results)


def compact_run(run: DeployRun) -> tuple[nn.Module, Any]:
    """The run's compact network (its dead channels removed) and the compaction report; a
    DeployError when no channel can be removed."""
    from prunelab.compress.compact import compact
    from prunelab.graph import GraphError

    try:
        small, report = compact(run.net, run.input_shape)
    except GraphError as exc:
        raise DeployError(f"compact=true: run={str(run.run_dir)!r} cannot be compacted: "
                          f"{exc}") from None
    if report.params_after >= report.params_before:
        params = dict(run.net.named_parameters())
        zeros = sum(int((params[n] == 0).sum()) for n in run.prunable if n in params)
        kind = run.results.get("granularity") or (run.cfg.get("pruner") or {}).get("granularity")
        raise DeployError(
            f"run={str(run.run_dir)!r} has no whole channel at zero ({zeros} zero weights, "
            f"granularity={kind}): compaction removes nothing; prune channels with "
            f"pruner=structured, or use the sparse (CSR) path of python -m prunelab.measure for "
            f"unstructured sparsity")
    return small, report


def calibration_batches(run: DeployRun, n: int) -> list[Any]:
    """The inputs of the first ``n`` training batches of the run's data (int8 calibration)."""
    from prunelab.data.loader import iter_batches

    run.dm.setup("fit")
    return [x for _, (x, _) in zip(range(n), iter_batches(run.dm.train_dataloader()))]


def model_meta(run: DeployRun) -> dict[str, Any]:
    """How to rebuild the run's (dense) network: the ``meta`` of
    :func:`prunelab.compress.compact.save_compact` (``model``: the registry name, None for a
    model outside the zoo, which ``model_config`` rebuilds)."""
    from prunelab.models import get_model_name

    node = run.cfg.get("model") or {}
    kwargs = {k: v for k, v in node.items() if not str(k).startswith("_")}
    return {"model": get_model_name(run.net), "input_shape": list(run.input_shape),
            "num_classes": int(run.dm.num_classes), "model_kwargs": _plain(kwargs),
            "model_config": _plain(node)}


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
