"""Writers of small data set fixtures in the real on-disk formats (used by tests/unit/test_data.py and the conftest fixtures).

* IDX (MNIST / Fashion-MNIST), optionally gzip-compressed, in torchvision's ``<root>/<Name>/raw``.
* CIFAR-10 / CIFAR-100 python pickle batches in ``cifar-10-batches-py`` / ``cifar-100-python``.

Pixel values are deterministic functions of the sample index so tests can check that every image
lands intact and in the right (N, C, H, W) layout.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0000 08 ndim, big-endian dims, payload)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` as an IDX file at ``path`` (``.gz`` appended when compressing)."""
    data = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def fake_images(n: int, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """uint8 images whose pixels depend on the sample index, channel and position."""
    idx = np.arange(offset, offset + n).reshape(n, *([1] * len(shape)))
    grid = np.indices(shape).sum(axis=0)  # c + h + w
    return ((idx * 7 + grid * 3) % 256).astype(np.uint8)


def fake_labels(n: int, num_classes: int, offset: int = 0) -> np.ndarray:
    """Labels cycling through all classes."""
    return ((np.arange(offset, offset + n) * 3) % num_classes).astype(np.uint8)


def write_fashion_mnist(root: Path, n_train: int = 120, n_test: int = 40, compress: bool = True):
    """Write a small Fashion-MNIST in ``<root>/FashionMNIST/raw``; returns the arrays written."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = (
        fake_images(n_train, (28, 28)),
        fake_labels(n_train, 10),
        fake_images(n_test, (28, 28), offset=n_train),
        fake_labels(n_test, 10, offset=n_train),
    )
    for name, array in zip(IDX_NAMES, arrays):
        write_idx(raw / name, array, compress=compress)
    return arrays


def _write_pickle(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def write_cifar10(root: Path, per_batch: int = 24, n_test: int = 40):
    """Write a small CIFAR-10 in ``<root>/cifar-10-batches-py`` (5 train batches + test batch).

    Keys are bytes (b"data", b"labels"), as in the original python-2 pickles; ``data`` is
    ``uint8 (N, 3072)``, channel-major (1024 red, 1024 green, 1024 blue values per row).
    Returns ``(x_train, y_train, x_test, y_test)`` with images as ``(N, 3, 32, 32)``.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for b in range(5):
        x = fake_images(per_batch, (3, 32, 32), offset=b * per_batch)
        y = fake_labels(per_batch, 10, offset=b * per_batch).astype(int).tolist()
        _write_pickle(
            folder / f"data_batch_{b + 1}",
            {b"batch_label": b"fixture", b"data": x.reshape(per_batch, -1), b"labels": y},
        )
        xs.append(x)
        ys.append(y)
    x_test = fake_images(n_test, (3, 32, 32), offset=10_000)
    y_test = fake_labels(n_test, 10, offset=1).astype(int).tolist()
    _write_pickle(folder / "test_batch", {b"data": x_test.reshape(n_test, -1), b"labels": y_test})
    return np.concatenate(xs), np.concatenate(ys), x_test, np.asarray(y_test)


def write_cifar100(root: Path, n_train: int = 150, n_test: int = 50):
    """Write a small CIFAR-100 in ``<root>/cifar-100-python`` (``train`` and ``test`` files with
    ``fine_labels`` and ``coarse_labels``). Returns ``(x_train, y_train, x_test, y_test)``."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n, offset in (("train", n_train, 0), ("test", n_test, 5_000)):
        x = fake_images(n, (3, 32, 32), offset=offset)
        fine = fake_labels(n, 100, offset=offset).astype(int).tolist()
        coarse = [f // 5 for f in fine]
        _write_pickle(
            folder / name,
            {b"data": x.reshape(n, -1), b"fine_labels": fine, b"coarse_labels": coarse},
        )
        out += [x, np.asarray(fine)]
    return tuple(out)
