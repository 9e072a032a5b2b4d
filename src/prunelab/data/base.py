"""The base of every data module: a whole data set held in memory as tensors.

One file per data set family beside this one (``mnist.py``: the IDX family, ``cifar.py``,
``synthetic.py``).

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

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor

from prunelab.data.loader import BatchGroups, TensorBatchLoader, grouped
from prunelab.errors import UserError
from prunelab.seeds import derive_seed

#: Default data directory of the downloadable data sets (relative to the launch directory).
DEFAULT_ROOT = "data"

# Salt that separates the split generator from the shuffling generators (both derive from `seed`).
_SPLIT_SALT = 0x5B117


class DataError(UserError, RuntimeError):
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
            batch of a group; 1: plain batches. Single-device training only. ``"auto"`` (the
            default) is 1 here; ``train`` and the lottery resolve it at assembly
            (:func:`prunelab.assemble.resolve_steps_per_batch`).
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
        steps_per_batch: int | str = "auto",
    ) -> None:
        super().__init__()
        if steps_per_batch == "auto":  # assembly resolves it (prunelab.assemble); alone: 1
            steps_per_batch = 1
        if (isinstance(steps_per_batch, bool) or not isinstance(steps_per_batch, int)
                or steps_per_batch < 1):
            raise ValueError(f"data.steps_per_batch={steps_per_batch!r} must be an integer >= 1 "
                             f"or auto")
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

    def preload(self) -> None:
        """Find (or download) the files and load the data now, before a trainer exists: a
        missing or bad file, or a ``val_size`` the set cannot give, is a one-line
        :class:`DataError` before anything is written (assembly calls this). Lightning's
        :meth:`setup` then reuses the loaded tensors."""
        self.prepare_files()
        self.setup()

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
        return grouped(self.train_batches(), self.steps_per_batch)

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
            raise DataError(
                f"data.val_size={self.val_size} leaves no training data: the {self.name} "
                f"training set has {n_train} samples; allowed: 0..{n_train - 1}"
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
        created = _missing_dirs(self._root_path() / getattr(self, "folder", ""))
        try:
            fetch()
        except Exception as exc:  # urllib / torchvision raise many kinds; all mean "no data"
            _remove_empty(created)  # a failed download leaves no empty data/ folders behind
            detail = _one_line(f"{type(exc).__name__}: {exc}")[:160]
            raise self._missing_error(
                wanted, f"the download failed (it needs internet access) [{detail}]") from exc
        finally:
            socket.setdefaulttimeout(previous)


def _missing_dirs(root: Path) -> list[Path]:
    """``root`` (the data set's folder) and its parents that do not exist yet, deepest first."""
    out, path = [], root.absolute()
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def _remove_empty(created: list[Path]) -> None:
    """Remove the outermost of ``created`` if a failed download left only empty directories
    in it (``data/FashionMNIST/raw``); a file in it keeps it all."""
    top = created[-1] if created else None
    if top is None or not top.is_dir():
        return
    inside = list(top.rglob("*"))
    if any(not p.is_dir() for p in inside):
        return
    for d in sorted(inside, key=lambda p: len(p.parts), reverse=True):
        d.rmdir()
    top.rmdir()
