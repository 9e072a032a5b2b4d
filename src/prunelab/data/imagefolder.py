"""Image folders (torchvision's ``ImageFolder`` layout): data sets of any size, streamed from
disk by :class:`~torch.utils.data.DataLoader` workers, or decoded once into memory when small.

Layouts under ``data.root`` (a class is a sub-folder, classes sorted by name, hidden folders
skipped; files with torchvision's image extensions):

* ``train/<class>/*`` and ``val/<class>/*``, optionally ``test/<class>/*``; without ``test/``
  the validation folder is the test set too. The folders must name the same classes.
* ``<class>/*`` directly: one folder, split by ``seed`` into validation (``val_size``) and test
  (``test_size``) parts, each a fraction (< 1) or a count; ``test_size=0``: test = validation.

Transforms, with S = ``image_size`` and B = round(S / ``crop_fraction``): evaluation resizes the
shorter side to B and takes the centre S x S (``center_crop=false``: resized to B x B, aspect
not kept); training (``train_crop``) takes ``random_resized`` (RandomResizedCrop(S,
``crop_scale``)), ``random`` (the evaluation resize, then a random S x S crop) or ``none`` (the
evaluation transform), then a horizontal flip (``hflip``); then ``normalize`` (``mean``/``std``).

Order and resume: the training order of epoch ``e`` is :class:`TensorBatchLoader`'s (the
permutation of ``seed + e``, rank ``r`` of ``w`` taking every ``w``-th index: DistributedSampler
semantics), streamed or in memory alike; a streamed image's augmentation is drawn from a
generator seeded by ``(seed, epoch, index)`` in the worker that reads it (the number of workers
does not matter; :mod:`prunelab.data.streaming`). The loaders are not DataLoaders, so
Lightning neither replaces their sampler nor shards them again; it calls ``sampler.set_epoch``,
and saves and restores their position (``state_dict``), so a resumed run sees the batches of an
uninterrupted one.

``in_memory``: ``auto`` decodes the images (uint8, resized: B x B for training, S x S for
evaluation) into tensors when they take at most ``memory_fraction`` of the available RAM, else
streams; ``true`` / ``false`` force it. In memory, the training crops are cut from the B x B
images on whole batches (:class:`~prunelab.data.streaming.BatchCrops`) instead of from the
files, so the two paths train on slightly different views: set ``in_memory`` explicitly to
compare runs made on machines with different RAM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor
from torch.utils.data import DataLoader

from prunelab.data.base import DataError
from prunelab.data.loader import BatchGroups, TensorBatchLoader, grouped
from prunelab.data.streaming import (
    BatchCrops,
    ImageDataset,
    StreamingBatchLoader,
    ToFloat,
    available_memory,
)
from prunelab.formatting import nbytes
from prunelab.seeds import derive_seed

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageFolderDataModule", "class_names"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_CROPS = ("random_resized", "random", "none")
_SPLIT_SALT, _SUBSET_SALT = 0x5B118, 0x5B119


def class_names(folder: Path) -> list[str]:
    """The class folders of ``folder`` (sorted; hidden ones skipped)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _size_setting(value: Any, key: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
            value >= 1 and value != int(value)):
        raise ValueError(f"data.{key}={value!r}: allowed: a fraction in [0, 1) or a count >= 1")
    return value if value < 1 else int(value)


class ImageFolderDataModule(pl.LightningDataModule):
    """Classification images in folders, streamed or in memory (module docstring).

    ``input_shape`` ``(3, image_size, image_size)`` and ``num_classes`` are known after
    ``__init__`` (the class folder names are read there); the images are listed, split and
    (in memory) loaded in :meth:`preload` / :meth:`setup`. ``subset=N``: N training images of a
    seeded permutation, validation and test capped at N seeded picks. ``num_workers``,
    ``pin_memory`` (only with a GPU), ``persistent_workers``: the DataLoaders' settings (also for
    decoding into memory). ``batch_size``, ``eval_batch_size``, ``seed``, ``drop_last``,
    ``steps_per_batch``: as in :class:`~prunelab.data.base.TensorDataModule`.
    """

    name = "imagefolder"

    def __init__(self, root: str | os.PathLike | None = None, image_size: int = 224,
                 crop_fraction: float = 0.875, center_crop: bool = True,
                 train_crop: str = "random_resized", crop_scale: Sequence[float] = (0.08, 1.0),
                 hflip: bool = True, normalize: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 batch_size: int = 64, eval_batch_size: int = 256, val_size: float = 0.1,
                 test_size: float = 0.1, subset: int | None = None, seed: int = 0,
                 drop_last: bool = False, num_workers: int = 4, pin_memory: bool = True,
                 persistent_workers: bool = True, in_memory: bool | str = "auto",
                 memory_fraction: float = 0.25, steps_per_batch: int | str = "auto") -> None:
        super().__init__()
        if steps_per_batch == "auto":  # assembly resolves it (prunelab.assemble); alone: 1
            steps_per_batch = 1
        if isinstance(steps_per_batch, bool) or not isinstance(steps_per_batch, int) or (
                steps_per_batch < 1):
            raise ValueError(f"data.steps_per_batch={steps_per_batch!r} must be an integer >= 1 "
                             f"or auto")
        checks = {"image_size": image_size >= 1, "crop_fraction": 0 < crop_fraction <= 1,
                  "train_crop": train_crop in TRAIN_CROPS, "batch_size": batch_size >= 1,
                  "eval_batch_size": eval_batch_size >= 1, "num_workers": num_workers >= 0,
                  "crop_scale": len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1,
                  "mean": len(mean) == len(std) == 3 and min(std) > 0,
                  "subset": subset is None or subset >= 1, "in_memory": in_memory in (
                      "auto", True, False), "memory_fraction": 0 < memory_fraction <= 1}
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"data.{key}={locals()[key]!r} is not allowed (imagefolder)")
        if root is None or str(root) in ("", "???"):
            raise DataError("data=imagefolder needs data.root=<dir>: a folder holding train/ "
                            "and val/ (optional test/) of class folders, or class folders")
        self.root = Path(root).expanduser().absolute()
        self.image_size, self.crop_fraction = int(image_size), float(crop_fraction)
        self.base_size = max(self.image_size, round(self.image_size / self.crop_fraction))
        self.center_crop, self.train_crop, self.crop_scale = bool(center_crop), train_crop, tuple(
            float(s) for s in crop_scale)
        self.hflip, self.normalize = bool(hflip), bool(normalize)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.val_size, self.test_size = (_size_setting(val_size, "val_size"),
                                         _size_setting(test_size, "test_size"))
        self.subset, self.seed, self.drop_last = subset, int(seed), bool(drop_last)
        self.num_workers, self.persistent_workers = int(num_workers), bool(persistent_workers)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.in_memory, self.memory_fraction = in_memory, float(memory_fraction)
        self.steps_per_batch = steps_per_batch
        self.folders = self._folders()
        self.classes = self._classes()
        self.input_shape = (3, self.image_size, self.image_size)
        self.num_classes = len(self.classes)
        self.samples: dict[str, list[tuple[str, int]]] | None = None
        self.memory: bool | None = None  # the chosen path: True = in memory
        self.tensors: dict[str, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ layout and files
    def _folders(self) -> dict[str, Path]:
        """``{"train", "val"[, "test"]}`` folders, or ``{"all"}`` for the one-folder layout."""
        if not self.root.is_dir():
            raise DataError(f"imagefolder: data.root='{self.root}' is not a directory; set "
                            f"data.root=<dir> holding train/ and val/ or class folders")
        if not (self.root / "train").is_dir():
            return {"all": self.root}
        if not (self.root / "val").is_dir():
            raise DataError(f"imagefolder: data.root='{self.root}' has train/ but no val/; add "
                            f"val/<class>/ folders, or put the class folders directly in it")
        names = ("train", "val", "test") if (self.root / "test").is_dir() else ("train", "val")
        return {n: self.root / n for n in names}

    def _classes(self) -> list[str]:
        found = {k: class_names(f) for k, f in self.folders.items()}
        first = next(iter(found))
        if not found[first]:
            raise DataError(f"imagefolder: no class folders in '{self.folders[first]}'; expected "
                            f"<class>/<image> folders (e.g. cat/1.jpg, dog/2.jpg)")
        for k, names in found.items():
            if names != found[first]:
                only = [f"only in {f}/: {', '.join(sorted(set(a) - set(b)))}" for f, a, b in
                        ((first, found[first], names), (k, names, found[first])) if set(a) - set(b)]
                raise DataError(f"imagefolder: the class folders of {first}/ and {k}/ under "
                                f"'{self.root}' differ ({'; '.join(only)})")
        return found[first]

    def _list(self, folder: Path, training: bool) -> list[tuple[str, int]]:
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        index = {c: i for i, c in enumerate(self.classes)}
        samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS, allow_empty=True)
        empty = sorted(set(self.classes) - {self.classes[y] for _, y in samples})
        if not samples or (training and empty):
            what = f"in the class folders {', '.join(empty)}" if samples else "anywhere"
            raise DataError(f"imagefolder: no images {what} under '{folder}' (extensions "
                            f"{', '.join(IMG_EXTENSIONS)})")
        return samples

    def _pick(self, samples: list, n: int | None, split: str) -> list:
        if n is None or n >= len(samples):
            return samples
        salt = ("train", "val", "test").index(split)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, _SUBSET_SALT, salt))
        return [samples[i] for i in torch.randperm(len(samples), generator=gen)[:n].sort().values]

    def _scan(self) -> None:
        """List and split the images; choose memory or streaming (one printed line)."""
        if "all" in self.folders:
            images = self._list(self.folders["all"], training=True)
            n = len(images)
            n_val, n_test = (round(s * n) if isinstance(s, float) else s
                             for s in (self.val_size, self.test_size))
            if n_val + n_test >= n:
                raise DataError(f"imagefolder: data.val_size={self.val_size} and data.test_size="
                                f"{self.test_size} leave no training images of the {n} in "
                                f"'{self.root}'")
            gen = torch.Generator().manual_seed(derive_seed(self.seed, _SPLIT_SALT))
            perm = torch.randperm(n, generator=gen)
            part = {k: [images[i] for i in p.sort().values] for k, p in
                    (("val", perm[:n_val]), ("test", perm[n_val:n_val + n_test]),
                     ("train", perm[n_val + n_test:]))}
            if n_test == 0:
                part["test"] = part["val"]
        else:
            part = {k: self._list(f, training=k == "train") for k, f in self.folders.items()}
            part.setdefault("test", part["val"])
        shared = part["test"] is part["val"]
        part = {k: self._pick(v, self.subset, k) for k, v in part.items()}
        if shared:
            part["test"] = part["val"]
        self.samples = part
        self._choose_path()

    def _choose_path(self) -> None:
        s, b = self.image_size, self.base_size
        evals = len(self.samples["val"]) + (0 if self.samples["test"] is self.samples["val"]
                                            else len(self.samples["test"]))
        need = 3 * (len(self.samples["train"]) * b * b + evals * s * s)
        avail = available_memory()
        fits = need <= self.memory_fraction * avail
        self.memory = fits if self.in_memory == "auto" else bool(self.in_memory)
        why = (f"in_memory={str(self.in_memory).lower()}: {nbytes(need)} of uint8 images "
               f"{'<=' if fits else '>'} {self.memory_fraction:g} x {nbytes(avail)} available")
        how = ("in memory (decoded once)" if self.memory else "streamed from disk by "
               + (f"{self.num_workers} DataLoader workers" if self.num_workers else
                  "the main process (num_workers=0)"))
        counts = "/".join(str(len(self.samples[k])) for k in ("train", "val", "test"))
        if rank_zero_only.rank == 0:  # DDP: once
            print(f"prunelab: data: {counts} train/val/test images of {self.num_classes} "
                  f"classes under {self.root}, {how} ({why})", flush=True)

    # ------------------------------------------------------------------ transforms
    def _resize(self, size: int) -> Any:
        from torchvision import transforms as T

        return T.Resize(size if self.center_crop else (size, size), antialias=True)

    def _transform(self, split: str, tensor: bool = False) -> Any:
        """The per-image transform of ``split``; ``tensor``: uint8 tensors for memory (training
        images B x B, uncropped)."""
        from torchvision import transforms as T

        s, b = self.image_size, self.base_size
        if tensor:
            return T.Compose([self._resize(b), T.CenterCrop(b if split == "train" else s),
                              T.PILToTensor()])
        steps = [self._resize(b), T.CenterCrop(s)]
        if split == "train":
            if self.train_crop == "random_resized":
                steps = [T.RandomResizedCrop(s, scale=self.crop_scale, antialias=True)]
            elif self.train_crop == "random":
                steps = [self._resize(b), T.RandomCrop(s)]
            steps += [T.RandomHorizontalFlip()] if self.hflip else []
        steps.append(T.ToTensor())
        if self.normalize:
            steps.append(T.Normalize(self.mean, self.std))
        return T.Compose(steps)

    def _to_float(self) -> ToFloat:
        return ToFloat(self.mean if self.normalize else None, self.std)

    # ------------------------------------------------------------------ loading
    def _loader_args(self) -> dict[str, Any]:
        workers = self.num_workers
        return {"num_workers": workers, "pin_memory": self.pin_memory,
                "persistent_workers": self.persistent_workers and workers > 0}

    def _load(self) -> None:
        """Decode every split into one uint8 tensor (DataLoader workers decode)."""
        for split, samples in self.samples.items():
            if split == "test" and samples is self.samples["val"]:
                self.tensors["test"] = self.tensors["val"]
                continue
            side = self.base_size if split == "train" else self.image_size
            x = torch.empty((len(samples), 3, side, side), dtype=torch.uint8)
            y = torch.tensor([label for _, label in samples], dtype=torch.long)
            loader = DataLoader(ImageDataset(samples, self._transform(split, tensor=True)),
                                batch_size=256, num_workers=self.num_workers)
            at = 0
            for xb, _ in loader:
                x[at: at + len(xb)] = xb
                at += len(xb)
            self.tensors[split] = (x, y)

    def preload(self) -> None:
        """List the images (missing, empty: one-line :class:`DataError`) and, in memory, load
        them, before a trainer exists (assembly calls this); :meth:`setup` reuses them."""
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.samples is None:
            self._scan()
        if self.memory and not self.tensors:
            self._load()
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if self.memory and device is not None and device.type == "cuda":
            need = sum(x.numel() for k, (x, _) in self.tensors.items() if k != "test"
                       or self.samples["test"] is not self.samples["val"])
            if need <= self.memory_fraction * torch.cuda.mem_get_info(device)[0]:
                moved = {id(t): (t[0].to(device), t[1].to(device)) for t in self.tensors.values()}
                self.tensors = {k: moved[id(t)] for k, t in self.tensors.items()}

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> TensorBatchLoader | BatchGroups:
        """:meth:`train_batches`, in groups of ``steps_per_batch`` when that is above 1."""
        return grouped(self.train_batches(), self.steps_per_batch)

    def train_batches(self) -> TensorBatchLoader:
        """Shuffled, augmented training batches of this rank's shard."""
        trainer = getattr(self, "trainer", None)
        place = {"rank": 0, "world_size": 1, "epoch": 0}
        if trainer is not None:
            place = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                     "epoch": trainer.current_epoch}
        common = {"shuffle": True, "seed": self.seed, "drop_last": self.drop_last, **place}
        if self.samples is None:
            self.setup()
        if self.memory:
            crops = BatchCrops(self.image_size, self.train_crop, self.crop_scale, self.hflip,
                                self._to_float())
            return TensorBatchLoader(*self.tensors["train"], self.batch_size, transform=crops,
                                     **common)
        data = ImageDataset(self.samples["train"], self._transform("train"), self.seed)
        return StreamingBatchLoader(data, self.batch_size, augment=True, **common,
                                    **self._loader_args())

    def _eval_loader(self, split: str) -> TensorBatchLoader:
        if self.samples is None:
            self.setup()
        if self.memory:
            x, y = self.tensors[split]
            return TensorBatchLoader(x, y, self.eval_batch_size, transform=self._to_float())
        data = ImageDataset(self.samples[split], self._transform(split))
        return StreamingBatchLoader(data, self.eval_batch_size, **self._loader_args())

    def val_dataloader(self) -> TensorBatchLoader:
        """Validation batches in file order (every rank sees the whole split)."""
        return self._eval_loader("val")

    def test_dataloader(self) -> TensorBatchLoader:
        """Test batches in file order (every rank sees the whole split)."""
        return self._eval_loader("test")
