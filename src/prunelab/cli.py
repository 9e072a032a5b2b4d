"""The one CLI layer shared by every command (``train``, ``lottery``, ``sensitivity``,
``measure``, ``export``, ``report``).

Before Hydra starts, :func:`start` checks the command line: a group option that does not exist
(``pruner=magnitud``), an experiment of another command, or a key the command's config does not
have (``foo=bar``) is answered with one line, ``prunelab: error: ...``, and exit status 2,
before anything is written. Errors raised later by the command (any :class:`UserError`) are
turned into the same one line by :mod:`prunelab.jobs`. ``--help`` is each command's own
``hydra/help`` template (``conf/hydra/help/<command>.yaml``).

Heavy libraries (torch, Lightning) are not imported here: a bad command line is answered in a
fraction of a second.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from prunelab.errors import ConfigError, UserError, one_line

CONF_DIR = Path(__file__).parent / "conf"
#: Hydra flags after which no override check is made: Hydra answers them itself, or the config
#: comes from elsewhere (another config directory, path or name, a rerun).
_PASS_THROUGH = ("--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion",
                 "-sc", "--cfg", "-c", "--config-dir", "-cd", "--config-path", "-cp",
                 "--config-name", "-cn", "--experimental-rerun")


#: The config groups a user sets on each command's command line (checked before Hydra starts,
#: listed by ``--help``).
COMMAND_GROUPS = {
    "train": ("data", "model", "pruner", "schedule", "optimizer", "lr_scheduler", "regularizer",
              "hardware", "trainer", "logger", "experiment", "debug"),
    "lottery": ("data", "model", "optimizer", "lr_scheduler", "hardware", "trainer", "logger",
                "experiment", "debug"),
    "sensitivity": (),
    "measure": ("hardware",),
    "export": (),
    "report": (),
    "search": ("hardware", "experiment"),
}


def known_options(group: str) -> list[str]:
    """The option names of a config group (its YAML files)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def experiments(command: str) -> list[str]:
    """The experiments (``conf/experiment/*.yaml``) that belong to ``command``: each file's
    first line says ``# @command <name>``; files without it belong to ``train``."""
    out = []
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        first = path.read_text().splitlines()[:3]
        owner = next((ln.split("@command", 1)[1].strip() for ln in first if "@command" in ln),
                     "train")
        if owner == command:
            out.append(path.stem)
    return out


def help_groups(command: str) -> str:
    """``${help_groups:<command>}`` in a ``hydra/help`` template: the command's groups and their
    options, one line each (only the command's own experiments; no internal ``schema/*``)."""
    lines = []
    for group in sorted(COMMAND_GROUPS.get(str(command), ())):
        options = experiments(str(command)) if group == "experiment" else known_options(group)
        lines.append(f"  {group}: {', '.join(options)}")
    return "\n".join(lines) or "  (none)"


def fail(msg: str) -> NoReturn:
    """Print the one-line error and exit with status 2."""
    print(f"prunelab: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _split(arg: str) -> tuple[str, str] | None:
    if "=" not in arg or arg.startswith("-"):
        return None
    key, value = arg.split("=", 1)
    key = key.lstrip("+~")
    if key.startswith("override "):
        key = key[len("override "):]
    return key.strip("/"), value


def check_group_options(argv: Sequence[str], groups: Iterable[str], command: str) -> None:
    """Unknown group options (``pruner=magnitud``) and other commands' experiments, as one line
    listing the known ones."""
    groups = set(groups)
    if any(a.lstrip("+").startswith("hydra.searchpath") for a in argv):
        return  # options from the user's own config dirs: the compose check answers for them
    for arg in overrides(argv):
        kv = _split(arg)
        if kv is None or kv[0] not in groups or "(" in kv[1] or kv[1] in ("", "null"):
            continue
        key, value = kv
        known = experiments(command) if key == "experiment" else known_options(key)
        for v in value.split(","):
            if v in known:
                continue
            if key == "experiment" and v in known_options("experiment"):
                owner = next((c for c in COMMAND_GROUPS if v in experiments(c)), "train")
                raise ConfigError(f"experiment={v} belongs to prunelab.{owner}: run python -m "
                                  f"prunelab.{owner} experiment={v}; experiments of prunelab."
                                  f"{command}: {', '.join(known) or 'none'}")
            raise ConfigError(f"unknown {key}={v!r}; known: {', '.join(known)}")


def overrides(argv: Sequence[str]) -> list[str]:
    """The overrides of a command line: without Hydra's flags (``-m``, ``--package x``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--package", "-p"):
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def compose(config_name: str, overrides: Sequence[str]) -> Any:
    """A command's config as Hydra composes it with ``overrides`` (its compose API; inside a
    running command, that command's Hydra state is set aside and restored)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name=config_name):
            return hydra_compose(config_name, overrides=list(overrides))
    finally:
        restore_gh_from_backup(backup)


def _parses(arg: str) -> bool:
    """Whether Hydra's override grammar takes ``arg`` alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_overrides([arg])
    except HydraException:
        return False
    return True


def check_keys(config_name: str, argv: Sequence[str]) -> None:
    """Compose the command's config with the command line's single-valued overrides: a key the
    config does not have (``foo=bar``) or a value of the wrong type is one line, not Hydra's
    multi-line report. Sweep overrides (``a=1,2``) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = overrides(argv)
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as exc:
        bad = next((a for a in args if not _parses(a)), None)
        raise ConfigError(f"cannot parse {'the command line' if bad is None else repr(bad)} "
                          f"({one_line(exc)}); allowed: key=value, group=option, +key=value; "
                          f"quote a list item holding '=' or ',' for Hydra: "
                          f"'key=[\"a=b\"]'") from None
    plain = [a for a, o in zip(args, parsed) if not o.is_sweep_override()
             and (not o.key_or_group.startswith("hydra") or o.key_or_group == "hydra.searchpath")]
    try:
        compose(config_name, plain)
    except HydraException as exc:
        raise ConfigError(_composition_message(exc, config_name)) from None
    except ValueError as exc:  # e.g. group=null where the group has no default
        raise ConfigError(one_line(exc)) from None


def _composition_message(exc: BaseException, command: str) -> str:
    """Hydra's composition error as one line naming the override and what to do."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    msg = one_line(exc)
    if msg.startswith("Could not override '"):
        key = msg.split("'")[1]
        return (f"{key}: no such option ({one_line(cause)}); `python -m prunelab.{command} "
                f"--help` lists the options, +{key}=... adds a new key")
    if msg.startswith("Could not append to config") or msg.startswith("Could not delete"):
        return f"{msg} ({one_line(cause)})"
    if cause is not exc:
        return f"{msg} ({one_line(cause)})" if one_line(cause) not in msg else msg
    return msg


#: Keys whose value is a path, on any command: sweep and lottery directory names hold ``=`` and
#: ``,``, which Hydra's override parser reads as syntax (``,``: a sweep); :func:`quote_paths`
#: quotes such a value when the path exists.
PATH_KEYS = ("resume", "distill.teacher", "pruner.profile", "data.root", "lottery.masks_from",
             "run", "out", "dir", "init_from")
#: Keys holding a map of new keys (globs): ``key={glob: value}`` adds them (as ``++key=``).
MAP_KEYS = ("lottery.layer_fractions",)
_SYNTAX = set(",=[]{}()'\"")


def hydra_quoted(value: str) -> str:
    """``value`` as a single-quoted Hydra string (a quote, and backslashes before a quote or
    the end, escaped)."""
    import re

    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""),
                        value) + "'"


def quote_paths(argv: Sequence[str]) -> list[str]:
    """The command line with an existing path that holds Hydra syntax (``resume=outputs/multirun/
    .../pruner=magnitude,sparsity=0.7``) quoted for Hydra, and ``lottery.layer_fractions={...}``
    as ``++lottery.layer_fractions={...}`` (its globs are new keys); the rest as it is."""
    out = []
    for arg in argv:
        kv = _split(arg)
        if kv is not None and not arg.startswith(("+", "~")):
            key, value = kv
            if (key in PATH_KEYS and value[:1] not in ("'", '"') and _SYNTAX & set(value)
                    and Path(value).expanduser().exists()):
                arg = f"{arg.split('=', 1)[0]}={hydra_quoted(value)}"
            elif key in MAP_KEYS and value.lstrip().startswith("{"):
                arg = f"++{arg}"
        out.append(arg)
    return out


#: Where a command's Hydra creates its run directory by default (under the launch directory).
_DEFAULT_OUT = {"train": "outputs", "lottery": "outputs", "sensitivity": "outputs"}
#: Less free space than this where the run directory goes is a full disk (a run writes MBs).
_MIN_FREE = 1 << 20


def check_output_dir(argv: Sequence[str], command: str) -> None:
    """The run directory (``hydra.run.dir``, ``hydra.sweep.dir`` with ``-m``, or the command's
    default under ``outputs/``) must be creatable: a read-only place is one line naming it and
    the OS error, before Hydra creates anything."""
    import shutil
    import tempfile

    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir"
    given = [kv[1] for kv in map(_split, overrides(argv)) if kv is not None and kv[0] == key]
    if given:
        target, label = given[-1].split("${")[0].strip("'\""), f"{key}={given[-1]}"
    elif command in _DEFAULT_OUT:
        target, label = _DEFAULT_OUT[command], f"the output directory {_DEFAULT_OUT[command]}/"
    else:
        return
    existing = Path(target or ".").expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{label}: {existing} is a file, not a directory; choose a directory "
                          f"({key}=<dir>)")
    try:
        tempfile.TemporaryFile(dir=existing).close()  # no name: nothing is left behind
        free = shutil.disk_usage(existing).free
    except OSError as exc:
        raise ConfigError(f"{label}: cannot write in {existing}: [Errno {exc.errno}] "
                          f"{exc.strerror}; choose a writable directory ({key}=<dir>)") from None
    if free < _MIN_FREE:
        raise ConfigError(f"{label}: the disk holding {existing} is full ({free} bytes free); "
                          f"free space or choose another directory ({key}=<dir>)")


def resume_arguments(args: list[str]) -> list[str]:
    """``train resume=<run>``: the run continues in its own directory with its own config, so
    its saved overrides (``.hydra/overrides.yaml``) come first (the command line's own keys win)
    and ``hydra.run.dir`` is the run's directory unless given."""
    values = [kv[1] for a in overrides(args) if (kv := _split(a)) and kv[0] == "resume"]
    value = values[-1].strip("'\"") if values else ""
    if value in ("", "null"):
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError("resume= continues one run; to continue a killed sweep, rerun the "
                          "sweep's command with hydra.sweep.dir=<its directory>")
    from prunelab.runs import resume_location

    run_dir, _ = resume_location(value)
    keys = {kv[0] for a in overrides(args) if (kv := _split(a))}
    saved = run_dir / ".hydra" / "overrides.yaml"
    first: list[str] = []
    if saved.is_file():
        from omegaconf import OmegaConf

        first = [str(o) for o in OmegaConf.load(saved)
                 if (kv := _split(str(o))) is not None and kv[0] not in keys]
    last = [] if "hydra.run.dir" in keys else [f"hydra.run.dir={hydra_quoted(str(run_dir))}"]
    return [*first, *args, *last]


def start(hydra_main: Callable[[], Any], command: str, groups: Iterable[str] | None = None,
          argv: list[str] | None = None) -> None:
    """A command's ``main``: register the configs, check the command line, then start Hydra.
    ``command`` names both the command and its primary config (``conf/<command>.yaml``);
    ``groups``: the groups to check (default: ``COMMAND_GROUPS[command]``)."""
    from omegaconf import OmegaConf

    from prunelab.config import register_configs

    register_configs()
    if not OmegaConf.has_resolver("help_groups"):
        OmegaConf.register_new_resolver("help_groups", help_groups)
    args = quote_paths(sys.argv[1:] if argv is None else argv)
    if command == "train" and not any(a.split("=", 1)[0] in _PASS_THROUGH for a in args):
        try:
            args = resume_arguments(args)
        except UserError as exc:
            fail(one_line(exc))
    if argv is None:
        sys.argv[1:] = args  # what Hydra (and a DDP launcher re-running it) parses
    if not any(a.split("=", 1)[0] in _PASS_THROUGH for a in args):
        try:
            check_group_options(args, COMMAND_GROUPS.get(command, ()) if groups is None else groups,
                                command)
            check_keys(command, args)
            check_output_dir(args, command)
        except UserError as exc:
            fail(one_line(exc))
    hydra_main()
