"""Writing files so that a reader never sees half of one: write a temporary file beside the
target, then rename it over (atomic on POSIX and Windows within one file system); and one writer
per run directory (:func:`directory_lock`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file (a full disk): name the target
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
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


#: The lock file a writer holds in a run, sweep or lottery directory (gone after a clean exit).
LOCK_NAME = ".prunelab.lock"


class DirectoryBusy(OSError):
    """Another live process holds the directory's lock (``holder``: its PID as it wrote it)."""

    def __init__(self, directory: Path, holder: str):
        super().__init__(f"{directory} is in use by process {holder} (another prunelab command "
                         f"writing there); wait for it to finish or use another directory")
        self.directory, self.holder = directory, holder


@contextmanager
def directory_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold ``<directory>/.prunelab.lock`` (``fcntl.flock``) while the block runs: a second
    writer gets :class:`DirectoryBusy` naming the holder's PID. The kernel releases the lock when
    the holder dies (also by SIGKILL); a clean exit removes the file. No-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path = Path(directory) / LOCK_NAME  # the directory exists: the lock never creates it
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryBusy(Path(directory), holder) from None
        try:  # the holder before us may have removed the file after we opened it: retry
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)
