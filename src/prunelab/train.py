"""Train and prune one model: ``python -m prunelab.train pruner=magnitude sparsity=0.7``.

Hydra composes ``conf/train.yaml`` with the data, model, pruner, schedule, optimizer, hardware,
trainer and logger groups; :func:`run` does the work and returns the results, so that sweeps
(Hydra multirun, Optuna) can use it as their objective.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prunelab.config import register_configs

# torch, Lightning and the rest are imported inside the functions that need them, so that a bad
# command line is answered in a fraction of a second.

CONF_DIR = Path(__file__).parent / "conf"
#: Config groups whose options are checked before Hydra starts (one-line error on a typo).
CHECKED_GROUPS = ("data", "model", "pruner", "schedule", "optimizer", "lr_scheduler", "regularizer",
                  "hardware", "trainer", "logger", "experiment", "debug")


class ConfigError(ValueError):
    """A bad setting, reported as one line before anything is written."""


def known_options(group: str) -> list[str]:
    """The option names of a config group (its yaml files)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(argv: list[str], groups: tuple[str, ...] = CHECKED_GROUPS) -> None:
    """Reject unknown group options (``pruner=magnitud``) with a one-line error listing the known
    ones, before Hydra composes anything."""
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("override "):
            key = key[len("override "):]
        key = key.strip("/")
        if key not in groups or "(" in value or value in ("", "null"):
            continue
        known = known_options(key)
        for v in value.split(","):
            if v not in known:
                raise ConfigError(f"unknown {key}={v!r}; known: {', '.join(known)}")
            if groups is CHECKED_GROUPS and key == "experiment" and v.startswith("lth_"):
                raise ConfigError(f"experiment={v} is a lottery-ticket experiment: run python -m "
                                  f"prunelab.lottery experiment={v}")


def _choice(group: str, default: str) -> str:
    try:
        return str(HydraConfig.get().runtime.choices.get(group) or default)
    except ValueError:  # not running under Hydra
        return default


def _target_name(node: Any) -> str:
    target = (node or {}).get("_target_", "") if isinstance(node, (dict, DictConfig)) else ""
    return target.rsplit(".", 1)[-1] or "none"


def validate_sparsity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"sparsity={value!r} is not a number; allowed: a number in [0, 1)")
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"sparsity={value} is outside the allowed range [0, 1)")
    return float(value)


def resolve_resume(resume: str | None) -> str | None:
    if not resume:
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"resume={resume!r}: no checkpoint found at {path}; allowed: a .ckpt file "
                          f"or a run directory with checkpoints/last.ckpt")
    return str(path)


_INPUT_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError)


def _as_config_error(exc: BaseException) -> BaseException:
    """A user-input error (also when Hydra's instantiate wrapped it) as a one-line ConfigError;
    anything else is returned unchanged (a bug: keep its traceback)."""
    from hydra.errors import InstantiationException

    from prunelab.data import DataError

    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    if not isinstance(exc, (*_INPUT_ERRORS, DataError)) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return exc
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    msg = msg.strip()
    return ConfigError(msg.splitlines()[0] if msg else repr(exc))


#: What a sweep (Optuna) may optimize: results.json keys, maximized.
OBJECTIVES = ("best_val_acc", "test_acc")


def job_threads(cfg: DictConfig) -> int | None:
    """Torch threads for this job: ``hardware.threads`` if set; under the joblib launcher the
    cores split between the jobs that run at once (no oversubscription); else None (default)."""
    if cfg.hardware.get("threads"):
        return int(cfg.hardware.threads)
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return None
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    cpus = os.cpu_count() or 1
    n = int(launcher.get("n_jobs") or -1)
    parallel = min(cpus, n) if n > 0 else max(1, cpus + 1 + n)  # joblib: -1 = all cores
    return max(1, cpus // parallel)


def validate_top_level(cfg: DictConfig) -> dict[str, Any]:
    """Checks that need no heavy import: sparsity, epochs, resume. Returns the checked values."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = cfg.get("sparsity")
    except OmegaConfBaseException as exc:  # e.g. a resolver reading a missing profile
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ConfigError(str(cause).strip().splitlines()[0]) from exc
    sparsity = validate_sparsity(value)
    epochs = cfg.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} must be an integer >= 1")
    ev = cfg.get("eval") or {}
    attack = ev.get("adversarial")
    if attack not in (None, "fgsm", "pgd"):
        raise ConfigError(f"eval.adversarial={attack!r}; allowed: fgsm, pgd, null")
    if attack is not None:
        eps = ev.get("epsilon")
        if isinstance(eps, bool) or not isinstance(eps, Real) or eps <= 0:
            raise ConfigError(f"eval.epsilon={eps!r} must be a number > 0 (pixel units)")
        steps = ev.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"eval.steps={steps!r} must be an integer >= 1")
    objective = cfg.get("objective")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective!r}: a sweep needs a metric to optimize; allowed: "
                          f"{', '.join(OBJECTIVES)}")
    return {"sparsity": sparsity, "resume": resolve_resume(cfg.get("resume"))}


#: Deployment targets, and what kind of sparsity runs faster there.
TARGETS = ("cpu", "edge_cpu", "gpu", "gpu_2to4")


def check_hardware(hw: DictConfig, name: str) -> None:
    """A GPU profile needs a CUDA GPU; ``gpu_2to4`` one with semi-structured sparse support."""
    target = str(hw.get("target", "cpu"))
    if target not in TARGETS:
        raise ConfigError(f"hardware.target={target!r}; allowed: {', '.join(TARGETS)}")
    if hw.accelerator != "gpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"hardware={name} but no CUDA GPU is available here; allowed: "
                          f"hardware=cpu or hardware=edge_cpu")
    if target == "gpu_2to4" and torch.cuda.get_device_capability() < (8, 0):
        cap = ".".join(map(str, torch.cuda.get_device_capability()))
        raise ConfigError(f"hardware=gpu_2to4 needs a GPU with semi-structured sparse support "
                          f"(compute capability >= 8.0); this {torch.cuda.get_device_name()} has "
                          f"{cap}")


def check_devices(cfg: DictConfig) -> None:
    """More DDP processes than devices (GPUs, or CPU cores) is an error, not a slow run."""
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


def check_steps_per_batch(cfg: DictConfig, k: int) -> None:
    """``data.steps_per_batch > 1`` runs several optimizer steps per Lightning batch: one device
    only (DDP synchronizes gradients once per forward of its wrapper). The data module checks
    the world size again when training starts."""
    if k <= 1:
        return
    t = cfg.trainer
    devices, nodes = t.get("devices"), t.get("num_nodes") or 1
    strategy = str(t.get("strategy") or "")
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    multi = (isinstance(devices, int) and not isinstance(devices, bool)
             and (devices > 1 or devices == -1)) \
        or (not isinstance(devices, (int, str)) and devices is not None and len(devices) > 1) \
        or (isinstance(devices, str) and "," in devices) \
        or nodes > 1 or any(s in strategy.lower() for s in ("ddp", "fsdp", "deepspeed"))
    if multi:
        raise ConfigError(f"data.steps_per_batch={k} needs single-device training (got "
                          f"trainer.devices={devices}, num_nodes={nodes}, strategy="
                          f"{strategy or 'auto'}); allowed with several devices: 1")


def speedup_warnings(pruner: Any, sparsity: float, target: str) -> list[str]:
    """Why the chosen pruning will not make the model faster on ``target`` (empty if it can)."""
    if pruner.is_dense or sparsity == 0:
        return []
    g = pruner.granularity
    if target in ("cpu", "edge_cpu"):
        if g == "unstructured" and sparsity < 0.9:
            return [f"unstructured sparsity={sparsity:g} will not run faster on hardware={target}: "
                    f"dense kernels skip no zeros and the CSR kernel pays off only near 90%+ "
                    f"on large Linear layers; for speed use pruner=structured (then compaction)"]
        if g == "nm":
            return [f"N:M sparsity has no CPU kernel: it saves no time on hardware={target}; it "
                    f"runs faster only on GPUs with semi-structured support (hardware=gpu_2to4)"]
    if target == "gpu" and g == "unstructured":
        return [f"unstructured sparsity={sparsity:g} will not run faster on GPU dense kernels; "
                f"use pruner=nm with hardware=gpu_2to4, or pruner=structured"]
    if target == "gpu_2to4" and not (g == "nm" and (pruner.n, pruner.m) == (2, 4)):
        return ["hardware=gpu_2to4 speeds up 2:4 sparsity only: use pruner=nm pruner.n=2 "
                "pruner.m=4"]
    return []


def two_four_warnings(net: Any, target: str) -> list[str]:
    """``gpu_2to4``: the Linear layers that semi-structured kernels cannot take (both dimensions
    must be multiples of 16); a warning when none can."""
    if target != "gpu_2to4":
        return []
    from torch import nn

    from prunelab.compress.semi_structured import DIM_MULTIPLE, shape_reason

    linears = {n: tuple(m.weight.shape) for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    if any(shape_reason(r, c) is None for r, c in linears.values()):
        return []
    shapes = ", ".join(f"{n} {r}x{c}" for n, (r, c) in linears.items()) or "none"
    return [f"hardware=gpu_2to4: no Linear layer has both dimensions multiples of {DIM_MULTIPLE} "
            f"({shapes}), so none can run as 2:4 on sparse tensor cores; choose layer widths "
            f"that are (e.g. model.hidden=[512,256])"]


def build(cfg: DictConfig, checked: dict[str, Any] | None = None) -> dict[str, Any]:
    """Instantiate and validate everything a run needs, writing nothing. Raises ConfigError.

    ``checked``: the result of :func:`validate_top_level` if the caller already ran it."""
    from prunelab.models import check_input_fits
    from prunelab.pruning import PruningCallback

    checked = checked if checked is not None else validate_top_level(cfg)
    sparsity = checked["sparsity"]
    try:
        datamodule = instantiate(cfg.data)
        model_name = _choice("model", _target_name(cfg.model))
        net = instantiate(cfg.model, input_shape=tuple(datamodule.input_shape),
                          num_classes=int(datamodule.num_classes))
        check_input_fits(net, tuple(datamodule.input_shape), model_name)
        pruner = instantiate(cfg.pruner)
        schedule = instantiate(cfg.schedule)
        callback = PruningCallback(pruner, schedule, sparsity)
        callback.bind(net)
        if pruner.name == "latency_aware":
            from prunelab.pruning.latency import check_floor

            if schedule.name != "oneshot":
                raise ConfigError(f"pruner=latency_aware prunes once: use schedule=oneshot "
                                  f"(got schedule={schedule.name})")
            floor_ms, full_ms = pruner.latency_range()
            check_floor(float(pruner.latency_budget_ms), floor_ms, full_ms,
                        pruner.latency_batch_size)
        if callback.events and not pruner.at_init:
            schedule.validate(int(cfg.trainer.get("max_epochs") or cfg.epochs), sparsity)
        if "MLFlow" in str((cfg.get("logger") or {}).get("_target_", "")):
            import importlib.util

            if importlib.util.find_spec("mlflow") is None:
                raise ConfigError("logger=mlflow needs the mlflow package (pip install mlflow); "
                                  "allowed without it: csv, tensorboard, none")
        check_devices(cfg)
        check_steps_per_batch(cfg, int(getattr(datamodule, "steps_per_batch", 1)))
        check_hardware(cfg.hardware, _choice("hardware", str(cfg.hardware.get("target", "cpu"))))
        instantiate(cfg.optimizer)(params=list(net.parameters()))  # bad lr etc. fail here
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
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - only user-input errors are turned into ConfigError
        raise _as_config_error(exc) from exc
    target = str(cfg.hardware.get("target", "cpu"))
    warns = speedup_warnings(pruner, sparsity, target) + two_four_warnings(net, target)
    for w in warns:
        print(f"prunelab: warning: {w}", file=sys.stderr)
    return {"datamodule": datamodule, "net": net, "pruner": pruner, "schedule": schedule,
            "warnings": warns,
            "callback": callback, "sparsity": sparsity, "model_name": model_name,
            "regularizer": regularizer, "resume": checked["resume"], "distiller": distiller}


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train, prune, test and measure one model; write ``results.json``; return the results."""
    checked = validate_top_level(cfg)  # before the heavy imports: a bad value is answered at once
    import pytorch_lightning as pl
    import torch

    from prunelab.module import ClassifierModule
    from prunelab.pruning import FinalSparsityCheckpoint
    from prunelab.results import (
        config_hash,
        measure_model,
        package_versions,
        print_summary,
        write_json_atomic,
    )

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch 2.14
    start = time.perf_counter()
    if output_dir is None:
        output_dir = HydraConfig.get().runtime.output_dir
    out = Path(output_dir)
    done = finished_results(cfg, out)
    if done is not None:
        return done
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    threads = job_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    parts = build(cfg, checked)
    dm, net, callback = parts["datamodule"], parts["net"], parts["callback"]
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)

    lr_sched = instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None
    module = ClassifierModule(net, num_classes=int(dm.num_classes),
                              optimizer=instantiate(cfg.optimizer), lr_scheduler=lr_sched,
                              scheduler_interval=cfg.module.scheduler_interval,
                              gradient_clip_val=cfg.module.gradient_clip_val,
                              regularizer=parts["regularizer"], config=resolved,
                              distiller=parts["distiller"])
    ckpt = FinalSparsityCheckpoint(dirpath=str(out / "checkpoints"), filename="best",
                                   monitor=cfg.checkpoint.monitor, mode=cfg.checkpoint.mode,
                                   save_last=cfg.checkpoint.save_last, save_top_k=1,
                                   auto_insert_metric_name=False)
    logger = instantiate(cfg.logger, save_dir=str(out)) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[callback, ckpt], logger=logger,
                                      default_root_dir=str(out))
    trainer.fit(module, datamodule=dm, ckpt_path=parts["resume"])
    best_path = ckpt.best_model_path or None
    test_metrics = trainer.test(module, datamodule=dm, ckpt_path=best_path, verbose=False)[0]
    train_time = time.perf_counter() - start
    adversarial = None
    ev = cfg.get("eval") or {}
    if ev.get("adversarial"):
        from prunelab.robust import adversarial_accuracy

        dm.setup("test")
        adversarial = adversarial_accuracy(
            module.net, dm.test_dataloader(), dm, str(ev.adversarial), float(ev.epsilon),
            steps=int(ev.steps), alpha=ev.get("alpha"), max_batches=ev.get("batches"),
            seed=int(cfg.seed))

    if not trainer.is_global_zero:  # DDP: rank 0 measures and writes the results
        return {"rank": trainer.global_rank, "test_acc": float(test_metrics["test/acc"]),
                "best_val_acc": None, "results_path": None}
    masks_state = callback.masks.stats()
    m = cfg.measure
    measured = measure_model(net, callback.masks.names, dm.input_shape, out,
                             latency=bool(m.latency), batch_sizes=list(m.batch_sizes),
                             warmup=int(m.warmup), runs=int(m.runs),
                             threads=threads, size=bool(m.size))
    best_score = ckpt.best_model_score
    results = {
        "model": parts["model_name"],
        "data": _choice("data", _target_name(cfg.data)),
        "pruner": parts["pruner"].name,
        "scope": parts["pruner"].scope,
        "granularity": parts["pruner"].granularity,
        "skipped_layers": list(parts["pruner"].skipped),
        "schedule": _choice("schedule", parts["schedule"].name),
        "seed": int(cfg.seed),
        "epochs": int(cfg.epochs),
        "epochs_run": int(trainer.current_epoch),
        "target_sparsity": parts["sparsity"],
        "mask_sparsity": masks_state["global"],
        "test_acc": float(test_metrics["test/acc"]),
        "test_loss": float(test_metrics["test/loss"]),
        "best_val_acc": None if best_score is None else float(best_score),
        "best_checkpoint": best_path,
        "adversarial": adversarial,
        "ddp": callback.rank_check or None,
        "hardware": _choice("hardware", str(cfg.hardware.get("target", "cpu"))),
        "threads": torch.get_num_threads(),
        "latency_aware": parts["pruner"].latency_report,
        "warnings": parts["warnings"],
        "distill": None if parts["distiller"] is None else {
            "teacher": parts["distiller"].source, "temperature": parts["distiller"].temperature,
            "alpha": parts["distiller"].alpha},
        **measured,
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - start,
        "config_hash": config_hash(resolved),
        "group_hash": config_hash(resolved, seedless=True),
        "versions": package_versions(),
        "results_path": str(out / "results.json"),
    }
    write_json_atomic(out / "results.json", results)
    (out / "error.json").unlink(missing_ok=True)  # a rerun sweep job that failed before
    print_summary(results)
    return results


def finished_results(cfg: DictConfig, out: Path) -> dict[str, Any] | None:
    """The results already in ``out`` if they are this config's (a rerun sweep skips its finished
    jobs); a ConfigError if ``out`` holds another config's results (never overwritten)."""
    import json

    from prunelab.results import config_hash

    path = out / "results.json"
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    new_hash = config_hash(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    if old.get("config_hash") != new_hash:
        raise ConfigError(f"{out} already holds results.json of another config (config_hash "
                          f"{old.get('config_hash')} vs {new_hash}); choose a new directory")
    print(f"prunelab: {out} already has this run's results.json; skipped (delete it to rerun)")
    (out / "error.json").unlink(missing_ok=True)
    return old


def record_failure(run_dir: Path, exc: BaseException, with_traceback: bool = True) -> None:
    """``error.json`` in a failed sweep job's directory (read by the sweep report)."""
    import traceback

    from prunelab.results import write_json_atomic

    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, ConfigError):
        msg = f"{type(exc).__name__}: {msg}"
    print(f"prunelab: error: {msg}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "error.json", {
        "error": msg, "type": type(exc).__name__,
        "overrides": list(HydraConfig.get().overrides.task),
        "traceback": (traceback.format_exc() if with_traceback and not isinstance(exc, ConfigError)
                      else None)})


def _error(msg: str) -> None:
    print(f"prunelab: error: {msg}", file=sys.stderr)
    sys.exit(2)


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig,
             on_config_error: Callable[[Path], None] | None = None) -> Any:
    """Run a Hydra task function's work. A single run turns a ConfigError into one line and
    exit code 2; in a sweep any failure is recorded (``error.json``) and NaN returned, so the
    other jobs still run and the sweep report lists this one. A sweep job runs in a forked child
    process (where fork exists): a job killed by a signal (the OOM killer, ``kill -9``) is
    recorded as failed too, instead of taking the launcher and the whole sweep down with it."""
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN and _can_fork():
        return _run_forked(task, cfg)
    return _run_here(task, cfg, on_config_error)


def _can_fork() -> bool:
    import multiprocessing as mp

    # fork is safe on Linux here: the job's parent has not started training threads yet
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def _run_forked(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """``_run_here`` in a forked child; its result comes back through a pipe."""
    import multiprocessing as mp
    import signal

    _preload()
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        recv.close()
        _die_with_parent()
        _as_single_run()
        send.send(_run_here(task, cfg, None))
        send.close()

    proc = ctx.Process(target=child, name="prunelab-job")
    proc.start()
    send.close()
    try:
        try:
            return recv.recv()  # the job's answer (it recorded its own failures)
        except EOFError:  # the child died before answering
            pass
        proc.join()
    except BaseException:  # Ctrl-C, SIGTERM as an exception, ...: no orphaned job
        proc.terminate()
        proc.join()
        raise
    finally:
        recv.close()
        if proc.is_alive():  # answered: let it finish its exit
            proc.join()
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            why = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            why = f"killed by signal {-code}"
        if code == -signal.SIGKILL:
            why += " (out of memory?)"
    else:
        why = f"exited with status {code}"
    record_failure(Path(HydraConfig.get().runtime.output_dir),
                   RuntimeError(f"the job's process was {why}"), with_traceback=False)
    return None


#: imported once by a sweep's launcher process, so that its forked jobs inherit them instead of
#: importing them again (about 5 s per job: a 36-job sweep spent 3 minutes on it)
PRELOAD = ("torch", "pytorch_lightning", "torchmetrics", "prunelab.module", "prunelab.pruning",
           "prunelab.models", "prunelab.data", "prunelab.results", "prunelab.measure")


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _as_single_run() -> None:
    """In a forked sweep job: make the command line and ``hydra.run.dir`` this job's, as if it had
    been started alone. Lightning's DDP launcher starts the other ranks by re-running
    ``sys.argv`` with ``hydra.run.dir``; from a sweep that would re-run the whole sweep (``-m``
    and every swept value) in the default run directory."""
    from omegaconf import read_write

    hc = HydraConfig.get()
    sys.argv = [sys.argv[0], *hc.overrides.task]
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir


def _die_with_parent() -> None:
    """Linux: the job gets SIGTERM when its launcher process dies (no orphaned training)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_here(task: Callable[[DictConfig], Any], cfg: DictConfig,
              on_config_error: Callable[[Path], None] | None) -> Any:
    from hydra.types import RunMode

    try:
        return task(cfg)
    except Exception as exc:  # noqa: BLE001 - a sweep records any failure and goes on
        out = Path(HydraConfig.get().runtime.output_dir)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            if isinstance(exc, ConfigError):
                if on_config_error is not None:
                    on_config_error(out)
                _error(str(exc))
            raise
        record_failure(out, exc)
        return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    results = run_task(run, cfg)
    if results is None:
        return float("nan")
    value = results.get(str(cfg.objective))
    return float(value if value is not None else results["test_acc"])


def cli_main(check: Callable[[list[str]], None], hydra_main: Callable[[], Any]) -> None:
    """Register the configs, answer a bad command line in one line, then start Hydra."""
    register_configs()
    try:
        check(sys.argv[1:])
    except ConfigError as exc:
        _error(str(exc))
    hydra_main()


def main() -> None:
    cli_main(check_overrides, _hydra_main)


if __name__ == "__main__":
    main()
