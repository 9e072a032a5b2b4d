"""Which parameters of a model are prunable: one function, used by every method and command."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from prunelab.errors import UserError

#: Layer types whose ``weight`` is prunable by default.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class PruningConfigError(UserError):
    """A pruning setting that cannot work for this run (one-line message)."""


def default_prunable(model: nn.Module) -> list[str]:
    """Names of the weights of Linear and Conv layers, in module order."""
    out = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, DEFAULT_PRUNABLE_TYPES) and getattr(mod, "weight", None) is not None:
            out.append(f"{mod_name}.weight" if mod_name else "weight")
    return out


def prunable_parameters(model: nn.Module, include: Sequence[str] | None = None,
                        exclude: Sequence[str] = (), *, option: str = "pruner"
                        ) -> dict[str, nn.Parameter]:
    """The prunable parameters of ``model`` by name, in registration order.

    Args:
        model: the network.
        include: glob patterns on parameter names (``fnmatch``, case-sensitive); ``None`` or empty
            = the weights of Linear and Conv layers.
        exclude: glob patterns removed from the included set.
        option: the config group the globs came from, named in error messages
            (``lottery`` for ``lottery.include``).

    Raises:
        PruningConfigError: ``include`` matches no parameter, or ``exclude`` leaves none.
    """
    named = dict(model.named_parameters())
    include = list(include) if include else None
    exclude = list(exclude) if exclude else []
    if include is None:
        names = default_prunable(model)
    else:
        names = [n for n in named if any(fnmatch.fnmatchcase(n, p) for p in include)]
        if not names:
            raise PruningConfigError(
                f"{option}.include={include} matches no parameter; parameter names look like: "
                f"{', '.join(list(named)[:6])}")
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not names:
        raise PruningConfigError(f"{option}.exclude={exclude} leaves no prunable parameter")
    return {n: named[n] for n in names}
