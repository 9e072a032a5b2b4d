"""Reading image data sets beyond memory, and the batch-level pieces of the in-memory path.

* :class:`ImageDataset`: ``(transform(image), label)`` of ``(path, label)`` samples; the item
  ``(index, epoch)`` draws the transform's randomness from a generator seeded with
  ``(seed, epoch, index)``, in whichever worker reads it, so augmentation depends neither on
  the number of workers nor on a resume.
* :class:`StreamingBatchLoader`: :class:`~prunelab.data.loader.TensorBatchLoader`'s order,
  epochs, rank shards and resume state, over such a data set read by a
  :class:`~torch.utils.data.DataLoader` (workers, pinned memory).
* :class:`BatchCrops`, :class:`ToFloat`: training crops and flips of in-memory ``uint8`` batches
  (one ``roi_align`` call per batch), and the ``ToTensor`` + ``Normalize`` of whole batches.
* :func:`available_memory`: the RAM an ``in_memory=auto`` decision may use a fraction of.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from prunelab.data.base import DataError
from prunelab.data.loader import TensorBatchLoader
from prunelab.seeds import derive_seed

__all__ = ["BatchCrops", "ImageDataset", "StreamingBatchLoader", "ToFloat", "available_memory"]

_AUGMENT_SALT = 0xA06
_MASK64 = (1 << 64) - 1


class ImageDataset(Dataset):
    """``(transform(image), label)`` of ``samples``; the item ``(index, epoch)`` draws the
    transform's randomness from a generator seeded with ``(seed, epoch, index)``."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Any, seed: int = 0) -> None:
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, int]:
        from torchvision.datasets.folder import default_loader

        index, epoch = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[index]
        try:
            image = default_loader(path)
        except OSError as exc:
            raise DataError(f"imagefolder: cannot read {path} ({exc})") from None
        if epoch is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
            torch.manual_seed(derive_seed(self.seed, _AUGMENT_SALT, epoch, index))
            return self.transform(image), label


class _Order(Sampler):
    """The indices of the batches a :class:`StreamingBatchLoader` iteration yields."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class StreamingBatchLoader(TensorBatchLoader):
    """:class:`TensorBatchLoader`'s order, epochs, rank shards and resume state over a data set
    read by a :class:`~torch.utils.data.DataLoader` (workers, pinned memory): the loader's
    "tensor" is the index range, a batch is the data set's items at a batch of those indices.
    ``augment``: items are ``(index, epoch)`` (seeded augmentation, :class:`ImageDataset`)."""

    def __init__(self, dataset: Dataset, batch_size: int, *, augment: bool = False,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, epoch: int = 0, **loader_args: Any) -> None:
        n = len(dataset)
        super().__init__(torch.arange(n), torch.zeros(n, dtype=torch.long), batch_size,
                         shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                         world_size=world_size, epoch=epoch)
        self.dataset, self.augment, self._order = dataset, bool(augment), _Order()
        self.loader = DataLoader(dataset, batch_size=self.batch_size, sampler=self._order,
                                 **loader_args)

    def _batches(self, order: Tensor, epoch: int, skip: int):
        idx = order[skip * self.batch_size: len(self) * self.batch_size].tolist()
        self._order.items = [(i, epoch) for i in idx] if self.augment else idx
        for b, batch in enumerate(self.loader, start=skip):
            if self._active_epoch == epoch:
                self._yielded = b + 1
            yield batch

    def to(self, device: Any) -> StreamingBatchLoader:
        return self  # batches are read from disk; Lightning moves them


class BatchCrops:
    """Training crops of in-memory batches: ``uint8 (N, C, B, B)`` -> normalized float
    ``(N, C, S, S)``, every sample its own crop (one ``roi_align`` call) and flip, drawn from a
    CPU generator that :class:`TensorBatchLoader` reseeds before every batch."""

    def __init__(self, size: int, crop: str, scale: Sequence[float], hflip: bool,
                 to_float: ToFloat) -> None:
        self.size, self.crop, self.scale, self.hflip = size, crop, tuple(scale), hflip
        self.to_float, self.generator = to_float, torch.Generator()

    def manual_seed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed) & _MASK64)

    def _boxes(self, n: int, h: int, w: int) -> Tensor:
        g, s = self.generator, self.size
        if self.crop == "random_resized":  # torchvision's RandomResizedCrop.get_params, 10 tries
            area = h * w * torch.empty(n, 10).uniform_(*self.scale, generator=g)
            ratio = torch.exp(torch.empty(n, 10).uniform_(math.log(3 / 4), math.log(4 / 3),
                                                          generator=g))
            cw, ch = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
            ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
            first, whole = ok.float().argmax(1, keepdim=True), torch.tensor(float(min(h, w)))
            cw = torch.where(ok.any(1), cw.gather(1, first)[:, 0], whole)  # else: the whole
            ch = torch.where(ok.any(1), ch.gather(1, first)[:, 0], whole)  # (square) image
        else:
            cw = ch = torch.full((n,), float(s))
        if self.crop == "none":  # the centre, as CenterCrop rounds it
            top = torch.full((n,), float(round((h - s) / 2)))
            left = torch.full((n,), float(round((w - s) / 2)))
        else:
            top = (torch.rand(n, generator=g) * (h - ch + 1)).floor()
            left = (torch.rand(n, generator=g) * (w - cw + 1)).floor()
        return torch.stack([torch.arange(n, dtype=torch.float32), left, top, left + cw, top + ch], 1)

    def __call__(self, x: Tensor) -> Tensor:
        from torchvision.ops import roi_align

        n, _, h, w = x.shape
        rois = self._boxes(n, h, w).to(x.device)
        out = roi_align(x.float(), rois, output_size=self.size, aligned=True)  # exact for whole
        if self.hflip:  # pixels (the crops of `random` and `none`), bilinear otherwise
            flip = (torch.rand(n, generator=self.generator) < 0.5).to(x.device)
            out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        return self.to_float(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, crop={self.crop}, hflip={self.hflip})"


class ToFloat:
    """``uint8``-range images -> ``float32`` in [0, 1] (as ``ToTensor``), then standardized
    per channel (as ``Normalize``) when ``mean`` is given."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(torch.float32).div_(255)
        if self.mean:
            m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            x = x.sub_(m).div_(s)
        return x


def available_memory() -> int:
    """Bytes of RAM available now (``MemAvailable``; 0 when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0
