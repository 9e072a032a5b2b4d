"""A trial is an ordinary ``train`` run: the trained run's own overrides, its weights
(``init_from``), the policy as ``pruner=sensitivity pruner.profile=<yaml>`` pruned once at the
start, ``epochs`` of fine-tuning; in its own run directory with its ``results.json``.

The run is a child process (``python -m prunelab.train``), so a trial is exactly what a user
would run by hand, a crash of one trial is that trial's failure, and ``n_jobs`` threads run
several at once. A child dies with the search (``PR_SET_PDEATHSIG`` on Linux); a directory that
already holds ``results.json`` of the same command and policy is read, not run again; one that
holds a checkpoint resumes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from prunelab.errors import UserError

#: Keys of the trained run's command line a trial sets itself (with everything under them).
TRIAL_KEYS = ("pruner", "sparsity", "schedule", "epochs", "init_from", "resume", "control",
              "hydra", "objective")


class TrialFailed(UserError):
    """A trial's ``train`` exited non-zero (its last error line; the trial counts as failed)."""


def run_overrides(run: str | Path | None) -> list[str]:
    """The trained run's config as ``train`` overrides, without the keys a trial sets
    (:data:`TRIAL_KEYS`): its group choices (``experiment`` expanded, since an experiment's values
    under ``pruner``/``schedule`` would not fit the trial's), then every value of its saved
    config (``.hydra/config.yaml``) that differs from what those choices compose to."""
    if run is None:
        return []
    hydra_dir = Path(run) / ".hydra"
    if not (hydra_dir / "config.yaml").is_file():
        return []
    from omegaconf import OmegaConf

    choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
    groups = [f"{g}={v}" for g, v in choices.items()
              if "/" not in g and v is not None and g not in ("experiment", *TRIAL_KEYS)]
    from prunelab.results import flatten

    base = flatten(OmegaConf.to_container(_compose(groups), resolve=False))
    saved = flatten(OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml"),
                                           resolve=False))
    out = list(groups)
    for key, value in saved.items():
        if key.split(".", 1)[0] in TRIAL_KEYS or key.startswith("init_from"):
            continue
        if key not in base:
            out.append(f"+{key}={_value(value)}")
        elif base[key] != value:
            out.append(f"{key}={_value(value)}")
    return out


def _compose(overrides: list[str]) -> Any:
    """``train``'s config composed with ``overrides``."""
    from prunelab.cli import compose
    from prunelab.config import register_configs

    register_configs()
    return compose("train", overrides)


def scope_overrides(pruner_cfg: Mapping[str, Any]) -> list[str]:
    """The trained run's ``pruner.include``/``exclude`` as overrides (what the space prunes)."""
    out = []
    if pruner_cfg.get("include") is not None:
        out.append(f"pruner.include={_value(list(pruner_cfg['include']))}")
    if pruner_cfg.get("exclude"):
        out.append(f"pruner.exclude={_value(list(pruner_cfg['exclude']))}")
    return out


def _value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value(v)}" for k, v in value.items()) + "}"
    return _quoted(value)


_PLAIN = re.compile(r"[\w./+\-@%*?|]+", re.ASCII)


def _other_type(text: str) -> bool:
    """Hydra would read ``text`` as a number, boolean or null."""
    if text.lower() in ("null", "true", "false", "nan", "inf", "+inf", "-inf"):
        return True
    for parse in (float, lambda t: int(t, 0)):
        try:
            parse(text)
            return True
        except ValueError:
            pass
    return False


def _quoted(value: Any) -> str:
    """A string as Hydra's override grammar reads it back as that string: plain when it is a
    plain word that does not read as a number, boolean or null, else single-quoted."""
    from prunelab.cli import hydra_quoted

    text = str(value)
    return text if _PLAIN.fullmatch(text) and not _other_type(text) else hydra_quoted(text)


def trial_command(base: Sequence[str], run: str | Path | None, profile: str | Path | None,
                  epochs: int | None, extra: Sequence[str], params: Mapping[str, Any],
                  out_dir: str | Path, threads: int | None = None,
                  scope: Sequence[str] = ()) -> list[str]:
    """``python -m prunelab.train`` for one trial: ``base`` (the run's overrides), the policy
    (``profile``; None: nothing pruned) over the trained run's prunable weights (``scope``:
    its ``pruner.include``/``exclude``), ``epochs``, ``extra`` (``trial_overrides``), the
    sampled ``params``, the run directory."""
    args = list(base)
    if run is not None:
        args.append(f"init_from={_quoted(Path(run).resolve())}")
    if profile is not None:
        args += ["pruner=sensitivity", f"pruner.profile={_quoted(Path(profile).resolve())}",
                 "schedule=oneshot", "schedule.at_epoch=0", *scope]
    elif run is not None:
        args += ["pruner=none", "sparsity=0"]
    if epochs is not None:
        args.append(f"epochs={int(epochs)}")
    args += ["measure.latency=false", *extra]
    # a policy that prunes nothing runs pruner=none, which has no pruner.* settings to take
    args += [f"{k}={_value(v)}" for k, v in params.items()
             if profile is not None or not k.startswith("pruner.")]
    if threads is not None:
        args.append(f"hardware.threads={int(threads)}")
    args.append(f"hydra.run.dir={_quoted(Path(out_dir).resolve())}")
    return [sys.executable, "-m", "prunelab.train", *args]


_PRCTL: Any = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: the run dies with the search


def _load_prctl() -> None:
    """libc's prctl, loaded in the parent: the child only calls it (loading a library between
    fork and exec of a threaded process can deadlock)."""
    global _PRCTL
    if _PRCTL is None and sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        try:
            _PRCTL = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl
        except (OSError, AttributeError):
            _PRCTL = None


def write_profile(path: Path, profile: Mapping[str, Any] | None) -> Path | None:
    """The policy as a profile file (None: nothing pruned, no file)."""
    if profile is None:
        return None
    from prunelab.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dict(profile), sort_keys=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def run_trial(command: Sequence[str], out_dir: str | Path, log: str | Path,
              policy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``results.json`` of the run in ``out_dir``: read when there and made by the same command
    and policy (``<dir>.command.json`` says), else ``command`` run to write it (its output in
    ``log``); TrialFailed with the run's error line otherwise."""
    out = Path(out_dir)
    results = out / "results.json"
    made_by = out.parent / f"{out.name}.command.json"
    mine = {"args": list(command[3:]), "policy": dict(policy) if policy else None}
    if made_by.is_file() and json.loads(made_by.read_text()) != mine:
        raise TrialFailed(f"{out} holds a run of another command or policy ({made_by}); remove "
                          f"it or search in another directory")
    if results.is_file() and made_by.is_file():
        return json.loads(results.read_text())
    if results.is_file():
        raise TrialFailed(f"{out} holds results.json of an unknown command; remove it or search "
                          f"in another directory")
    from prunelab.files import write_json_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(made_by, mine)
    _load_prctl()
    with open(log, "ab") as f:
        kwargs = {"preexec_fn": _die_with_parent} if _PRCTL is not None else {}
        code = subprocess.call(list(command), stdout=f, stderr=subprocess.STDOUT, **kwargs)
    if code != 0 or not results.is_file():
        lines = [ln for ln in Path(log).read_text(errors="replace").splitlines()
                 if ln.startswith("prunelab: error:")]
        why = lines[-1].removeprefix("prunelab: error: ") if lines else f"exit status {code}"
        raise TrialFailed(f"trial run {out} failed: {why} (log: {log})")
    return json.loads(results.read_text())
