"""In-memory batch loader and batch-level augmentation.

The data sets used by prunelab (MNIST, Fashion-MNIST, CIFAR-10/100, synthetic) fit in memory,
even in GPU memory. Instead of a :class:`torch.utils.data.DataLoader` that fetches and collates
samples one by one, :class:`TensorBatchLoader` keeps the whole split as two tensors (on the
training device once :meth:`TensorBatchLoader.to` was called) and yields batches by fancy
indexing, ``(x[idx], y[idx])``. Augmentation runs on whole batches, on the same device.

Lightning integration (checked against pytorch-lightning 2.x):

* Lightning accepts any iterable with ``__len__`` as a dataloader; it only wraps / re-samples
  :class:`~torch.utils.data.DataLoader` instances, so nothing here is replaced.
* Lightning calls ``set_epoch`` only on ``dataloader.sampler`` and
  ``dataloader.batch_sampler.sampler``, never on the dataloader itself: the loader's ``sampler``
  is a small object whose ``set_epoch`` sets the loader's epoch, so training epoch ``e`` sees the
  permutation drawn from ``seed + e``, on a fresh run and on a resumed one alike. Used without
  Lightning, every iteration advances the epoch by one.
* An iterator decides its epoch at its first ``next()``, not at ``iter()``: Lightning calls
  ``iter()`` on a train loader to check it is iterable, and creates the first epoch's iterator
  before it sets the epoch (before a resume restores the loader's state, too).
* Lightning saves the ``state_dict()`` of stateful train loaders into checkpoints and calls
  ``load_state_dict()`` before iterating again on resume. The state holds the epoch and the
  number of batches already yielded, so resuming from an end-of-epoch *or* mid-epoch checkpoint
  continues with exactly the batches an uninterrupted run would have produced.

:class:`BatchGroups` hands Lightning lists of ``k`` consecutive batches: the module takes one
optimizer step per batch of the list, so Lightning's per-batch machinery (hooks, fetcher,
progress tracking) runs once per ``k`` optimizer steps, like
Keras' ``steps_per_execution`` (``data.steps_per_batch``; BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from prunelab.seeds import derive_seed

__all__ = ["TensorBatchLoader", "BatchGroup", "BatchGroups", "RandomCropFlip", "grouped",
           "is_batch_group", "iter_batches"]

_MASK64 = (1 << 64) - 1


class RandomCropFlip:
    """CIFAR-style augmentation on a whole batch: random crop after zero padding, horizontal flip.

    Equivalent to torchvision's ``RandomCrop(H, padding=padding)`` followed by
    ``RandomHorizontalFlip(flip_p)`` applied independently to every sample, but vectorized: the
    batch is padded once and all crops are gathered with one advanced-indexing operation, on
    whatever device the batch lives on.

    The padding value is ``fill`` in the space of the given tensor (default ``0``: for normalized
    inputs that is the per-channel data-set mean rather than black; MNIST passes its normalized
    background so a shifted digit sits on its own black).

    Randomness comes from a CPU :class:`torch.Generator` (crop offsets and flip decisions are
    drawn on the CPU, then moved to the batch's device), so results do not depend on the device.
    :class:`TensorBatchLoader` reseeds it through :meth:`manual_seed` before every batch with a
    seed derived from ``(loader seed, epoch, rank, batch index)``, which makes augmentation
    reproducible, including after resuming from a checkpoint.

    Args:
        padding: zero padding added on every side before cropping back to the input size.
        flip_p: probability of flipping each sample horizontally.
        seed: initial seed of the generator (used when nobody calls :meth:`manual_seed`).
        fill: value of the padded border.
    """

    def __init__(self, padding: int = 4, flip_p: float = 0.5, seed: int = 0,
                 fill: float = 0.0) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        self.padding = int(padding)
        self.flip_p = float(flip_p)
        self.fill = float(fill)
        self.generator = torch.Generator().manual_seed(int(seed) & _MASK64)

    def manual_seed(self, seed: int) -> None:
        """Reseed the internal generator."""
        self.generator.manual_seed(int(seed) & _MASK64)

    def __call__(self, x: Tensor) -> Tensor:
        """Augment a batch ``x`` of shape ``(N, C, H, W)``; returns a new tensor of the same shape."""
        if x.dim() != 4:
            raise ValueError(f"RandomCropFlip expects an (N, C, H, W) batch, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        p = self.padding
        span = 2 * p + 1
        off_y = torch.randint(0, span, (n,), generator=self.generator)
        off_x = torch.randint(0, span, (n,), generator=self.generator)
        flip = torch.rand(n, generator=self.generator) < self.flip_p
        device = x.device
        off_y, off_x, flip = off_y.to(device), off_x.to(device), flip.to(device)

        padded = torch.nn.functional.pad(x, (p, p, p, p), value=self.fill) if p else x
        rows = off_y[:, None] + torch.arange(h, device=device)  # (N, H)
        cols = off_x[:, None] + torch.arange(w, device=device)  # (N, W)
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # mirrored window = flipped crop
        batch_idx = torch.arange(n, device=device)[:, None, None, None]
        chan_idx = torch.arange(c, device=device)[None, :, None, None]
        return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(padding={self.padding}, flip_p={self.flip_p}, "
                f"fill={self.fill:g})")


class TensorBatchLoader:
    """Iterable of ``(x[idx], y[idx])`` batches over tensors held in memory.

    Usable directly as a Lightning train/val/test dataloader (it has ``__len__``,
    ``state_dict`` / ``load_state_dict`` for exact resume, and needs no workers).

    Ordering: without shuffling, samples come in storage order. With shuffling, epoch ``e``
    uses ``torch.randperm(N, generator=torch.Generator().manual_seed(seed + e))``. The epoch
    starts at ``epoch`` and advances by one with every iteration (an iterator takes its epoch
    at its first ``next()``); :meth:`set_epoch` (also as ``sampler.set_epoch``, which Lightning
    calls at every epoch start) sets it explicitly.

    Sharding (data parallel): like :class:`torch.utils.data.DistributedSampler` with
    ``drop_last=True``, the (possibly shuffled) index list is cut to a multiple of
    ``world_size`` and rank ``r`` takes every ``world_size``-th index starting at ``r``. Shards are
    disjoint and of equal size ``N // world_size``; at most ``world_size - 1`` samples are left
    out per epoch (different ones every epoch when shuffling). All ranks must use the same seed.

    Args:
        x: inputs, e.g. float ``(N, C, H, W)``.
        y: integer labels ``(N,)`` (converted to ``long``).
        batch_size: samples per batch (per rank).
        shuffle: draw a new permutation every epoch.
        seed: base seed of the permutations and of the transform.
        drop_last: drop the last batch of an epoch if it is smaller than ``batch_size``.
        transform: callable applied to each input batch (after indexing, so on the tensors'
            device), e.g. :class:`RandomCropFlip`; meant for training loaders. If it has a
            ``manual_seed(int)`` method, it is reseeded before every batch with
            ``derive_seed(seed, epoch, rank, batch_index)``.
        rank: index of this process among ``world_size`` data-parallel processes.
        world_size: number of data-parallel processes.
        epoch: epoch used by the first ``__iter__`` call.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y have different lengths: {len(x)} != {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.x = x
        self.y = y.long()
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._epoch = int(epoch)  # epoch of the next __iter__ call
        self._skip = 0  # batches to skip at the next __iter__ call (set by load_state_dict)
        self._active_epoch: int | None = None  # epoch of the most recent iterator
        self._yielded = 0  # batches yielded by the most recent iterator

    # ------------------------------------------------------------------ sizes
    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return len(self.x) // self.world_size if self.world_size > 1 else len(self.x)

    def __len__(self) -> int:
        """Batches per epoch (on this rank)."""
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # ------------------------------------------------------------------ epochs / state
    @property
    def epoch(self) -> int:
        """Epoch that the next ``__iter__`` call will use."""
        return self._epoch

    batch_sampler = None  # Lightning looks for a sampler here too

    @property
    def sampler(self) -> _EpochSetter:
        """What Lightning calls ``set_epoch`` on at every epoch start (see the module docstring)."""
        return _EpochSetter(self)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used by the next ``__iter__`` call (cancels a pending mid-epoch resume
        of a different epoch)."""
        epoch = int(epoch)
        if epoch != self._epoch:
            self._skip = 0
        self._epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Position in the stream: ``{"epoch": e, "batches_yielded": k}``.

        Once ``__iter__`` was called and until the iterator has yielded all its batches, ``e`` is
        that iterator's epoch and ``k`` the number of batches handed out so far; afterwards (or
        before any iteration) ``e`` is the next epoch and ``k`` is 0 (or the pending skip of a
        loaded state).
        """
        if self._active_epoch is not None and self._yielded < len(self):
            return {"epoch": self._active_epoch, "batches_yielded": self._yielded}
        return {"epoch": self._epoch, "batches_yielded": self._skip}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`: the next ``__iter__`` call resumes
        epoch ``state_dict["epoch"]`` after its first ``batches_yielded`` batches."""
        check_group_size(state_dict, 1)
        self._epoch = int(state_dict["epoch"])
        self._skip = int(state_dict.get("batches_yielded", 0))
        self._active_epoch = None
        self._yielded = 0

    # ------------------------------------------------------------------ iteration
    def indices(self, epoch: int) -> Tensor:
        """The sample indices (on the CPU) this rank visits in ``epoch``, in order."""
        n = len(self.x)
        if self.shuffle:
            gen = torch.Generator().manual_seed((self.seed + epoch) & _MASK64)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            total = (n // self.world_size) * self.world_size
            order = order[self.rank : total : self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: the epoch is decided at the first next() (module docstring)
        epoch, skip = self._epoch, self._skip
        self._epoch, self._skip = epoch + 1, 0
        self._active_epoch, self._yielded = epoch, skip
        order = self.indices(epoch).to(self.x.device)
        yield from self._batches(order, epoch, skip)

    def _batches(self, order: Tensor, epoch: int, skip: int) -> Iterator[tuple[Tensor, Tensor]]:
        bs = self.batch_size
        reseed = getattr(self.transform, "manual_seed", None)
        for b in range(skip, len(self)):
            idx = order[b * bs : (b + 1) * bs]
            xb, yb = self.x[idx], self.y[idx]
            if self.transform is not None:
                if callable(reseed):
                    reseed(derive_seed(self.seed, epoch, self.rank, b))
                xb = self.transform(xb)
            if self._active_epoch == epoch:
                self._yielded = b + 1
            yield xb, yb

    # ------------------------------------------------------------------ devices
    def to(self, device: torch.device | str) -> TensorBatchLoader:
        """Move the tensors to ``device`` (in place) and return ``self``."""
        self.x = self.x.to(device)
        self.y = self.y.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Device holding the tensors (and therefore the batches)."""
        return self.x.device

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self.x)}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, drop_last={self.drop_last}, rank={self.rank}/"
            f"{self.world_size}, transform={self.transform!r}, device={self.device})"
        )


class _EpochSetter:
    """``loader.sampler``: Lightning's ``set_epoch`` call sets the loader's epoch."""

    def __init__(self, loader: TensorBatchLoader) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class BatchGroup(list):
    """The batches :class:`BatchGroups` hands Lightning as one training batch (a list subclass:
    Lightning's device transfer rebuilds it with its own type)."""


def is_batch_group(batch: Any) -> bool:
    """Whether ``batch`` is a group from :class:`BatchGroups`."""
    return isinstance(batch, BatchGroup)


def iter_batches(loader: Any) -> Iterator[Any]:
    """The batches of ``loader`` one by one, groups of :class:`BatchGroups` unpacked."""
    for batch in loader:
        if is_batch_group(batch):
            yield from batch
        else:
            yield batch


def check_group_size(state_dict: dict[str, Any], k: int) -> None:
    """A mid-epoch position saved with groups of another size cannot be resumed: Lightning
    counts the epoch's progress in groups."""
    saved = int(state_dict.get("steps_per_batch", 1))
    if saved != k and int(state_dict.get("batches_yielded", 0)) > 0:
        raise ValueError(f"data.steps_per_batch={k}, but the checkpoint stopped mid-epoch with "
                         f"data.steps_per_batch={saved}; allowed: resume with {saved}")


def grouped(loader: TensorBatchLoader, steps_per_batch: int) -> TensorBatchLoader | BatchGroups:
    """``loader`` as Lightning's training loader: in groups of ``steps_per_batch`` when that is
    above 1 (single-device training only: one-line error otherwise)."""
    if steps_per_batch == 1:
        return loader
    if loader.world_size > 1:
        raise ValueError(f"data.steps_per_batch={steps_per_batch} needs single-device "
                         f"training (this run has {loader.world_size} processes); allowed "
                         f"with several devices: 1")
    return BatchGroups(loader, steps_per_batch)


class BatchGroups:
    """Lists of ``k`` consecutive batches of ``loader`` (the last list of an epoch may be
    shorter), as one Lightning training batch each.

    The module steps the optimizer once per batch of a list, so an epoch still takes
    ``len(loader)`` optimizer steps on exactly the batches of the wrapped loader, in the same
    order; only Lightning's per-batch hooks (``on_train_batch_start`` / ``_end``, the fetcher,
    progress and logging bookkeeping) run once per group. Per-step hooks that go through the
    optimizer (``on_before_backward``, ``on_after_backward``, ``on_before_optimizer_step``) still
    run for every batch. Lightning's batch counts (``limit_train_batches``, ``val_check_interval``,
    the progress bar) count groups.

    ``state_dict`` / ``load_state_dict`` are the wrapped loader's (exact mid-epoch resume).
    """

    def __init__(self, loader: Any, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"steps_per_batch={k!r} must be an integer >= 1")
        self.loader = loader
        self.k = k

    def __len__(self) -> int:
        return math.ceil(len(self.loader) / self.k)

    def __iter__(self) -> Iterator[list[Any]]:
        return self._groups(iter(self.loader))

    def _groups(self, it: Iterator[Any]) -> Iterator[BatchGroup]:
        group = BatchGroup()
        for batch in it:
            group.append(batch)
            if len(group) == self.k:
                yield group
                group = BatchGroup()
        if group:
            yield group

    def state_dict(self) -> dict[str, Any]:
        return {**self.loader.state_dict(), "steps_per_batch": self.k}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_group_size(state_dict, self.k)
        self.loader.load_state_dict({k: v for k, v in state_dict.items()
                                     if k != "steps_per_batch"})

    def __getattr__(self, name: str) -> Any:  # batch_size, device, num_samples, ...
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loader!r}, k={self.k})"
