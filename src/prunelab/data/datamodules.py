"""Lightning data modules holding whole data sets as tensors.

Every data module here

* knows ``input_shape`` ``(C, H, W)`` and ``num_classes`` right after ``__init__`` (models are
  built from them before any data is read),
* loads the data once in :meth:`TensorDataModule.setup` (later calls reuse the cached tensors),
  converts images to ``float32`` in ``[0, 1]``, optionally normalizes them per channel, and moves
  them to the trainer's device when a trainer is attached,
* splits a seeded validation set of ``val_size`` samples off the training set (disjoint from
  the training part; the official test set stays untouched),
* serves :class:`~prunelab.data.loader.TensorBatchLoader` s: a shuffled, possibly augmented and
  rank-sharded training loader and unshuffled validation / test loaders.

``subset=N`` (quick runs): the training part is cut to N samples of a seeded permutation of
it, and validation and test are capped at N samples as well (the first N of the seeded
validation split, the first N test samples in file order), so a run with ``subset=N`` touches
at most ``3 N`` samples.

File layouts (the torchvision layouts, read directly rather than through torchvision's data set
classes, whose MD5 checks reject re-compressed or small fixture files):

* MNIST: the IDX files shipped in the package (``root=None``), or under ``<root>/`` or
  ``<root>/MNIST/raw/``; SHA-256 of the decompressed files verified against
  ``SHA256SUMS.uncompressed``.
* Fashion-MNIST: ``<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
* CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}``.
* CIFAR-100: ``<root>/cifar-100-python/{train,test}`` (``fine_labels``).

When files are missing, the torchvision data sets are downloaded with torchvision
(``download=True``, with a socket timeout so that an offline machine fails fast); if that is
disabled or fails, a one-line :class:`DataError` names ``data.root`` and the path searched.
"""

from __future__ import annotations

import math
import os
import pickle
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from prunelab.data.idx import load_checksums, read_idx
from prunelab.data.loader import BatchGroups, RandomCropFlip, TensorBatchLoader, derive_seed

__all__ = [
    "DataError",
    "TensorDataModule",
    "MNISTDataModule",
    "FashionMNISTDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "SyntheticDataModule",
    "BUNDLED_MNIST_DIR",
]

#: Directory of the MNIST IDX files shipped with the package.
#: ``data/mnist`` at the top of the repository (src/prunelab/data -> repository root); the files
#: stay out of the package so that the source tree keeps large data under ``data/``.
BUNDLED_MNIST_DIR = Path(__file__).resolve().parents[3] / "data" / "mnist"

#: Name of the checksum file (SHA-256 of the decompressed IDX files).
CHECKSUM_FILE = "SHA256SUMS.uncompressed"

#: Default data directory of the downloadable data sets (relative to the launch directory).
DEFAULT_ROOT = "data"

# Salt that separates the split generator from the shuffling generators (both derive from `seed`).
_SPLIT_SALT = 0x5B117
_SYNTHETIC_SALT = 0x5E7


class DataError(RuntimeError):
    """Data files are missing or unusable; the message is one line and says how to fix it."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class TensorDataModule(pl.LightningDataModule, ABC):
    """Base class: a classification data set held in memory as tensors.

    Subclasses set ``name``, ``input_shape``, ``num_classes`` (and ``mean`` / ``std`` for
    normalization) and implement :meth:`load_raw`; they may override :meth:`prepare_files`
    (download), :meth:`preprocess` and :meth:`train_transform`.

    Args:
        root: data directory (meaning depends on the data set; ``None`` = its default).
        batch_size: training batch size (per process).
        eval_batch_size: validation / test batch size.
        val_size: number of training samples held out (seeded) as the validation split; 0
            gives an empty validation loader.
        subset: if set, use only ``subset`` training samples (a seeded random selection) and
            cap validation and test at ``subset`` samples; for quick runs.
        seed: seed of the validation split, the subset selection, the training shuffle
            (epoch ``e`` uses ``seed + e``) and the augmentation.
        normalize: standardize each channel with the data set's mean / std.
        drop_last: drop the last incomplete training batch of every epoch.
        steps_per_batch: hand Lightning groups of this many training batches
            (:class:`~prunelab.data.loader.BatchGroups`); the module takes one optimizer step per
            batch of a group. 1 (default): plain batches. Single-device training only.
    """

    #: short data set name used in messages.
    name: ClassVar[str] = "tensor"
    #: per-channel mean / std of the training images in [0, 1] (used when ``normalize``).
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()

    input_shape: tuple[int, ...]
    num_classes: int

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        subset: int | None = None,
        seed: int = 0,
        normalize: bool = True,
        drop_last: bool = False,
        steps_per_batch: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(steps_per_batch, bool) or not isinstance(steps_per_batch, int) \
                or steps_per_batch < 1:
            raise ValueError(f"data.steps_per_batch={steps_per_batch!r} must be an integer >= 1")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if subset is not None and subset < 1:
            raise ValueError(f"subset must be None or >= 1, got {subset}")
        self.root = None if root is None else str(root)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.val_size = int(val_size)
        self.subset = None if subset is None else int(subset)
        self.seed = int(seed)
        self.normalize = bool(normalize)
        self.drop_last = bool(drop_last)
        self.steps_per_batch = steps_per_batch
        self.data_train: tuple[Tensor, Tensor] | None = None
        self.data_val: tuple[Tensor, Tensor] | None = None
        self.data_test: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def load_raw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return ``(x_train, y_train, x_test, y_test)``; images ``(N, C, H, W)``, ``uint8``
        (converted by :meth:`preprocess`) or already float, labels integer ``(N,)``."""

    def prepare_files(self) -> None:
        """Make sure the files are on disk (download if needed); does not load them."""

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        """Batch transform applied to training batches (augmentation); ``None`` by default."""
        return None

    def preprocess(self, x: Tensor) -> Tensor:
        """Convert an image tensor to ``float32``: ``uint8`` is scaled to ``[0, 1]``; then, if
        ``normalize``, each channel is standardized with ``mean`` / ``std``."""
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        else:
            x = x.to(torch.float32)
        if self.normalize and self.mean:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean = torch.tensor(self.mean, dtype=x.dtype).view(shape)
            std = torch.tensor(self.std, dtype=x.dtype).view(shape)
            x = x.sub_(mean).div_(std)
        return x

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Called by Lightning on one process per node: downloads missing files."""
        self.prepare_files()

    def setup(self, stage: str | None = None) -> None:
        """Load, split and preprocess the data once; move it to the trainer's device."""
        if self.data_train is None:
            self._load_and_split()
        device = self._trainer_device()
        if device is not None:
            self._move_to(device)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> TensorBatchLoader | BatchGroups:
        """Lightning's training loader: :meth:`train_batches`, in groups of
        ``steps_per_batch`` when that is above 1."""
        loader = self.train_batches()
        if self.steps_per_batch == 1:
            return loader
        if loader.world_size > 1:
            raise ValueError(f"data.steps_per_batch={self.steps_per_batch} needs single-device "
                             f"training (this run has {loader.world_size} processes); allowed "
                             f"with several devices: 1")
        return BatchGroups(loader, self.steps_per_batch)

    def train_batches(self) -> TensorBatchLoader:
        """Shuffled (and augmented, where applicable) training batches, sharded over ranks."""
        x, y = self._split("train")
        trainer = self._trainer()
        rank, world_size, epoch = 0, 1, 0
        if trainer is not None:
            rank, world_size, epoch = trainer.global_rank, trainer.world_size, trainer.current_epoch
        return TensorBatchLoader(
            x,
            y,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            drop_last=self.drop_last,
            transform=self.train_transform(),
            rank=rank,
            world_size=world_size,
            epoch=epoch,
        )

    def val_dataloader(self) -> TensorBatchLoader:
        """Unshuffled validation batches (every rank sees the whole split)."""
        x, y = self._split("val")
        return TensorBatchLoader(x, y, batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatchLoader:
        """Unshuffled test batches (every rank sees the whole split)."""
        x, y = self._split("test")
        return TensorBatchLoader(x, y, batch_size=self.eval_batch_size, shuffle=False)

    # ------------------------------------------------------------------ internals
    def _trainer(self) -> pl.Trainer | None:
        return getattr(self, "trainer", None)

    def _trainer_device(self) -> torch.device | None:
        trainer = self._trainer()
        if trainer is None:
            return None
        return trainer.strategy.root_device

    def _move_to(self, device: torch.device) -> None:
        for attr in ("data_train", "data_val", "data_test"):
            x, y = getattr(self, attr)
            if x.device != device:
                setattr(self, attr, (x.to(device), y.to(device)))

    def _split(self, which: str) -> tuple[Tensor, Tensor]:
        if self.data_train is None:
            self.setup()
        return getattr(self, f"data_{which}")

    def split_indices(self, n_train: int) -> tuple[Tensor, Tensor]:
        """Indices ``(train, val)`` into the original training set (sorted, disjoint).

        The validation split is the first ``val_size`` entries of a permutation drawn from a
        generator seeded with ``seed``; with ``subset`` the training part is the first ``subset``
        entries of the rest and validation is capped at ``subset``.
        """
        if self.val_size >= n_train:
            raise ValueError(
                f"{self.name}: val_size={self.val_size} leaves no training data "
                f"(the training set has {n_train} samples)"
            )
        gen = torch.Generator().manual_seed(derive_seed(self.seed, _SPLIT_SALT))
        perm = torch.randperm(n_train, generator=gen)
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.subset is not None:
            train_idx, val_idx = train_idx[: self.subset], val_idx[: self.subset]
        return train_idx.sort().values, val_idx.sort().values

    def _load_and_split(self) -> None:
        x_train, y_train, x_test, y_test = self.load_raw()
        train_idx, val_idx = self.split_indices(len(x_train))
        if self.subset is not None:
            x_test, y_test = x_test[: self.subset], y_test[: self.subset]
        self.data_train = (self.preprocess(x_train[train_idx]), y_train[train_idx].long())
        self.data_val = (self.preprocess(x_train[val_idx]), y_train[val_idx].long())
        self.data_test = (self.preprocess(x_test), y_test.long())

    def _root_path(self) -> Path:
        return Path(self.root if self.root is not None else DEFAULT_ROOT).expanduser()

    def _missing_error(self, wanted: str, reason: str) -> DataError:
        root = self._root_path().absolute()
        return DataError(
            f"{self.name} files not found under data.root='{root}' and {reason}: "
            f"put {wanted} there or set data.root=<dir>"
        )

    def _download(
        self, fetch: Callable[[], object], wanted: str, enabled: bool, timeout: float
    ) -> None:
        """Run ``fetch`` (a torchvision download) with a socket timeout of ``timeout`` seconds;
        turn a failure, or ``enabled=False``, into a one-line :class:`DataError`."""
        if not enabled:
            raise self._missing_error(wanted, "download is disabled (data.download=false)")
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            fetch()
        except Exception as exc:  # urllib / torchvision raise many kinds; all mean "no data"
            detail = _one_line(f"{type(exc).__name__}: {exc}")[:200]
            raise self._missing_error(wanted, f"download failed (no network?) [{detail}]") from exc
        finally:
            socket.setdefaulttimeout(previous)


class _IDXDataModule(TensorDataModule):
    """Shared logic of the IDX data sets (MNIST, Fashion-MNIST)."""

    input_shape = (1, 28, 28)
    num_classes = 10
    #: torchvision's sub-directory, ``<root>/<folder>/raw``.
    folder: ClassVar[str] = ""
    #: torchvision data set class name used for downloading.
    torchvision_class: ClassVar[str] = ""
    files: ClassVar[tuple[str, str, str, str]] = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    def __init__(self, download: bool = True, download_timeout: float = 20.0,
                 **common: Any) -> None:
        """``download``: fetch the files through torchvision when missing; ``common``: the
        arguments of :class:`TensorDataModule`."""
        super().__init__(**common)
        self.input_shape = tuple(type(self).input_shape)
        self.num_classes = type(self).num_classes
        self.download = bool(download)
        self.download_timeout = float(download_timeout)

    def candidate_dirs(self) -> list[Path]:
        """Directories searched for the four IDX files, in order."""
        root = self._root_path()
        return [root / self.folder / "raw", root]

    def find_files(self) -> list[Path] | None:
        """Paths of the four IDX files (raw or ``.gz``) in the first directory holding all."""
        for directory in self.candidate_dirs():
            found = []
            for name in self.files:
                path = next(
                    (p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None
                )
                if path is None:
                    break
                found.append(path)
            else:
                return found
        return None

    def checksums(self, directory: Path) -> dict[str, str] | None:
        """SHA-256 sums to verify against: ``SHA256SUMS.uncompressed`` next to the files, if any."""
        path = directory / CHECKSUM_FILE
        return load_checksums(path) if path.is_file() else None

    def prepare_files(self) -> None:
        if self.find_files() is None:
            import torchvision.datasets

            cls = getattr(torchvision.datasets, self.torchvision_class)
            wanted = f"{self.folder}/raw/{{{','.join(self.files)}}}[.gz]"
            self._download(
                lambda: cls(str(self._root_path()), train=True, download=True),
                wanted,
                self.download,
                self.download_timeout,
            )

    def load_raw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.prepare_files()
        paths = self.find_files()
        if paths is None:  # download "succeeded" but left no files where we look
            raise self._missing_error(f"{self.folder}/raw/<IDX files>", "download did not create them")
        sums = self.checksums(paths[0].parent)
        arrays = [read_idx(p, sums) for p in paths]
        x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in arrays)
        for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
            if x.dim() != 3 or len(x) != len(y):
                raise DataError(
                    f"{self.name}: malformed {split} IDX files in {paths[0].parent}: "
                    f"images {tuple(x.shape)}, labels {tuple(y.shape)}"
                )
        return x_train.unsqueeze(1), y_train, x_test.unsqueeze(1), y_test


class MNISTDataModule(_IDXDataModule):
    """MNIST digits, 1x28x28, 10 classes, 60k train (minus ``val_size``) / 10k test.

    ``root=None`` reads the copy shipped inside the package (no download, checksums always
    verified). With a ``root``, the IDX files are read from ``<root>/MNIST/raw/`` (torchvision's
    layout) or ``<root>/`` and verified against a ``SHA256SUMS.uncompressed`` next to them or,
    failing that, against the bundled sums (it is the same data); missing files are downloaded
    with torchvision when ``download``.

    Normalization: mean 0.1307, std 0.3081 (training set statistics, as in the PyTorch MNIST
    example).
    """

    name = "mnist"
    folder = "MNIST"
    torchvision_class = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)

    def candidate_dirs(self) -> list[Path]:
        if self.root is None:
            return [BUNDLED_MNIST_DIR]
        return super().candidate_dirs()

    def checksums(self, directory: Path) -> dict[str, str] | None:
        own = super().checksums(directory)
        return own if own is not None else load_checksums(BUNDLED_MNIST_DIR / CHECKSUM_FILE)

    def _missing_error(self, wanted: str, reason: str) -> DataError:
        error = super()._missing_error(wanted, reason)
        return DataError(f"{error} (data.root=null uses the copy bundled with prunelab)")

    def prepare_files(self) -> None:
        if self.root is None:
            if self.find_files() is None:
                raise DataError(
                    f"mnist files missing from the bundled directory {BUNDLED_MNIST_DIR} "
                    "(install prunelab from its repository with pip install -e .) or set "
                    "data.root=<dir>"
                )
            return
        super().prepare_files()


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST (Zalando), 1x28x28, 10 classes, 60k train (minus ``val_size``) / 10k test.

    Reads ``<root>/FashionMNIST/raw/`` (torchvision's layout; ``<root>/`` itself is searched
    too); ``root=None`` means ``data``. Missing files are downloaded with torchvision.

    Normalization: mean 0.2860, std 0.3530 (training set statistics).
    """

    name = "fashion_mnist"
    folder = "FashionMNIST"
    torchvision_class = "FashionMNIST"
    mean = (0.2860,)
    std = (0.3530,)


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


class SyntheticDataModule(TensorDataModule):
    """Random, seeded, learnable classification data of any input shape and class count.

    Meant for speed tests and smoke tests without files. Each class ``k`` has a fixed random
    prototype ``p_k`` (for image shapes ``(C, H, W)`` a smooth pattern: Gaussian noise at
    resolution at most 4x4, bilinearly upsampled, scaled to unit variance, so that
    convolutional networks with pooling can pick it up too). A sample of class ``y`` (uniformly
    drawn) is ``p_y + noise_std * eps`` with standard Gaussian ``eps``. Classes are therefore
    well separated: a model that learns reaches high accuracy (the Bayes error is near zero at
    the default ``noise_std=1``; raise ``noise_std`` to make the task harder), while chance level
    is ``1 / num_classes``, so accuracy is a meaningful signal. With ``normalize`` the inputs are
    divided by their standard deviation ``sqrt(1 + noise_std**2)``.

    Args:
        input_shape: shape of one sample, e.g. ``(3, 32, 32)``.
        num_classes: number of classes.
        num_samples: size of the training set (before the validation split).
        num_test_samples: size of the test set.
        noise_std: standard deviation of the per-pixel noise (difficulty).
        root: ignored (accepted so that all data configs share the same keys).
        batch_size, eval_batch_size, val_size, subset, seed, normalize, drop_last: as in
            :class:`TensorDataModule`.
    """

    name = "synthetic"

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        num_samples: int = 10000,
        num_test_samples: int = 2000,
        noise_std: float = 1.0,
        val_size: int = 1000,
        **common: Any,
    ) -> None:
        super().__init__(val_size=val_size, **common)
        shape = tuple(int(d) for d in input_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"input_shape must be non-empty and positive, got {shape}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if num_samples < 1 or num_test_samples < 1:
            raise ValueError("num_samples and num_test_samples must be >= 1")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.input_shape = shape
        self.num_classes = int(num_classes)
        self.num_samples = int(num_samples)
        self.num_test_samples = int(num_test_samples)
        self.noise_std = float(noise_std)

    def prototypes(self, generator: torch.Generator) -> Tensor:
        """Class prototypes ``(num_classes, *input_shape)``, unit variance each."""
        k, shape = self.num_classes, self.input_shape
        if len(shape) == 3 and shape[1] > 1 and shape[2] > 1:
            c, h, w = shape
            low = torch.randn((k, c, min(h, 4), min(w, 4)), generator=generator)
            protos = torch.nn.functional.interpolate(
                low, size=(h, w), mode="bilinear", align_corners=False
            )
        else:
            protos = torch.randn((k, *shape), generator=generator)
        flat = protos.reshape(k, -1)
        flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)
        return flat.reshape(k, *shape)

    def load_raw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, _SYNTHETIC_SALT))
        protos = self.prototypes(gen)

        def draw(n: int) -> tuple[Tensor, Tensor]:
            y = torch.randint(self.num_classes, (n,), generator=gen)
            x = protos[y] + self.noise_std * torch.randn((n, *self.input_shape), generator=gen)
            return x, y

        x_train, y_train = draw(self.num_samples)
        x_test, y_test = draw(self.num_test_samples)
        return x_train, y_train, x_test, y_test

    def preprocess(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32)
        if self.normalize:
            x = x / math.sqrt(1.0 + self.noise_std**2)
        return x
