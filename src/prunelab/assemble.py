"""Assembly in one place: from a composed config to the objects of a run.

:func:`assemble` turns ``train``'s config into a typed :class:`RunParts` (data, network, pruning
method, schedule, callback, regularizer, teacher), validating each value where it first becomes
an object and writing nothing: a bad value is a one-line :class:`UserError` before any file
exists. :func:`build_module` and :func:`build_trainer` are shared by ``train`` and the lottery
(every lottery level is trained by the same module and trainer a run is).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from prunelab.config import (as_user_error, check_int, check_manual_optimization, choice,
                             set_on_command_line, target_name, validate_sparsity)
from prunelab.errors import ConfigError, UserError, one_line
from prunelab.hardware import (check_hardware, speedup_warnings, to_memory_format,
                               two_four_warnings)
from prunelab.robust import AdversarialBatches
from prunelab.robust import check_settings as check_attack_settings

#: What a sweep (Optuna) may optimize: results.json keys, maximized.
OBJECTIVES = ("best_val_acc", "test_acc")


@dataclass
class RunParts:
    """Everything one training run is made of (built by :func:`assemble`, nothing written)."""

    datamodule: Any
    net: Any
    method: Any
    schedule: Any
    callback: Any
    sparsity: float
    model_name: str
    data_name: str
    optimizer: Any = None
    regularizer: Any = None
    distiller: Any = None
    batch_transform: Any = None  # train.adversarial (robust.AdversarialBatches)
    warnings: list[str] = field(default_factory=list)


def resume_point(cfg: DictConfig, out: Path) -> str | None:
    """The checkpoint a run in ``out`` continues from, or None for a fresh start.

    A run continues in its own directory: ``resume=<run dir or one of its checkpoints>`` (the
    command line puts the run's own overrides first and makes ``hydra.run.dir`` that directory:
    :func:`prunelab.cli.resume_arguments`), or a killed run (a sweep job) rerun in its directory
    continues from ``checkpoints/last.ckpt``. The checkpoint must be readable and of the same
    result-relevant config (ConfigError listing the keys that differ); nothing is written."""
    from prunelab.results import run_config_diff
    from prunelab.runs import RunError, read_checkpoint, resume_location

    resume = cfg.get("resume")
    own = out / "checkpoints" / "last.ckpt"
    if resume:
        try:
            run_dir, path = resume_location(str(resume))
        except RunError as exc:
            raise ConfigError(str(exc)) from None
        if not path.is_file():
            raise ConfigError(f"resume={resume!r}: no checkpoint found at {path}; allowed: a run "
                              f"directory with checkpoints/last.ckpt or a .ckpt file in one")
        try:  # weights_only=True: a file that needs pickle is refused here, not run by Lightning
            ckpt = read_checkpoint(path)
        except RunError as exc:
            raise ConfigError(str(exc).replace("run=", "resume=", 1)) from None
        if run_dir.resolve() != out.resolve():
            raise ConfigError(f"resume={resume!r} continues that run in its own directory "
                              f"{run_dir}, not in {out}: leave hydra.run.dir out or set it to "
                              f"{run_dir}")
    elif own.is_file():
        path = own
        try:
            ckpt = read_checkpoint(path)
        except RunError as exc:
            raise ConfigError(f"{path} cannot be resumed from: {str(exc).split(': ', 1)[-1]} "
                              f"(truncated or corrupt?); delete it to start the run over, or "
                              f"use another directory") from None
    else:
        return None
    saved = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(saved, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{path} is not a prunelab training checkpoint (no saved run config); "
                          f"allowed: checkpoints written by python -m prunelab.train")
    from omegaconf import OmegaConf

    diff = run_config_diff(saved, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    if diff:
        raise ConfigError(f"{path.parent.parent} holds a run with a different config: "
                          f"{'; '.join(diff)}; rerun with its settings or use a new directory")
    epoch = ckpt.get("epoch")
    print(f"prunelab: resuming {path.parent.parent} from {path.name}"
          + (f" (end of epoch {epoch})" if isinstance(epoch, int) else ""))
    return str(path)


def check_top_level(cfg: DictConfig) -> float:
    """The checks that need no heavy import (sparsity, epochs, eval, objective), so that a bad
    value is answered at once. Returns the sparsity."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = cfg.get("sparsity")
    except OmegaConfBaseException as exc:  # e.g. a resolver reading a missing profile
        cause = exc.__cause__ or exc.__context__  # the resolver's own error, without OmegaConf's
        raise ConfigError(one_line(cause if isinstance(cause, UserError) else exc)) from exc
    sparsity = validate_sparsity(value)
    check_int("epochs", cfg.get("epochs"), 0)  # 0: post-training pruning (prunelab.posttrain)
    check_int("calibration_batches", cfg.get("calibration_batches", 0), 0)
    if check_int("seed", cfg.get("seed"), 0) >= 2**32:  # numpy's and Lightning's seed range
        raise ConfigError(f"seed={cfg.seed} must be an integer in [0, 2**32)")
    check_manual_optimization(cfg.get("trainer") or {}, (cfg.get("data") or {}).get("batch_size"))
    check_attack_settings(cfg)  # eval.* and train.* (adversarial training): robust.py
    from prunelab.control import check_control

    check_control(cfg, sparsity)
    if cfg.get("control") == "scratch" and _several_devices(cfg)[0]:
        raise ConfigError(f"control=scratch runs its control after the pruned run in the same "
                          f"process; allowed: single-device training ({_several_devices(cfg)[1]})")
    objective = cfg.get("objective")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective!r}: a sweep needs a metric to optimize; allowed: "
                          f"{', '.join(OBJECTIVES)}")
    return sparsity


def check_devices(cfg: DictConfig) -> None:
    """More DDP processes than devices (GPUs, or CPU cores) is an error, not a slow run."""
    import os

    devices = cfg.trainer.get("devices")
    if not isinstance(devices, int) or isinstance(devices, bool) or devices <= 1:
        return
    if cfg.hardware.accelerator == "gpu":
        import torch

        have, what = torch.cuda.device_count(), "CUDA GPUs"
    else:
        have, what = os.cpu_count() or 1, "CPU cores"
    if devices > have:
        raise ConfigError(f"devices={devices} but this machine has {have} {what}; allowed: "
                          f"1..{have}")


def check_single_device(cfg: DictConfig) -> None:
    """``epochs=0`` (post-training pruning) runs in one process on one device."""
    several, setup = _several_devices(cfg)
    if several:
        raise ConfigError(f"epochs=0 (post-training pruning) runs on one device (got {setup}); "
                          f"allowed: trainer.devices=1, or epochs >= 1")


def _several_devices(cfg: DictConfig) -> tuple[bool, str]:
    """Whether the trainer may run on several devices (processes), and its settings in words."""
    t = cfg.trainer
    devices, nodes = t.get("devices"), t.get("num_nodes") or 1
    strategy = str(t.get("strategy") or "")
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    several = (
        (isinstance(devices, int) and not isinstance(devices, bool)
         and (devices > 1 or devices == -1))
        or (not isinstance(devices, (int, str)) and devices is not None and len(devices) > 1)
        or (isinstance(devices, str) and "," in devices)
        or nodes > 1
        or any(s in strategy.lower() for s in ("ddp", "fsdp", "deepspeed")))
    return several, (f"trainer.devices={devices}, num_nodes={nodes}, strategy="
                     f"{strategy or 'auto'}")


def check_steps_per_batch(cfg: DictConfig, k: int) -> None:
    """``data.steps_per_batch > 1`` runs several optimizer steps per Lightning batch: one device
    only (DDP synchronizes gradients once per forward of its wrapper). The data module checks
    the world size again when training starts."""
    if k <= 1:
        return
    several, setup = _several_devices(cfg)
    if several:
        raise ConfigError(f"data.steps_per_batch={k} needs single-device training (got "
                          f"{setup}); allowed with several devices: 1")


#: ``data.steps_per_batch=auto``: Lightning gets groups of this many batches (BENCHMARKS.md) ...
AUTO_STEPS_PER_BATCH = 8
#: ... on single-device runs of networks of at most this many MACs per sample, whose steps are
#: short enough for Lightning's fixed per-batch cost (~0.3 ms) to show
AUTO_MAX_MACS = 100_000_000


def _counts_batches(trainer: Any) -> bool:
    """Whether a trainer setting counts Lightning batches (which are groups, once grouped):
    ``auto`` leaves such a run ungrouped, so that it trains and validates on the same steps
    either way. ``1.0`` (a float) is the whole epoch; an integer 1 is one batch."""
    def whole(key: str) -> bool:
        v = trainer.get(key)
        return v is None or (isinstance(v, float) and v == 1.0)

    return (not whole("limit_train_batches") or not whole("val_check_interval")
            or bool(trainer.get("fast_dev_run")) or bool(trainer.get("overfit_batches"))
            or trainer.get("accumulate_grad_batches") not in (None, 1))


def steps_per_batch_setting(cfg: DictConfig) -> int | str:
    """``data.steps_per_batch`` checked: ``"auto"`` or an integer >= 1 (one-line ConfigError)."""
    value = (cfg.get("data") or {}).get("steps_per_batch", 1)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ConfigError(f"data.steps_per_batch={value!r} must be an integer >= 1 or auto; allowed: "
                      f"auto (groups of {AUTO_STEPS_PER_BATCH} on single-device runs of small "
                      f"networks, else 1), 1 (no groups), k > 1 (groups of k, one device)")


def resolve_steps_per_batch(cfg: DictConfig, net: Any, input_shape: tuple[int, ...]) -> int:
    """The group size ``data.steps_per_batch`` stands for. ``auto``: ``AUTO_STEPS_PER_BATCH``
    on a single-device run of a network of at most ``AUTO_MAX_MACS`` MACs per sample whose
    trainer counts no batches (:func:`_counts_batches`), else 1. Grouped batches train step for
    step the same (``tests/unit/test_steps_per_batch.py``), which is why the setting is no part
    of a run's identity (``results.config_hash``)."""
    value = steps_per_batch_setting(cfg)
    if value != "auto":
        return int(value)
    several, _ = _several_devices(cfg)
    devices = cfg.trainer.get("devices")
    if devices == "auto" and str(cfg.trainer.get("accelerator") or "cpu") != "cpu":
        import torch

        several = several or torch.cuda.device_count() > 1
    if several or _counts_batches(cfg.trainer):
        return 1
    from prunelab.metrics.macs import count_macs

    try:
        small = count_macs(net, input_shape)["dense"] <= AUTO_MAX_MACS
    except Exception:  # noqa: BLE001 - a network the counter cannot run: left ungrouped
        small = False
    return AUTO_STEPS_PER_BATCH if small else 1


def trained_weights(cfg: DictConfig) -> bool:
    """Whether the run starts from trained weights (``init_from`` or ``model.weights``)."""
    from prunelab.pretrained import init_value

    return init_value(cfg) is not None or bool((cfg.model or {}).get("weights"))


def check_dynamic(method: Any, cfg: DictConfig) -> None:
    """A method whose masks move at constant sparsity (SET, RigL) is sparse from step 0: a
    pruning schedule on the command line, or no training (``epochs=0``), is refused."""
    if not method.dynamic:
        return
    given = set_on_command_line("schedule")
    if given is not None:
        raise ConfigError(f"{given}: pruner={method.name} is sparse from step 0 (its masks move "
                          f"at the final sparsity); it takes no pruning schedule: remove "
                          f"{given} from the command line")
    if int(cfg.epochs) == 0:
        raise ConfigError(f"epochs=0 with pruner={method.name}: its masks move during training; "
                          f"with no training it is a random mask; allowed: epochs >= 1")


def check_fine_tuning(method: Any, cfg: DictConfig) -> None:
    """A method scored by how weights move during training (movement) needs training."""
    if method.accumulate == "run" and int(cfg.epochs) == 0:
        raise ConfigError(f"epochs=0 with pruner={method.name}: its scores are how the weights "
                          f"move during fine-tuning; allowed: epochs >= 1")


def check_logger(cfg: DictConfig) -> None:
    if "MLFlow" in str((cfg.get("logger") or {}).get("_target_", "")):
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("logger=mlflow needs the mlflow package (pip install mlflow); "
                              "allowed without it: csv, tensorboard, none")


def data_and_model(cfg: DictConfig) -> tuple[Any, Any, str]:
    """(datamodule, network, model name): the data first (it knows the input shape and the
    classes), then the model built for them and checked to fit; ``data.steps_per_batch``
    resolved for this network and trainer (:func:`resolve_steps_per_batch`)."""
    from prunelab.data import build_datamodule
    from prunelab.models import build_from_config, check_input_fits, get_model_name, model_label

    steps_per_batch_setting(cfg)  # a bad value is one line before anything is built
    try:
        datamodule = build_datamodule(cfg.data)
        shape, classes = tuple(datamodule.input_shape), int(datamodule.num_classes)
        net = build_from_config(cfg.model, shape, classes)
        model_name = model_label(cfg.model) or choice("model", get_model_name(net)
                                                      or target_name(cfg.model))
        check_input_fits(net, shape, model_name)
        datamodule.steps_per_batch = resolve_steps_per_batch(cfg, net, shape)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - only user-input errors become one line
        raise as_user_error(exc) from exc
    return datamodule, net, model_name


def assemble(cfg: DictConfig, sparsity: float | None = None) -> RunParts:
    """Instantiate and validate everything ``train`` needs, writing nothing (UserError).
    ``init_from`` is loaded into the network first (:mod:`prunelab.pretrained`); ``epochs=0``
    prunes once at epoch 0 (:mod:`prunelab.posttrain`)."""
    from prunelab.posttrain import at_epoch_zero
    from prunelab.pretrained import load_init
    from prunelab.pruning import PruningCallback, build_method

    if sparsity is None:
        sparsity = check_top_level(cfg)
    datamodule, net, model_name = data_and_model(cfg)
    try:
        warns = load_init(net, cfg)  # init_from: trained weights, before the masks bind
        to_memory_format(net, cfg.hardware)  # the layout the masks are then created in
        method = build_method(cfg.pruner)
        check_dynamic(method, cfg)
        check_fine_tuning(method, cfg)
        schedule = run_schedule = instantiate(cfg.schedule)
        if int(cfg.epochs) == 0:  # post-training pruning: every event at once, at epoch 0
            trained = trained_weights(cfg)
            run_schedule, notes = at_epoch_zero(schedule, sparsity, method, pretrained=trained)
            warns += notes
            check_single_device(cfg)
        if "pretrained" in method.needs and not trained_weights(cfg):
            raise ConfigError(f"pruner={method.name} prunes by how trained weights move during "
                              f"fine-tuning: give init_from=<run dir|.ckpt|.pt> (or model.weights "
                              f"for a torchvision/timm model)")
        callback = PruningCallback(method, run_schedule, sparsity)
        callback.bind(net)
        method.check_run(net, run_schedule, sparsity)
        if callback.events and not method.at_init and int(cfg.epochs) > 0:
            schedule.validate(int(cfg.trainer.get("max_epochs") or cfg.epochs), sparsity)
            callback.rewinder.check(callback.events)
        check_logger(cfg)
        check_devices(cfg)
        check_steps_per_batch(cfg, int(getattr(datamodule, "steps_per_batch", 1)))
        check_hardware(cfg.hardware, choice("hardware", str(cfg.hardware.get("target", "cpu"))))
        optimizer = instantiate(cfg.optimizer)(params=list(net.parameters()))  # a bad lr fails here
        regularizer = None
        if cfg.get("regularizer"):
            regularizer = instantiate(cfg.regularizer)(params=list(callback.masks.params.values()))
        distiller = None
        dcfg = cfg.get("distill") or {}
        if dcfg.get("teacher"):
            from prunelab.distill import load_teacher

            distiller = load_teacher(str(dcfg.teacher), dcfg.get("temperature", 4.0),
                                     dcfg.get("alpha", 0.9), int(datamodule.num_classes),
                                     tuple(datamodule.input_shape))
        if hasattr(datamodule, "preload"):  # missing files, val_size: before anything is written
            datamodule.preload()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - only user-input errors become one line
        raise as_user_error(exc) from exc
    target = str(cfg.hardware.get("target", "cpu"))
    warns += speedup_warnings(method, sparsity, target) + two_four_warnings(net, target)
    for w in warns:
        print(f"prunelab: warning: {w}", file=sys.stderr)
    return RunParts(datamodule=datamodule, net=net, method=method, schedule=schedule,
                    callback=callback, sparsity=sparsity, model_name=model_name,
                    data_name=choice("data", getattr(datamodule, "name", None)
                                     or target_name(cfg.data)),
                    optimizer=optimizer, regularizer=regularizer, distiller=distiller, warnings=warns,
                    batch_transform=AdversarialBatches.from_config(cfg, datamodule))


def build_module(cfg: DictConfig, net: Any, num_classes: int, *, optimizer: Any = None,
                 regularizer: Any = None, distiller: Any = None, config: Any = None,
                 batch_transform: Any = None) -> Any:
    """The LightningModule that trains ``net`` with the config's optimizer and LR scheduler.
    ``optimizer``: one already built over ``net``'s parameters (assemble's, which checked the
    settings), used as is instead of a second one."""
    from prunelab.module import ClassifierModule

    lr_sched = instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None
    factory = instantiate(cfg.optimizer) if optimizer is None else _Built(optimizer)
    return ClassifierModule(net, num_classes=int(num_classes),
                            optimizer=factory, lr_scheduler=lr_sched,
                            scheduler_interval=cfg.module.scheduler_interval,
                            gradient_clip_val=cfg.module.gradient_clip_val,
                            regularizer=regularizer, config=config, distiller=distiller,
                            batch_transform=batch_transform)


def build_trainer(cfg: DictConfig, out_dir: str | Path, callbacks: list[Any]) -> Any:
    """The config's Lightning Trainer writing its logs under ``out_dir``."""
    logger = instantiate(cfg.logger, save_dir=str(out_dir)) if cfg.get("logger") else False
    return instantiate(cfg.trainer, callbacks=list(callbacks), logger=logger,
                       default_root_dir=str(out_dir))


class _Built:
    """An optimizer factory that hands back the optimizer built (and checked) in assembly."""

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer

    def __call__(self, params: Any) -> Any:
        given = [id(p) for p in params]
        have = [id(p) for g in self.optimizer.param_groups for p in g["params"]]
        if given != have:
            raise RuntimeError("the module's parameters are not the ones the optimizer was built on")
        return self.optimizer
