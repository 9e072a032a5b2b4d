"""Data sets served by Lightning data modules: in-memory tensors, image folders, your own.

* :class:`TensorBatchLoader`: iterable of ``(x[idx], y[idx])`` batches over tensors in memory,
  accepted by Lightning as a dataloader (shuffling, sharding over ranks, exact resume).
* :class:`RandomCropFlip`: vectorized CIFAR augmentation on whole batches.
* Data modules: :class:`MNISTDataModule`, :class:`FashionMNISTDataModule`,
  :class:`CIFAR10DataModule`, :class:`CIFAR100DataModule`, :class:`SyntheticDataModule`, all
  derived from :class:`TensorDataModule`, one file per family
  (``base.py``, ``mnist.py``, ``cifar.py``, ``synthetic.py``); ``conf/data/<name>.yaml`` names
  each by its ``_target_``.
* :class:`ImageFolderDataModule` (``imagefolder.py``): image folders of any size, streamed by
  DataLoader workers (:class:`StreamingBatchLoader`, ``streaming.py``) or decoded into memory
  when they fit (``data.in_memory``).
* :func:`build_datamodule` (``custom.py``): the one constructor of every data config; any user
  LightningDataModule by ``_target_``, its ``input_shape`` / ``num_classes`` found or inferred.
* :class:`DataError`: one-line error for missing or unusable data files.
* :func:`read_idx`: reader of the IDX format with optional SHA-256 verification.
"""

from prunelab.data.base import DataError, TensorDataModule
from prunelab.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from prunelab.data.custom import build_datamodule
from prunelab.data.idx import load_checksums, read_idx
from prunelab.data.imagefolder import ImageFolderDataModule
from prunelab.data.loader import (
    BatchGroup,
    BatchGroups,
    RandomCropFlip,
    TensorBatchLoader,
    is_batch_group,
    iter_batches,
)
from prunelab.data.mnist import (
    BUNDLED_MNIST_DIR,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from prunelab.data.streaming import StreamingBatchLoader
from prunelab.data.synthetic import SyntheticDataModule
from prunelab.seeds import derive_seed

__all__ = [
    "BUNDLED_MNIST_DIR",
    "BatchGroup",
    "BatchGroups",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataError",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "RandomCropFlip",
    "StreamingBatchLoader",
    "SyntheticDataModule",
    "TensorBatchLoader",
    "TensorDataModule",
    "build_datamodule",
    "derive_seed",
    "is_batch_group",
    "iter_batches",
    "load_checksums",
    "read_idx",
]
