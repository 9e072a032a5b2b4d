"""Job supervision for every command that runs under Hydra.

:func:`run_task` runs a task function's work. A single run turns a :class:`UserError` into one
line and exit status 2. In a sweep any failure is recorded (``error.json`` in the job's
directory, read by the sweep report) and ``None`` returned, so the other jobs still run. A sweep
job runs in a forked child process (where fork exists): a job killed by a signal (the OOM
killer, ``kill -9``) is recorded as failed too, instead of taking the launcher and the whole
sweep down with it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prunelab.cli import fail
from prunelab.errors import ConfigError, UserError, one_line

#: Imported once by a sweep's launcher process, so that its forked jobs inherit them instead of
#: importing them again (seconds per job).
PRELOAD = ("torch", "pytorch_lightning", "torchmetrics", "prunelab.module", "prunelab.pruning",
           "prunelab.models", "prunelab.data", "prunelab.results", "prunelab.metrics")


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig, lock: bool = False) -> Any:
    """Run ``task(cfg)`` under Hydra as described in the module docstring; a refused single run
    takes back what Hydra created for it (:func:`discard_if_empty`). ``lock``: the task writes
    a run directory (Hydra's output directory), held by one process at a time
    (:func:`prunelab.files.directory_lock`; a second one is refused naming the holder)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN and _can_fork():
        return _run_forked(task, cfg, lock)
    return _run_here(task, cfg, lock)


def finished_results(cfg: DictConfig, out: Path) -> dict[str, Any] | None:
    """The results already in ``out`` if they are this config's (a rerun sweep skips its
    finished jobs); a ConfigError if ``out`` holds another config's results (never
    overwritten)."""
    import json

    from prunelab.results import config_hash

    path = out / "results.json"
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    new_hash = config_hash(resolved)
    if old.get("config_hash") != new_hash:
        why = (_differences(out, resolved) or _weights_difference(old, resolved)
               or f"config_hash {old.get('config_hash')} vs {new_hash}")
        raise ConfigError(f"{out} already holds results.json of another config: {why}; rerun "
                          f"with its settings or choose a new directory")
    print(f"prunelab: {out} already has this run's results.json; skipped (delete it to rerun)")
    (out / "error.json").unlink(missing_ok=True)
    return old


def _differences(out: Path, resolved: dict) -> str:
    """The result-relevant keys in which ``resolved`` differs from the config of the run in
    ``out`` (its ``.hydra/config.yaml``), ``'; '``-joined; empty if that cannot be read."""
    from prunelab.results import run_config_diff

    try:
        saved = OmegaConf.to_container(OmegaConf.load(out / ".hydra" / "config.yaml"),
                                       resolve=True, enum_to_str=True)
    except Exception:  # noqa: BLE001 - no or unreadable saved config: the hashes say it
        return ""
    return "; ".join(run_config_diff(saved, resolved))


def _weights_difference(old: dict, resolved: dict) -> str:
    """The ``init_from`` file's content when that is what differs (``.hydra/config.yaml`` has
    the path, not the hash: the run's results.json has both)."""
    before, now = old.get("init_from_sha256"), resolved.get("init_from_sha256")
    if before and now and before != now:
        return (f"init_from_sha256 ({str(before)[:12]}... vs {str(now)[:12]}...: the file at "
                f"init_from={resolved.get('init_from')!r} changed)")
    return ""


def record_failure(run_dir: Path, exc: BaseException, with_traceback: bool = True) -> None:
    """``error.json`` in a failed sweep job's directory (read by the sweep report)."""
    import traceback

    from hydra.core.hydra_config import HydraConfig

    from prunelab.files import write_json_atomic

    msg = one_line(exc)
    if not isinstance(exc, UserError):
        msg = f"{type(exc).__name__}: {msg}"
    print(f"prunelab: error: {msg}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "error.json", {
        "error": msg, "type": type(exc).__name__,
        "overrides": list(HydraConfig.get().overrides.task),
        "traceback": (traceback.format_exc() if with_traceback and not isinstance(exc, UserError)
                      else None)})


#: What Hydra writes into a run directory before the task starts.
_HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}


def discard_if_empty(run_dir: Path) -> None:
    """Remove a run directory that holds only what Hydra wrote before a refused command ran
    (``.hydra/`` and an empty log): a refused command leaves nothing behind."""
    if not run_dir.is_dir() or run_dir.resolve() in (Path.cwd(), *Path.cwd().parents):
        return  # hydra.run.dir=. : the user's own directory
    entries = list(run_dir.iterdir())
    if not entries:
        return  # nothing Hydra wrote: not a directory this command made
    for f in entries:
        if f.is_dir() and f.name == ".hydra":
            if not {g.name for g in f.iterdir()} <= _HYDRA_FILES:
                return
        elif not (f.is_file() and f.suffix == ".log" and f.stat().st_size == 0):
            return
    for f in entries:
        if f.is_dir():
            for g in f.iterdir():
                g.unlink()
            f.rmdir()
        else:
            f.unlink()
    run_dir.rmdir()
    # parents the command created (outputs/sensitivity/...) go too, up to ./outputs
    outputs = (Path.cwd() / "outputs").resolve()
    parent = run_dir.resolve().parent
    while parent != outputs.parent and outputs in (parent, *parent.parents):
        if any(parent.iterdir()):
            break
        parent.rmdir()
        parent = parent.parent


def _can_fork() -> bool:
    import multiprocessing as mp

    # fork is safe on Linux here: the job's parent has not started training threads yet
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def _run_forked(task: Callable[[DictConfig], Any], cfg: DictConfig, lock: bool) -> Any:
    """``_run_here`` in a forked child; its result comes back through a pipe."""
    import multiprocessing as mp
    import signal

    from hydra.core.hydra_config import HydraConfig

    _preload()
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        recv.close()
        _die_with_parent()
        _as_single_run()
        send.send(_run_here(task, cfg, lock))
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
    from hydra.core.hydra_config import HydraConfig
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


def _secondary_rank() -> bool:
    """A DDP process other than global rank 0 (Lightning re-runs the command for its other
    ranks, torchrun and SLURM set these variables): the directory is rank 0's to lock."""
    return any(os.environ.get(v, "0") not in ("", "0")
               for v in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def _run_here(task: Callable[[DictConfig], Any], cfg: DictConfig, lock: bool = False) -> Any:
    from contextlib import nullcontext

    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode

    from prunelab.config import as_write_error
    from prunelab.files import DirectoryBusy, directory_lock

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        with directory_lock(out) if lock and not _secondary_rank() else nullcontext():
            return task(cfg)
    except Exception as exc:  # noqa: BLE001 - a sweep records any failure and goes on
        err: BaseException = exc
        if isinstance(exc, DirectoryBusy):  # nothing is written in the holder's directory
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                fail(str(exc))
            print(f"prunelab: error: {exc}", file=sys.stderr)
            return None
        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__
        err = as_write_error(err, out)  # a full disk, a read-only directory: one line
        user = isinstance(err, UserError) and os.environ.get("HYDRA_FULL_ERROR") != "1"
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            if user:
                discard_if_empty(out)
                fail(one_line(err))
            raise
        record_failure(out, err if user else exc)
        return None
