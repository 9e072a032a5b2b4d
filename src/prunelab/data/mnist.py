"""The IDX family: MNIST (shipped in the package, checksum-verified) and Fashion-MNIST."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from prunelab.data.base import DataError, TensorDataModule
from prunelab.data.idx import bundled_dir, load_checksums, read_idx
from prunelab.data.loader import RandomCropFlip

#: Directory of the MNIST IDX files shipped inside the package (package data
#: ``prunelab/datasets/mnist``, found with importlib.resources).
BUNDLED_MNIST_DIR = bundled_dir("mnist")

#: Name of the checksum file (SHA-256 of the decompressed IDX files).
CHECKSUM_FILE = "SHA256SUMS.uncompressed"


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

    def __init__(self, download: bool = True, download_timeout: float = 20.0, shift: int = 0,
                 **common: Any) -> None:
        """``download``: fetch the files through torchvision when missing; ``shift``: random
        translation of the training images by up to this many pixels in each direction (0: none);
        ``common``: the arguments of :class:`TensorDataModule`."""
        super().__init__(**common)
        if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift <= 14:
            raise ValueError(f"data.shift={shift!r} must be an integer pixel count in 0..14")
        self.shift = shift
        self.input_shape = tuple(type(self).input_shape)
        self.num_classes = type(self).num_classes
        self.download = bool(download)
        self.download_timeout = float(download_timeout)

    def train_transform(self) -> Callable[[Tensor], Tensor] | None:
        """Random translation by up to ``shift`` pixels (a crop of the image padded with its
        black background; no flip: digits are not mirror-symmetric), if ``shift`` > 0."""
        if not self.shift:
            return None
        black = -self.mean[0] / self.std[0] if self.normalize and self.mean else 0.0
        return RandomCropFlip(padding=self.shift, flip_p=0.0, seed=self.seed, fill=black)

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

    def _missing_error(self, wanted: str, reason: str) -> DataError:
        """A directory holding some of the four files: name the missing ones and where."""
        for directory in self.candidate_dirs():
            have = [n for n in self.files
                    if (directory / n).is_file() or (directory / f"{n}.gz").is_file()]
            if have:
                missing = [f"{n}[.gz]" for n in self.files if n not in have]
                return DataError(f"{self.name}: {', '.join(missing)} missing from {directory} "
                                 f"(it has the other {len(have)} IDX files) and {reason}: put "
                                 f"{'it' if len(missing) == 1 else 'them'} there or set "
                                 f"data.root=<dir>")
        return super()._missing_error(wanted, reason)

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
                    "(reinstall prunelab: its wheel ships them) or set data.root=<dir>"
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
