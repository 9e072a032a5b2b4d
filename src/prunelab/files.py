"""Writing files so that a reader never sees half of one: write a temporary file beside the
target, then rename it over (atomic on POSIX and Windows within one file system)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` then rename ``tmp`` to ``path``; the temporary file is removed if
    ``write`` fails. Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """JSON (indented, tensors as numbers or lists, paths as strings), written atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` written atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "numel") and hasattr(obj, "tolist"):  # a tensor, without importing torch
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return str(obj)
