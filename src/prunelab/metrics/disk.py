"""On-disk model size, dense and with a bitmask sparse encoding."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from prunelab.files import save_torch_atomic
from prunelab.metrics.params import effective_state_dict

__all__ = [
    "SPARSE_FORMAT",
    "decode_sparse_state_dict",
    "dense_state_dict",
    "encode_sparse_state_dict",
    "load_sparse_state_dict",
    "save_dense_state_dict",
    "save_sparse_state_dict",
    "size_on_disk",
]

#: Format tag stored in sparse files.
SPARSE_FORMAT = "prunelab-sparse-v1"


def encode_sparse_state_dict(
    state_dict: Mapping[str, torch.Tensor], min_zero_fraction: float = 0.5
) -> dict:
    """Encode a state dict with a bitmask for mostly-zero floating tensors.

    Floating-point tensors with at least ``min_zero_fraction`` exact zeros are
    stored as ``{"encoding": "bitmask", "shape": [...], "mask": uint8 tensor
    (numpy.packbits of the non-zero positions, row-major), "values": the
    non-zero values}``; all other tensors as ``{"encoding": "dense", "tensor":
    t}``.  Values keep the tensor's dtype (float32 for float32 models), so
    decoding is exact.
    """
    tensors: dict[str, dict] = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu()
        if t.is_floating_point() and t.numel() > 0:
            flat = t.reshape(-1)
            nonzero = flat != 0
            zero_fraction = 1.0 - int(nonzero.sum()) / flat.numel()
            if zero_fraction >= min_zero_fraction:
                bits = np.packbits(nonzero.numpy())
                tensors[name] = {
                    "encoding": "bitmask",
                    "shape": [int(s) for s in t.shape],
                    "mask": torch.from_numpy(bits),
                    "values": flat[nonzero].clone(),
                }
                continue
        tensors[name] = {"encoding": "dense", "tensor": t.clone()}
    return {"format": SPARSE_FORMAT, "tensors": tensors}


def decode_sparse_state_dict(payload: Mapping) -> "OrderedDict[str, torch.Tensor]":
    """Inverse of :func:`encode_sparse_state_dict`."""
    if payload.get("format") != SPARSE_FORMAT:
        raise ValueError(f"not a {SPARSE_FORMAT} payload (format={payload.get('format')!r})")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, entry in payload["tensors"].items():
        if entry["encoding"] == "dense":
            out[name] = entry["tensor"]
        elif entry["encoding"] == "bitmask":
            shape = tuple(int(s) for s in entry["shape"])
            numel = int(torch.Size(shape).numel())
            mask = np.unpackbits(entry["mask"].numpy(), count=numel).astype(bool)
            values = entry["values"]
            flat = torch.zeros(numel, dtype=values.dtype)
            flat[torch.from_numpy(mask)] = values
            out[name] = flat.reshape(shape)
        else:
            raise ValueError(f"unknown encoding {entry['encoding']!r} for {name!r}")
    return out


def save_sparse_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, min_zero_fraction: float = 0.5
) -> None:
    """Write ``state_dict`` to ``path`` in the sparse bitmask format."""
    save_torch_atomic(encode_sparse_state_dict(state_dict, min_zero_fraction), path)


def load_sparse_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Load a file written by :func:`size_on_disk`/:func:`save_sparse_state_dict`.

    Returns the exact (CPU) state dict that was encoded.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return decode_sparse_state_dict(payload)


def dense_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The dense weights of ``model`` as they ship: :func:`prunelab.metrics.effective_state_dict`
    (``torch.nn.utils.prune`` masks and parametrizations folded in), CPU tensors, in a plain
    ``OrderedDict`` (no ``_metadata`` attribute, which ``nn.Module.state_dict`` attaches and
    ``torch.save`` would store too: a few hundred bytes that depend on the module tree)."""
    return OrderedDict((k, v.cpu()) for k, v in effective_state_dict(model).items())


def save_dense_state_dict(model: nn.Module, path: str | os.PathLike) -> int:
    """Write :func:`dense_state_dict` of ``model`` to ``path`` (``torch.save``, atomically); its
    size in bytes. The one definition of a network's dense size: ``train``'s ``results.json``
    (:func:`size_on_disk`) and ``measure``'s dense variant both use it."""
    save_torch_atomic(dense_state_dict(model), path)
    return int(os.path.getsize(path))


def size_on_disk(
    model: nn.Module, directory: str | os.PathLike, min_zero_fraction: float = 0.5
) -> dict[str, int]:
    """Write the model's weights to ``directory`` and report the file sizes.

    Files written (``directory`` is created if needed):

    * ``model_dense.pt`` - :func:`save_dense_state_dict` (the one dense size);
    * ``model_sparse.pt`` - the bitmask encoding of
      :func:`encode_sparse_state_dict` (tensors with at least
      ``min_zero_fraction`` zeros stored as packed mask + non-zero values).

    The state dict is :func:`prunelab.metrics.effective_state_dict`, i.e.
    ``model.state_dict()`` with any ``torch.nn.utils.prune`` masks or
    parametrizations folded into the weights.

    Returns:
        ``{"dense_bytes": int, "sparse_bytes": int}`` from ``os.path.getsize``.
    """
    os.makedirs(directory, exist_ok=True)
    dense_path = os.path.join(directory, "model_dense.pt")
    sparse_path = os.path.join(directory, "model_sparse.pt")
    dense_bytes = save_dense_state_dict(model, dense_path)
    save_sparse_state_dict(effective_state_dict(model), sparse_path, min_zero_fraction)
    return {"dense_bytes": dense_bytes, "sparse_bytes": int(os.path.getsize(sparse_path))}
