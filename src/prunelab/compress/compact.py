"""Compaction: a structured-pruned network becomes a physically smaller ``nn.Module``.

Zeros in a dense tensor buy nothing on a CPU; removing the channels they belong to does. The
channel groups come from :mod:`prunelab.graph`. A channel of a group can go when its output is
exactly zero everywhere it is produced:

- every producer (Conv/Linear whose output channels the group is) has an all-zero weight row
  and a zero bias;
- every BatchNorm on the group maps zero to zero (bias 0, and weight 0 or running mean 0).

Removing it deletes the producers' rows, the BatchNorm entries and the consumers' matching input
columns (``H*W`` columns each after a flatten), so the compact network computes the same
function. Fixed groups are left whole.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.graph import LAYERS, NORMS, ChannelGroup, GraphError, channel_groups


class CompactionError(GraphError):
    """A network or run that cannot be compacted (one-line message)."""


# -- which channels are dead, and removing them ------------------------------------------------------
@torch.no_grad()
def dead_channels(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Channels of ``group`` whose output is exactly zero everywhere (bool, one per channel)."""
    modules = dict(model.named_modules())
    dead = torch.ones(group.size, dtype=torch.bool)
    for name in group.producers:
        m = modules[name]
        dead &= (m.weight.detach().reshape(m.weight.shape[0], -1) == 0).all(1).cpu()
        if m.bias is not None:
            dead &= (m.bias.detach() == 0).cpu()
    for name in group.norms:
        bn = modules[name]
        zero_out = torch.ones(group.size, dtype=torch.bool)
        if bn.bias is not None:
            zero_out &= (bn.bias.detach() == 0).cpu()
        w_zero = ((bn.weight.detach() == 0).cpu() if bn.weight is not None
                  else torch.zeros(group.size, dtype=torch.bool))
        mean_zero = ((bn.running_mean == 0).cpu() if bn.running_mean is not None
                     else torch.zeros(group.size, dtype=torch.bool))
        dead &= zero_out & (w_zero | mean_zero)
    return dead


@dataclass
class CompactionReport:
    channels_before: int
    channels_after: int
    params_before: int
    params_after: int
    groups: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"channels_before": self.channels_before, "channels_after": self.channels_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "groups": self.groups}


def _slice_param(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    p = getattr(module, name, None)
    if p is None:
        return
    new = p.detach().index_select(dim, index.to(p.device)).clone()
    if isinstance(p, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=p.requires_grad))
    else:
        setattr(module, name, new)


def _set_out(module: nn.Module, n: int) -> None:
    if isinstance(module, nn.Linear):
        module.out_features = n
    elif isinstance(module, NORMS):
        module.num_features = n
    else:
        module.out_channels = n


def _set_in(module: nn.Module, n: int) -> None:
    if isinstance(module, nn.Linear):
        module.in_features = n
    else:
        module.in_channels = n


@torch.no_grad()
def compact(model: nn.Module, input_shape: Sequence[int], groups: list[ChannelGroup] | None = None
            ) -> tuple[nn.Module, CompactionReport]:
    """A copy of ``model`` without its dead channels, and what was removed.

    The copy computes the same outputs (up to float rounding) in eval mode; it is an ordinary
    module of the same class with smaller layers (see :func:`save_compact`). ``groups``: the
    model's :func:`channel_groups`, when already known (they depend on the architecture only)."""
    model_c = copy.deepcopy(model).cpu()
    if groups is None:
        groups = channel_groups(model_c, input_shape)
    modules = dict(model_c.named_modules())
    params_before = sum(p.numel() for p in model_c.parameters())
    rows, before, after = [], 0, 0
    for g in groups:
        if g.fixed or not g.producers:
            continue
        dead = dead_channels(model_c, g)
        before += g.size
        keep = (~dead).nonzero().flatten()
        if keep.numel() == 0:  # keep one channel: the shapes stay valid
            keep = torch.zeros(1, dtype=torch.long)
        after += keep.numel()
        rows.append({"producers": list(g.producers), "channels": g.size, "kept": int(keep.numel())})
        if keep.numel() == g.size:
            continue
        for name in g.producers:
            m = modules[name]
            _slice_param(m, "weight", keep, 0)
            _slice_param(m, "bias", keep, 0)
            _set_out(m, keep.numel())
        for name in g.norms:
            bn = modules[name]
            for attr in ("weight", "bias", "running_mean", "running_var"):
                _slice_param(bn, attr, keep, 0)
            _set_out(bn, keep.numel())
        for name, per in g.consumers:
            m = modules[name]
            cols = (keep[:, None] * per + torch.arange(per)[None, :]).flatten()
            _slice_param(m, "weight", cols, 1)
            _set_in(m, cols.numel())
    params_after = sum(p.numel() for p in model_c.parameters())
    return model_c, CompactionReport(before, after, params_before, params_after, rows)


def macs_report(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int | None]:
    """The MACs of one forward pass (batch 1) of a pruned network, each named for what it is:

    - ``dense``: executed by the masked network on dense kernels (its zeros are multiplied too);
    - ``compact``: of the compact network (:func:`compact`: dead channels removed, and with them
      the next layers' matching inputs), the network a structured-pruned run ships as; equal to
      ``dense`` when no channel is dead; None when the network cannot be traced;
    - ``nonzero``: each layer's dense MACs times its own weight density (the work of an ideal
      unstructured-sparse kernel); for channel pruning it overcounts, since a removed channel
      also removes the next layer's inputs; ``effective`` is its former name, kept for readers.

    Convention of :func:`prunelab.metrics.count_macs` (FlopCounterMode's FLOPs / 2)."""
    from prunelab.metrics.macs import count_macs

    counted = count_macs(model, tuple(input_shape))
    try:
        small, _ = compact(model, input_shape)
        compact_macs: int | None = count_macs(small, tuple(input_shape))["dense"]
    except GraphError:  # not traceable (CompactionError included): no compact network
        compact_macs = None
    return {"dense": counted["dense"], "compact": compact_macs, "nonzero": counted["effective"],
            "effective": counted["effective"]}


# -- saving and loading ------------------------------------------------------------------------------
def save_compact(net: nn.Module, path: str | Path, **meta: Any) -> Path:
    """A compact network as an ordinary checkpoint, ``{"state_dict", "compact": True, **meta}``
    of plain tensors and containers (loads with ``weights_only=True``). ``meta`` names how to
    build the dense model (``model``: registry name, ``input_shape``, ``num_classes``,
    ``model_kwargs``); :func:`load_compact` rebuilds it and shrinks it to the saved shapes.
    ``python -m prunelab.measure`` and ``python -m prunelab.export compact=true`` write their
    ``model_compact.pt`` this way."""
    from prunelab.files import save_torch_atomic

    path = Path(path)
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.items()}
    save_torch_atomic({"state_dict": net.state_dict(), "compact": True, **meta}, path)
    return path


def resize_to(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink ``model``'s Conv/Linear/BatchNorm layers to the shapes in ``state_dict`` (in place),
    so that ``load_state_dict`` accepts a compacted state."""
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        for attr in ("weight", "bias", "running_mean", "running_var"):
            key = prefix + attr
            p = getattr(m, attr, None)
            if key not in state_dict or p is None or tuple(p.shape) == tuple(state_dict[key].shape):
                continue
            new = torch.empty_like(state_dict[key], dtype=p.dtype, device=p.device)
            if isinstance(p, nn.Parameter):
                setattr(m, attr, nn.Parameter(new, requires_grad=p.requires_grad))
            else:
                setattr(m, attr, new)
        if isinstance(m, LAYERS) and prefix + "weight" in state_dict:
            w = state_dict[prefix + "weight"]
            _set_out(m, w.shape[0])
            _set_in(m, w.shape[1] * (getattr(m, "groups", 1) if not isinstance(m, nn.Linear) else 1))
        elif isinstance(m, NORMS) and prefix + "running_mean" in state_dict:
            _set_out(m, state_dict[prefix + "running_mean"].shape[0])
    return model


def load_compact(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_compact` (through the model registry), in eval mode.
    A file that is not such a checkpoint is a one-line :class:`CompactionError`."""
    from prunelab.models import build_model

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input here
        raise CompactionError(f"{str(path)!r} is not a readable compact checkpoint "
                              f"({type(exc).__name__}); prunelab loads it with "
                              f"weights_only=True") from None
    if not isinstance(ckpt, dict) or not ckpt.get("compact") or "state_dict" not in ckpt:
        raise CompactionError(f"{str(path)!r} is not a compact checkpoint (written by "
                              f"prunelab.compress.compact.save_compact)")
    if not ckpt.get("model"):
        raise CompactionError(f"{str(path)!r} names no registered model to rebuild; load its "
                              f"state_dict into the network yourself (resize_to, then "
                              f"load_state_dict)")
    model = build_model(ckpt["model"], input_shape=tuple(ckpt["input_shape"]),
                        num_classes=int(ckpt["num_classes"]), **(ckpt.get("model_kwargs") or {}))
    resize_to(model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
