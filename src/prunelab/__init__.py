"""prunelab: a Hydra + PyTorch Lightning research framework for neural-network pruning.

``prunelab.load_run(<run dir or .ckpt>)`` loads a finished run (trained network, masks, config,
data module; see :func:`prunelab.runs.load_run`). It is imported on first use, so that
``import prunelab`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["LoadedRun", "load_run", "__version__"]

if TYPE_CHECKING:
    from prunelab.runs import LoadedRun
    from prunelab.runs import load_run

# public name -> (module, attribute), imported on first access
_LAZY = {"load_run": ("prunelab.runs", "load_run"), "LoadedRun": ("prunelab.runs", "LoadedRun")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
