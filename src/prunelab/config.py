"""Structured configs (Hydra ConfigStore) and OmegaConf resolvers.

The pruner and schedule schemas live in :mod:`prunelab.schemas`; this module stores them and the
lottery/measure/export schemas (``register_configs``), so a misspelt key
(``pruner.scpoe=global``), a key of another method (``pruner.n=2`` on magnitude) or a wrong type
fails at compose time, before anything runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from prunelab.schemas import (PRUNER_SCHEMAS, GradualConf, IterativeConf,  # noqa: F401
                              OneShotConf, Scope, Steps)


def validate_sparsity(value: Any) -> float:
    """The run's ``sparsity``: a number in [0, 1) (checked here only; the callback and the
    command line both call this)."""
    from numbers import Real

    from prunelab.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"sparsity={value!r} is not a number; allowed: a number in [0, 1)")
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"sparsity={value} is outside the allowed range [0, 1)")
    return float(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum`` (a bool is not), else one ConfigError line."""
    from prunelab.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def _epochs_frac(frac: Any, *, _root_) -> int:
    """``${epochs_frac:0.5}`` -> round(0.5 * epochs): schedule epochs that follow the run length."""
    epochs = _root_.get("epochs")
    if epochs is None:
        raise ValueError("epochs_frac needs a top-level 'epochs' key")
    return int(round(float(frac) * int(epochs)))


def nm_rule(n: Any, m: Any) -> str | None:
    """Why ``pruner.n``/``pruner.m`` are not an N:M pattern (None if they are)."""
    if isinstance(n, int) and isinstance(m, int) and not isinstance(n, bool) \
            and not isinstance(m, bool) and 1 <= n < m:
        return None
    return (f"pruner.n={n!r} and pruner.m={m!r}: need integers with 1 <= n < m (N:M keeps n of "
            f"every m consecutive weights, e.g. pruner.n=2 pruner.m=4)")


def _nm_sparsity(n: Any, m: Any) -> float:
    """``${nm_sparsity:2,4}`` -> 1 - n/m, the sparsity N:M pruning reaches (a ConfigError
    naming n and m when they are not an N:M pattern)."""
    from prunelab.errors import ConfigError

    why = nm_rule(n, m)
    if why is not None:
        raise ConfigError(why)
    return 1.0 - n / m


#: What a profile's per-layer values are: the weight sparsity of each layer (unstructured), or
#: the fraction of its output channels removed (structured; a searched channel policy).
PROFILE_GRANULARITIES = ("unstructured", "structured")


def load_profile(path: str | Path) -> dict:
    """A sensitivity profile: ``{"target_sparsity": float, "layers": {name: sparsity},
    "granularity": "unstructured" | "structured"}`` (granularity optional, default unstructured:
    ``python -m prunelab.search`` writes structured ones)."""
    import yaml

    from prunelab.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pruner.profile={str(path)!r} does not exist; allowed: a YAML "
                          f"written by python -m prunelab.sensitivity")
    data = yaml.safe_load(p.read_text()) or {}
    layers = data.get("layers")
    target = data.get("target_sparsity")
    if (not isinstance(layers, dict) or not layers or not isinstance(target, (int, float))
            or not 0 < target < 1):
        raise ConfigError(f"pruner.profile={str(path)!r} is not a sensitivity profile "
                          f"(needs target_sparsity in (0, 1) and a non-empty layers map)")
    for name, s in layers.items():
        if not isinstance(s, (int, float)) or not 0 <= s < 1:
            raise ConfigError(f"pruner.profile: layer {name!r} has sparsity {s!r}; allowed: "
                              f"[0, 1)")
    granularity = data.get("granularity", "unstructured")
    if granularity not in PROFILE_GRANULARITIES:
        raise ConfigError(f"pruner.profile: granularity={granularity!r}; allowed: "
                          f"{', '.join(PROFILE_GRANULARITIES)}")
    return {"target_sparsity": float(target), "granularity": granularity,
            "layers": {k: float(v) for k, v in layers.items()}}


def _profile_sparsity(path: Any) -> float:
    """``${profile_sparsity:<yaml>}`` -> the target sparsity a sensitivity profile was made for
    (0.5 while no profile is given; the pruner then asks for one)."""
    if path in (None, "", "None"):
        return 0.5
    return load_profile(path)["target_sparsity"]


@dataclass
class LotteryConf:
    """``python -m prunelab.lottery``: iterative magnitude pruning with rewinding."""

    levels: int = 12  # pruning levels after the dense level 0 (runs levels 0..levels)
    prune_fraction: float = 0.2  # fraction of the remaining weights pruned per level
    output_fraction: Optional[float] = None  # the output layer's fraction (null: prune_fraction)
    layer_fractions: dict[str, float] = field(default_factory=dict)  # glob -> fraction per level
    scope: str = "layer"  # layer | global (layers with their own fraction stay layer-wise)
    rewind_step: int = 0  # 0 = rewind to initialization; k = to iteration k of level 0
    rewind_epoch: Optional[int] = None  # alternative to rewind_step: the start of this epoch
    control: str = "none"  # none | random_reinit | random_mask
    masks_from: Optional[str] = None  # controls: a finished ticket run (control=none) to take masks from
    include: Optional[list[str]] = None  # prunable parameter globs (null: Linear/Conv weights)
    exclude: list[str] = field(default_factory=list)


def _lottery_dir(resume: Any, override_dirname: Any) -> str:
    """The run directory of ``prunelab.lottery``: ``resume`` if given, else one named by the
    command's overrides, so that rerunning the same command continues the same run."""
    if resume not in (None, "", "None"):
        return str(resume)
    return f"outputs/lottery/{_dirname(override_dirname) or 'default'}"


def _dirname(override_dirname: Any) -> str:
    """``${dirname:${hydra.job.override_dirname}}``: the overrides as one directory name. A path
    in a value (``distill.teacher=runs/dense``) would otherwise split it into nested
    directories: path separators become ``_`` and quotes are dropped."""
    name = str(override_dirname or "")
    for quote in ("'", '"'):
        name = name.replace(quote, "")
    return name.replace("/", "_").replace("\\", "_")


def _ddp_backend(accelerator: Any) -> str:
    """``${ddp_backend:${hardware.accelerator}}``: gloo on CPUs, nccl on GPUs."""
    return "nccl" if str(accelerator) == "gpu" else "gloo"


def _hydra_subdir(output_dir: str) -> str | None:
    """``hydra.output_subdir`` (``${hydra_subdir:...}``): ``.hydra`` for a new run directory,
    None (nothing written) for one that already holds a run: a rerun, a resume or a refused
    command never rewrites a run's ``.hydra/*``."""
    path = Path(output_dir)
    if not path.is_dir():
        return ".hydra"
    for entry in path.iterdir():
        if not (entry.is_file() and entry.suffix == ".log" and entry.stat().st_size == 0):
            return None
    return ".hydra"


RESOLVERS = {"epochs_frac": _epochs_frac, "nm_sparsity": _nm_sparsity,
             "profile_sparsity": _profile_sparsity, "lottery_dir": _lottery_dir, "ddp_backend": _ddp_backend,
             "dirname": _dirname, "hydra_subdir": _hydra_subdir}


# -- measure and export (deploy/options.py checks their values) ------------------------------------
@dataclass
class MeasureConf:
    """``python -m prunelab.measure`` (``conf/measure.yaml``)."""

    run: Optional[str] = None  # a prunelab.train run directory or checkpoint
    checkpoint: str = "best"  # best | last
    # a hardware profile: device, threads, batch sizes. The command composes it from the
    # `hardware` config group (conf/hardware/<name>.yaml); library callers may give its name.
    hardware: Any = None
    batch_sizes: Optional[list[int]] = None  # default: the profile's, else [1, 64]
    runs: int = 50  # timed runs per batch size (median), after warmup
    warmup: int = 10
    rounds: int = 3  # the variants are timed in turn, this many times (A B C A B C ...)
    threads: Optional[int] = None  # torch, onnxruntime and XNNPACK threads (null: the profile's, else the defaults)
    sparse: bool = True  # try the sparse path for sparse Linear layers (CSR on CPU, 2:4 on gpu_2to4)
    sparse_layers: str = "measured"  # measured: sparse where timed faster | all: every eligible layer
    quantize: bool = True  # add the int8 variant
    calibration_batches: int = 8  # static quantization (conv nets)
    qat_epochs: int = 0  # > 0: add an int8_qat variant, fine-tuned quantization-aware first
    qat_lr: float = 1e-4
    qat_batches: Optional[int] = 200  # training batches per QAT epoch (null: all)
    eval_batches: Optional[int] = None  # test batches for accuracy (null: the whole test set)
    onnx: bool = False  # also time the float variants (dense, compact) exported to onnxruntime
    # ExecuTorch variants (XNNPACK; et_dense, et_compact, et_int8, et_compact_int8): true | false |
    # null (on with hardware=edge_cpu when the executorch extra is installed)
    executorch: Optional[bool] = None
    memory_format: str = "measured"  # conv nets on the CPU: measured | contiguous | channels_last
    out: Optional[str] = None  # output directory (default: <run>/deploy)


@dataclass
class ExportConf:
    """``python -m prunelab.export`` (``conf/export.yaml``)."""

    run: Optional[str] = None
    checkpoint: str = "best"
    format: str = "onnx"  # onnx | executorch
    compact: bool = False
    quantize: str = "none"  # none | int8
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    runs: int = 50
    threads: Optional[int] = None
    atol: float = 1e-4  # float export: max |runtime (onnxruntime, ExecuTorch) - torch|
    out: Optional[str] = None  # default: <run>/export


# -- the run's config at run time ---------------------------------------------------------------
def as_user_error(exc: BaseException) -> BaseException:
    """A user-input error, also when Hydra's instantiate wrapped it (a bad ``optimizer.lr``
    raises torch's ValueError), as a one-line ConfigError; anything else unchanged (a bug: its
    traceback is kept). ``HYDRA_FULL_ERROR=1`` keeps every traceback."""
    from hydra.errors import InstantiationException

    from prunelab.errors import ConfigError, UserError, one_line

    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return exc
    if isinstance(exc, UserError):
        return exc
    if not isinstance(exc, (ValueError, KeyError, TypeError, FileNotFoundError)):
        return exc
    return ConfigError(one_line(exc))


#: What an OSError of writing output means (its errno), for :func:`as_write_error`.
_WRITE_ERRNOS = {"ENOSPC": "the disk is full", "EDQUOT": "the disk quota is exhausted",
                 "EFBIG": "a file outgrew the size limit", "EROFS": "the file system is read-only",
                 "EACCES": "no permission", "EPERM": "no permission"}


def as_write_error(exc: BaseException, out_dir: str | os.PathLike | None = None) -> BaseException:
    """An OSError of writing (disk full, quota, file size limit, read-only file system, no
    permission) as a one-line UserError naming the path (the file, else ``out_dir``) and the OS
    error; anything else unchanged. ``HYDRA_FULL_ERROR=1`` keeps the traceback."""
    import errno

    from prunelab.errors import UserError

    code = errno.errorcode.get(getattr(exc, "errno", None) or -1)
    if (not isinstance(exc, OSError) or code not in _WRITE_ERRNOS
            or os.environ.get("HYDRA_FULL_ERROR") == "1"):
        return exc
    what = (f"cannot write {exc.filename}" if exc.filename is not None
            else f"cannot write in {out_dir}" if out_dir is not None else "cannot write")
    return UserError(f"{what}: [Errno {exc.errno}] {exc.strerror} ({_WRITE_ERRNOS[code]}); free "
                     f"space or choose another output directory (hydra.run.dir=<dir>)")


def manual_optimization_conflict(gradient_clip_val: Any = None,
                                 accumulate_grad_batches: Any = 1,
                                 batch_size: Any = None) -> str | None:
    """prunelab's module steps the optimizer itself (Lightning's manual optimization), where
    Lightning refuses its own gradient clipping and accumulation: what to set instead (None if
    neither is set)."""
    if gradient_clip_val not in (None, 0, 0.0):
        return (f"trainer.gradient_clip_val={gradient_clip_val}: prunelab steps the optimizer "
                f"itself (Lightning clips only for its own steps); use module.gradient_clip_val="
                f"{gradient_clip_val}")
    if accumulate_grad_batches not in (None, 1):
        k = accumulate_grad_batches
        same = (f"data.batch_size={k * batch_size}" if isinstance(k, int) and
                isinstance(batch_size, int) else "a data.batch_size that many times larger")
        return (f"trainer.accumulate_grad_batches={k}: prunelab steps the optimizer itself after "
                f"every batch (Lightning accumulates only for its own steps); for the same batch "
                f"per step use {same}")
    return None


def check_manual_optimization(trainer: Any, batch_size: Any = None) -> None:
    """:func:`manual_optimization_conflict` of a ``trainer`` config, as a ConfigError."""
    from prunelab.errors import ConfigError

    why = manual_optimization_conflict(trainer.get("gradient_clip_val"),
                                       trainer.get("accumulate_grad_batches", 1), batch_size)
    if why is not None:
        raise ConfigError(why)


def choice(group: str, default: str) -> str:
    """The option Hydra chose for ``group`` in this run (``default`` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices.get(group) or default)
    except ValueError:  # not running under Hydra
        return default


def set_on_command_line(group: str) -> str | None:
    """The command-line override that sets ``group`` or one of its keys in this run (e.g.
    ``schedule=iterative``, ``schedule.rounds=5``), or None (also outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # not running under Hydra
        return None
    for override in task:
        key = override.lstrip("+~").split("=", 1)[0]
        if key == group or key.startswith(f"{group}."):
            return override
    return None


def target_name(node: Any) -> str:
    """The class name a config node instantiates (``none`` without ``_target_``)."""
    target = (node or {}).get("_target_", "") if isinstance(node, (dict, DictConfig)) else ""
    return target.rsplit(".", 1)[-1] or "none"


def register_configs() -> None:
    """Register schemas and resolvers (idempotent; called on import)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    cs = ConfigStore.instance()
    for name, node in PRUNER_SCHEMAS.items():
        cs.store(group="schema/pruner", name=name, node=node)
    cs.store(group="schema/schedule", name="base_oneshot", node=OneShotConf)
    cs.store(group="schema/schedule", name="base_iterative", node=IterativeConf)
    cs.store(group="schema/schedule", name="base_gradual", node=GradualConf)
    cs.store(group="schema/lottery", name="base_lottery", node=LotteryConf)
    cs.store(name="measure_schema", node=MeasureConf)
    cs.store(name="export_schema", node=ExportConf)


register_configs()

