"""Start a run from trained weights: ``init_from=<state_dict .pt | Lightning .ckpt | run dir>``.

``python -m prunelab.train init_from=outputs/runs/<dense run> schedule=oneshot schedule.at_epoch=0``
loads the weights into the network assembly built, before the pruning callback binds it
(:func:`load_init`, called by :func:`prunelab.assemble.assemble`). ``init_from`` is

- a prunelab run directory: its ``checkpoints/best.ckpt``, else ``last.ckpt``; its masks are
  not needed (its saved weights are already masked);
- a Lightning checkpoint (``.ckpt``): its ``state_dict``. Keys are matched to the network's
  names directly or with one leading component stripped (``net.`` in prunelab's own
  checkpoints, ``model.`` in many other LightningModules, ``module.`` from DataParallel): the
  prefix under which the most keys match is used, and keys without it are unexpected;
- a state_dict file (``.pt``/``.pth``): ``{name: tensor}`` or ``{"state_dict": {...}}``.

Every file is read with ``torch.load(..., weights_only=True)`` (:func:`prunelab.runs.
read_checkpoint`): a file that needs pickle is refused in one line. ``init_strict=true`` refuses
missing or unexpected keys in one line; ``false`` loads the keys that fit and warns, listing the
others. Shapes that do not fit are refused either way.

The file's content is part of the run's identity (:func:`init_identity`): its SHA-256 joins the
run's config as ``init_from_sha256``, so a run started from other weights is neither resumed
nor counted as finished by a run of another file. The file is hashed once per process.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, open_dict

from prunelab.errors import ConfigError
from prunelab.runs import RunError, locate_checkpoint, read_checkpoint

if TYPE_CHECKING:
    import torch
    from torch import nn

#: ``init_from``'s value in an experiment that needs trained weights (experiment=finetune_pruned).
REQUIRED = "<required>"
#: What ``init_from`` may name (in every message).
ALLOWED = "a prunelab run directory, a Lightning .ckpt or a state_dict .pt file"
#: Keys named in a one-line message (then "...").
SHOWN = 3
#: (resolved path, size, mtime_ns) -> sha256: a file is read once per process for its hash.
_HASHES: dict[tuple[str, int, int], str] = {}


def init_value(cfg: Any) -> str | None:
    """``init_from`` of a run config (None when unset); an experiment that requires it
    (``init_from: <required>``: OmegaConf's ``???`` cannot override a value) without it is a
    one-line ConfigError."""
    value = cfg.get("init_from")
    if value == REQUIRED:
        raise ConfigError(f"init_from is required by this experiment: the run starts from "
                          f"trained weights; allowed: {ALLOWED}")
    return None if value in (None, "", "None") else str(value)


def init_file(value: str) -> Path:
    """The file ``init_from=<value>`` loads: a run directory's best (else last) checkpoint, or
    the file itself (ConfigError if neither exists)."""
    path = Path(value).expanduser()
    if path.is_dir():
        try:
            return locate_checkpoint(path, "best")
        except RunError:
            raise ConfigError(f"init_from={value!r}: no checkpoints/best.ckpt or "
                              f"checkpoints/last.ckpt there; allowed: {ALLOWED}") from None
    if not path.is_file():
        raise ConfigError(f"init_from={value!r} does not exist; allowed: {ALLOWED}")
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, computed once per process (keyed by path, size and mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def init_identity(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``init_from_sha256`` (the SHA-256 of the file ``init_from`` loads) when
    ``init_from`` is set, else ``cfg`` itself: the content of the starting weights becomes part
    of the run's identity (``results.config_hash``, ``resume=``). A copy: the caller's config
    is not changed."""
    value = init_value(cfg)
    if value is None:
        return cfg
    sha = file_sha256(init_file(value))
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.init_from_sha256 = sha
    return out


def read_state_dict(value: str, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` by name: a checkpoint's ``state_dict`` or the file's own map
    (weights_only=True; one-line ConfigError for a file that is not one)."""
    import torch

    try:
        ckpt = read_checkpoint(path)
    except RunError as exc:
        raise ConfigError(str(exc).replace(f"run={str(path)!r}", f"init_from={value!r}", 1)
                          .replace("prunelab checkpoint", "state_dict or checkpoint")) from None
    state = ckpt.get("state_dict", ckpt)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)} \
        if isinstance(state, dict) else {}
    if not tensors:
        raise ConfigError(f"init_from={value!r} holds no named tensors; allowed: {ALLOWED}")
    return tensors


def strip_prefix(state: dict[str, Any], names: set[str]) -> tuple[dict[str, Any], list[str]]:
    """(``state`` under the network's names, keys left out): as it is, or with the one leading
    component (``net.``, ``model.``, ...) under which the most keys are network names; keys
    without that prefix are returned as left out (unexpected)."""
    prefixes = [""] + sorted({k.split(".", 1)[0] + "." for k in state if "." in k})

    def hits(p: str) -> int:
        return sum(1 for k in state if k.startswith(p) and k[len(p):] in names)

    best = max(prefixes, key=hits)  # the first of equals: no prefix
    kept = {k[len(best):]: v for k, v in state.items() if k.startswith(best)}
    return kept, [k for k in state if not k.startswith(best)]


def _keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (", ..." if len(keys) > SHOWN else "")


def load_init(net: nn.Module, cfg: Any) -> list[str]:
    """Load ``init_from``'s weights into ``net`` (nothing when unset); the warnings (non-strict
    missing/unexpected keys). A bad file, shapes that do not fit, or (``init_strict=true``)
    missing or unexpected keys are a one-line ConfigError, and ``net`` is left as it was."""
    value = init_value(cfg)
    if value is None:
        return []
    strict = cfg.get("init_strict", True)
    if not isinstance(strict, bool):
        raise ConfigError(f"init_strict={strict!r}; allowed: true, false")
    path = init_file(value)
    expected = cfg.get("init_from_sha256")
    if expected is not None and file_sha256(path) != expected:
        raise ConfigError(f"init_from={value!r} changed while the run started (sha256 "
                          f"{file_sha256(path)[:12]} vs {str(expected)[:12]}); start it again")
    own = net.state_dict()
    state, outside = strip_prefix(read_state_dict(value, path), set(own))
    if not any(k in own for k in state):
        raise ConfigError(f"init_from={value!r}: none of its {len(state) + len(outside)} tensors "
                          f"names a parameter or buffer of this network (e.g. "
                          f"{_keys(sorted(state) or outside)} vs {_keys(list(own))}); "
                          f"allowed: weights of the same model")
    misfit = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if misfit:
        raise ConfigError(f"init_from={value}: shapes do not fit: {_keys(misfit)} (saved vs this "
                          f"network's); allowed: weights of the same model and data shape")
    missing = [k for k in own if k not in state]
    unexpected = outside + [k for k in state if k not in own]
    counts = ", ".join(f"{len(keys)} {what} key{'s' * (len(keys) != 1)} ({_keys(keys)})"
                       for what, keys in (("missing", missing), ("unexpected", unexpected))
                       if keys)
    if (missing or unexpected) and strict:
        raise ConfigError(f"init_from={value}: {counts}; init_strict=false loads the keys that "
                          f"fit and leaves the others as initialized")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return [f"init_from={value}: {counts}"] if missing or unexpected else []
