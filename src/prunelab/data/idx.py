"""Reading IDX files (the MNIST / Fashion-MNIST on-disk format) and verifying their checksums.

The IDX format is a tiny binary container:

* a 4-byte magic number: two zero bytes, one byte giving the element type
  (``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32,
  ``0x0E`` float64) and one byte giving the number of dimensions ``ndim``;
* ``ndim`` big-endian unsigned 32-bit integers, the size of each dimension;
* the payload, C order, big-endian elements.

Files may be stored gzip-compressed (``*.gz``); :func:`read_idx` decompresses them
transparently (it detects gzip by its magic bytes, not by the file name).

Checksums are SHA-256 digests of the *decompressed* bytes, listed in a ``sha256sum``-style
file (``<hex digest>  <file name>`` per line, file names without ``.gz``), such as the
``SHA256SUMS.uncompressed`` file shipped next to the bundled MNIST files. Verifying the
decompressed content rather than the ``.gz`` file makes the check independent of how the
files were compressed.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import os
from collections.abc import Mapping
from contextlib import ExitStack
from importlib.resources import as_file, files
from pathlib import Path
from typing import Union

import numpy as np

__all__ = [
    "bundled_dir",
    "read_idx",
    "parse_idx",
    "read_idx_bytes",
    "load_checksums",
    "verify_sha256",
]

PathLike = Union[str, os.PathLike]

_GZIP_MAGIC = b"\x1f\x8b"

# Temporary copies of package data taken out of a zipped install (kept until exit).
_EXTRACTED = ExitStack()
atexit.register(_EXTRACTED.close)

#: IDX element type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx_bytes(path: PathLike) -> bytes:
    """Return the decompressed content of an IDX file (gzip-compressed or raw)."""
    raw = Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        return gzip.decompress(raw)
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse decompressed IDX bytes into a numpy array of native byte order.

    Args:
        data: the whole decompressed file content.
        name: used in error messages only.

    Raises:
        ValueError: if the header is malformed or the payload size does not match the header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: not an IDX file (bad magic number {data[:4].hex()!r})")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX element type 0x{type_code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        raise ValueError(
            f"{name}: IDX payload has {actual} bytes but header {shape} of {dtype} needs {expected}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order and writable (np.frombuffer over bytes is read-only).
    return array.astype(dtype.newbyteorder("="), copy=True)


def load_checksums(path: PathLike) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into ``{file name: lowercase hex digest}``.

    Lines are ``<digest> <name>`` or ``<digest> *<name>`` (binary mode marker); blank lines and
    ``#`` comments are ignored.
    """
    sums: dict[str, str] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: malformed checksum line {line!r}")
        digest, name = parts
        sums[name.strip().lstrip("*")] = digest.lower()
    return sums


def verify_sha256(data: bytes, expected: str, name: str) -> None:
    """Raise a one-line ``ValueError`` if ``sha256(data)`` differs from ``expected``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise ValueError(
            f"checksum mismatch for {name}: expected sha256 {expected.lower()}, got {actual}"
        )


def _uncompressed_name(path: Path) -> str:
    return path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name


def read_idx(
    path: PathLike, checksums: PathLike | Mapping[str, str] | None = None
) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array.

    Args:
        path: the ``.gz`` or raw IDX file.
        checksums: optional SHA-256 sums of the decompressed files, either a path to a
            ``sha256sum``-style file or an already parsed ``{name: digest}`` mapping. The entry
            is looked up by the file name without ``.gz``. When given, the decompressed bytes
            are verified before parsing.

    Returns:
        The array, e.g. ``uint8`` of shape ``(N, 28, 28)`` for MNIST images or ``(N,)`` for labels.

    Raises:
        ValueError: on a checksum mismatch (one line naming the file, the expected and the actual
            digest), when the file has no entry in ``checksums``, or on a malformed file.
    """
    path = Path(path)
    data = read_idx_bytes(path)
    if checksums is not None:
        sums = checksums if isinstance(checksums, Mapping) else load_checksums(checksums)
        key = _uncompressed_name(path)
        if key not in sums:
            raise ValueError(f"no sha256 checksum listed for {key} (reading {path})")
        verify_sha256(data, sums[key], str(path))
    return parse_idx(data, name=str(path))


def bundled_dir(name: str) -> Path:
    """Directory of a data set shipped inside the package: ``prunelab/datasets/<name>``.

    Located with :mod:`importlib.resources`, so it is the same directory in a source checkout,
    an editable install and an installed wheel. From a zipped install (Python >= 3.12) the
    directory is extracted once to a temporary directory that lives until the process exits.
    """
    resource = files("prunelab") / "datasets" / name
    if isinstance(resource, Path):
        return resource
    return Path(_EXTRACTED.enter_context(as_file(resource)))
