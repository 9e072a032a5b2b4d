"""CIFAR-10 and CIFAR-100 (the python pickle batches of the torchvision layout)."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from prunelab.data.base import DataError, TensorDataModule
from prunelab.data.loader import RandomCropFlip


class _CIFARDataModule(TensorDataModule):
    """Shared logic of CIFAR-10 / CIFAR-100 (python pickle batches)."""

    input_shape = (3, 32, 32)
    folder: ClassVar[str] = ""
    train_files: ClassVar[tuple[str, ...]] = ()
    test_files: ClassVar[tuple[str, ...]] = ()
    label_key: ClassVar[str] = "labels"
    torchvision_class: ClassVar[str] = ""

    def __init__(self, augment: bool = True, download: bool = True,
                 download_timeout: float = 60.0, **common: Any) -> None:
        """``augment``: random crop and flip of the training images; ``download``: fetch the
        files through torchvision when missing; ``common``: the arguments of
        :class:`TensorDataModule`."""
        super().__init__(**common)
        self.input_shape = tuple(type(self).input_shape)
        self.num_classes = type(self).num_classes
        self.augment = bool(augment)
        self.download = bool(download)
        self.download_timeout = float(download_timeout)

    @property
    def directory(self) -> Path:
        """``<root>/<folder>``, where the pickle batches live."""
        return self._root_path() / self.folder

    def _files_present(self) -> bool:
        return all((self.directory / f).is_file() for f in self.train_files + self.test_files)

    def prepare_files(self) -> None:
        if not self._files_present():
            import torchvision.datasets

            cls = getattr(torchvision.datasets, self.torchvision_class)
            self._download(
                lambda: cls(str(self._root_path()), train=True, download=True),
                self.folder,
                self.download,
                self.download_timeout,
            )

    def _read_batches(self, names: Sequence[str]) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for name in names:
            path = self.directory / name
            # The CIFAR files are python pickles (trusted input, as with torchvision).
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="bytes")
            entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
            if "data" not in entry or self.label_key not in entry:
                raise DataError(
                    f"{self.name}: {path} lacks the 'data' / '{self.label_key}' entries "
                    f"(has {sorted(entry)})"
                )
            data = np.asarray(entry["data"], dtype=np.uint8)
            labels = np.asarray(entry[self.label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
                raise DataError(
                    f"{self.name}: {path} has data of shape {data.shape} and {len(labels)} labels, "
                    "expected (N, 3072) and N"
                )
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    def load_raw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.prepare_files()
        if not self._files_present():
            raise self._missing_error(self.folder, "download did not create them")
        x_train, y_train = self._read_batches(self.train_files)
        x_test, y_test = self._read_batches(self.test_files)
        return x_train, y_train, x_test, y_test

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        """Random 32x32 crop of the zero-padded (4 px) image and horizontal flip, if ``augment``."""
        return RandomCropFlip(padding=4, flip_p=0.5, seed=self.seed) if self.augment else None


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10, 3x32x32, 10 classes, 50k train (minus ``val_size``) / 10k test.

    Reads ``<root>/cifar-10-batches-py/`` (``root=None`` means ``data``); downloads with
    torchvision when missing. ``augment`` enables :class:`RandomCropFlip` on training batches.

    Normalization: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616), the per-channel
    statistics of the training images (the often quoted std (0.2023, 0.1994, 0.2010) is the
    mean of per-image stds, not the data set std).
    """

    name = "cifar10"
    num_classes = 10
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    torchvision_class = "CIFAR10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (fine labels), 3x32x32, 100 classes, 50k train (minus ``val_size``) / 10k test.

    Reads ``<root>/cifar-100-python/{train,test}`` (``root=None`` means ``data``); downloads with
    torchvision when missing. ``augment`` enables :class:`RandomCropFlip` on training batches.

    Normalization: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762), the per-channel
    statistics of the training images.
    """

    name = "cifar100"
    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    torchvision_class = "CIFAR100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
