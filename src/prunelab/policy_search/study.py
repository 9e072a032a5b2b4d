"""The Optuna study of a search: objectives, storage, sampler, and the loop that fills it.

- Storage: an SQLite file in the search directory by default (an interrupted search resumes
  from it), or any URL Optuna's RDB storage takes (PostgreSQL/MySQL on a cluster). Several
  processes on one storage work on one study: trial numbers are given out by the database, a
  process stops as soon as the finished and running trials reach ``n_trials`` (a trial asked for
  beyond that is told PRUNED with the user attribute ``surplus`` and never runs).
- A trial that was running in a process that died: on this host its process is seen dead when
  a search starts (PID recorded in the trial); elsewhere Optuna's heartbeat fails it after the
  grace period. Either way it is retried with the same parameters in its own run directory
  (:func:`requeue`), where the run resumes from its checkpoint or is read when it had finished.
- The study remembers what it searches (``prunelab`` user attribute); a search with other
  objectives or another space on the same storage and study name is refused naming the keys.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prunelab.errors import ConfigError, UserError

#: objective -> (direction, what it is)
OBJECTIVES = {
    "val_acc": ("maximize", "validation accuracy after the trial's fine-tuning"),
    "macs": ("minimize", "MACs per image: compact network for channels, non-zero otherwise"),
    "params": ("minimize", "non-zero parameters"),
    "size": ("minimize", "bytes on disk of the sparse weights file"),
    "latency": ("minimize", "latency (ms) of the compacted network in the hardware profile's runtime"),
}
SAMPLERS = ("auto", "tpe", "nsga2", "random")


class SearchError(UserError):
    """A search that cannot start or continue (one line)."""


def check_objectives(objectives: Any) -> list[str]:
    names = [str(o) for o in (objectives or [])]
    if not names:
        raise ConfigError(f"objectives={list(names)}: name at least one; allowed: "
                          f"{', '.join(OBJECTIVES)}")
    for o in names:
        if o not in OBJECTIVES:
            raise ConfigError(f"objectives: unknown objective {o!r}; allowed: "
                              f"{', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives={names} names one objective twice")
    if "val_acc" not in names:
        raise ConfigError(f"objectives={names} needs val_acc (what the costs are traded "
                          f"against); allowed: [val_acc] or [val_acc, <costs>]")
    return ["val_acc", *(o for o in names if o != "val_acc")]


def _constraint(trial: Any) -> list[float]:
    """A trial's constraint values (``budgets``: cost - limit, feasible when <= 0)."""
    return list(trial.user_attrs.get("constraint") or [0.0])


def make_sampler(kind: str, n_objectives: int, seed: int, population: int | None,
                 constrained: bool = False) -> Any:
    """The sampler (``kind`` one of :data:`SAMPLERS`, checked by the search's settings check);
    ``constrained``: trials over a budget are infeasible (NSGA-II, TPE)."""
    import optuna

    if kind == "auto":
        kind = "nsga2" if n_objectives > 1 else "tpe"
    from optuna.trial import Trial

    # Optuna >= 5: the objective sets each trial's constraints (Trial.set_constraint)
    old_api = constrained and not hasattr(Trial, "set_constraint")
    constraints = {"constraints_func": _constraint} if old_api else {}
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=int(population or 10), seed=seed,
                                             **constraints)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, population or 10)),
                                      **constraints)


MAX_RETRIES = 3


def requeue(study: Any, trial: Any) -> None:
    """Queue a trial whose process died again, with its parameters and run directory only (not
    the dead process's host and PID), at most :data:`MAX_RETRIES` times; Optuna's heartbeat
    calls it for stale trials, :func:`reclaim_dead` for this host's dead ones."""
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > MAX_RETRIES:
        return
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params,
        distributions=trial.distributions,
        user_attrs={k: trial.user_attrs[k] for k in ("run_dir",) if k in trial.user_attrs},
        system_attrs={"failed_trial": history[0], "retry_history": history}))


def open_storage(url: str, heartbeat: int | None) -> Any:
    """Optuna's RDB storage at ``url`` (SearchError naming the URL when it cannot be opened);
    ``heartbeat`` seconds: a trial whose process stopped beating for 3 of them is failed and
    retried by any search on the storage."""
    import inspect
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    if heartbeat:
        new = "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters
        kwargs.update({"heartbeat_interval": int(heartbeat), "grace_period": 3 * int(heartbeat),
                       "heartbeat_stale_trial_callback" if new else "failed_trial_callback":
                       requeue})
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial: our own line
    for attempt in range(5):  # processes creating one new database at once race on its tables
        try:
            return RDBStorage(url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any driver's error: one line naming the URL
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "IntegrityError" not in why and "already exists" not in why or attempt == 4:
                raise SearchError(f"storage={url!r} cannot be opened: {why}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(storage: Any, name: str, directions: Sequence[str], identity: Mapping[str, Any],
               sampler: Any) -> Any:
    """The study ``name`` on ``storage``: created with ``identity``, or loaded when it has the
    same directions and identity (SearchError naming what differs otherwise)."""
    import optuna

    from optuna.exceptions import DuplicatedStudyError

    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        try:
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                        directions=list(directions))
            study.set_user_attr("prunelab", dict(identity))
        except DuplicatedStudyError:  # another search created it at this moment
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    for _ in range(50):  # its creator stamps what it searches right after creating it
        if "prunelab" in study.user_attrs:
            break
        time.sleep(0.2)
    else:
        raise SearchError(f"study {name!r} in the storage was not made by prunelab.search: use "
                          f"another study_name= or storage=")
    old = study.user_attrs.get("prunelab") or {}
    mine = [d.name.lower() for d in study.directions]
    if old.get("objectives") != identity.get("objectives") or mine != list(directions):
        raise SearchError(f"study {name!r} in the storage has objectives {old.get('objectives')} "
                          f"({', '.join(mine)}), not {identity.get('objectives')}: use another "
                          f"study_name= or storage=")
    # keys one side lacks (a study of an older prunelab) are not compared
    differ = sorted(k for k in set(old) & set(identity) if old[k] != identity[k])
    if differ:
        raise SearchError(f"study {name!r} in the storage searches with other settings "
                          f"({', '.join(f'{k}: {old.get(k)!r} vs {identity.get(k)!r}' for k in differ)}): "
                          f"use another study_name= or storage=")
    return study


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_dead(study: Any) -> list[int]:
    """Fail (and retry with the same parameters) the running trials of this host whose search
    process is dead; returns their numbers."""
    from optuna.trial import TrialState

    host, dead = socket.gethostname(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") == host and isinstance(pid, int) and not _alive(pid):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):  # another search reclaimed it first
                continue
            requeue(study, study.get_trials(deepcopy=False)[t.number])
            dead.append(t.number)
    return dead


def is_surplus(study: Any, trial: Any, n_trials: int) -> bool:
    """True when the trials before ``trial`` that finished, run or wait to run (retries) already
    make ``n_trials``."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    before = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
    return len(before) >= n_trials


def _count(study: Any, *states: Any) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def fill(study: Any, objective: Callable[[Any], Any], n_trials: int, n_jobs: int,
         timeout: float | None, max_failures: int) -> None:
    """Run trials until the study holds ``n_trials`` finished ones, or finished and running (in
    other processes) ones, or ``timeout`` passed; ``max_failures`` failed trials in a row stop
    the search with the last one's error."""
    import threading

    import optuna
    from optuna.trial import TrialState

    failures: list[str] = []
    lock = threading.Lock()

    def wrapped(trial: Any) -> Any:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        if is_surplus(study, trial, n_trials):  # the others' trials make the count: stop here
            trial.set_user_attr("surplus", True)
            study.stop()
            raise optuna.TrialPruned()
        try:
            value = objective(trial)
        except UserError as exc:
            print(f"prunelab: warning: trial {trial.number} failed: {exc}", file=sys.stderr)
            with lock:
                failures.append(str(exc))
                if len(failures) >= max_failures:
                    study.stop()
            raise
        with lock:
            failures.clear()
        return value

    def done(study: Any, _t: Any) -> None:
        if _count(study, TrialState.COMPLETE) >= n_trials:
            study.stop()

    deadline = None if timeout is None else time.monotonic() + float(timeout)
    while True:
        complete = _count(study, TrialState.COMPLETE)
        others = _count(study, TrialState.RUNNING)  # in other processes: ours have returned
        left = None if deadline is None else deadline - time.monotonic()
        if complete >= n_trials or complete + others >= n_trials or (left is not None and left <= 0):
            return
        study.optimize(wrapped, n_jobs=n_jobs, timeout=left, catch=(UserError,), callbacks=[done])
        if len(failures) >= max_failures:
            raise SearchError(f"{len(failures)} trials failed in a row; the last: {failures[-1]}")
