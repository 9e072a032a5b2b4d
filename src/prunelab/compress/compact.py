"""Compaction: a structured-pruned network becomes a physically smaller ``nn.Module``.

Zeros in a dense tensor buy nothing on a CPU; removing their channels does. A channel of a
group (:mod:`prunelab.graph`) goes when it is dead (zero wherever it is read): in the original
coordinates and all at once, the producers' and followers' rows, the per-channel members'
entries (BatchNorm, depthwise convolutions), the consumers' input columns (``H*W`` each after a
flatten) and a heads group's query/key/value rows and output-projection columns; so the compact
network computes the same function. Fixed groups are left whole.

:func:`compact` checks its output against the masked network on a random batch: a
:class:`CompactionError` names the first layer that differs instead of a broken network.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.graph import (
    CHANNEL_NORMS,
    CONVS,
    ChannelGroup,
    GraphError,
    channel_groups,
    head_columns,
    head_rows,
)


class CompactionError(GraphError):
    """A network or run that cannot be compacted (one-line message)."""


# -- which channels are dead -------------------------------------------------------------------------
def _rows_zero(w: torch.Tensor) -> torch.Tensor:
    w = w.detach()
    return (w.reshape(w.shape[0], -1) == 0).all(1).cpu()


def _entries_zero(t: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
    if t is None:
        return torch.ones(len(index), dtype=torch.bool)
    return (t.detach()[index] == 0).cpu()


def _maps_zero_to_zero(m: nn.Module, index: torch.Tensor) -> torch.Tensor:
    """Per channel, whether a per-channel member gives zero for an all-zero channel (eval)."""
    bias = getattr(m, "bias", None)
    zero = _entries_zero(bias, index)
    if getattr(m, "running_mean", None) is not None:  # eval: (0 - mean) / std * w + b
        w_zero = (_entries_zero(m.weight, index) if m.weight is not None
                  else torch.zeros(len(index), dtype=torch.bool))
        zero &= w_zero | _entries_zero(m.running_mean, index)
    return zero  # depthwise conv, GroupNorm/InstanceNorm of a zero channel: the bias


@torch.no_grad()
def dead_channels(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """Channels of ``group`` that can go without changing the outputs (bool, one per channel):
    zero wherever they are produced (producers' rows and biases, members mapping zero to zero,
    nothing on the way turning a zero into a value), or read by no consumer (all its input
    columns zero). A head is dead when its value rows and biases, or its output-projection
    columns, are zero."""
    modules = dict(model.named_modules())
    n = group.size
    idx = torch.arange(n)
    if group.heads:
        dead = torch.ones(n, dtype=torch.bool)
        for name in group.heads:
            mod = modules[name]
            d = int(mod.head_dim)
            v_rows = head_rows(mod, idx)[2 * n * d:].reshape(n, d)
            v_zero = (mod.qkv.weight.detach()[v_rows.flatten()].reshape(n, -1) == 0).all(1)
            if mod.qkv.bias is not None:
                v_zero &= (mod.qkv.bias.detach()[v_rows.flatten()].reshape(n, d) == 0).all(1)
            w = mod.proj.weight.detach()
            p_zero = (w[:, head_columns(mod, idx)].reshape(w.shape[0], n, d) == 0).all(2).all(0)
            dead &= (v_zero | p_zero).cpu()
        return dead
    produced = torch.zeros(n, dtype=torch.bool)
    if group.producers and group.zero_safe:
        produced = torch.ones(n, dtype=torch.bool)
        for name in group.producers + group.followers:  # a gate read elsewhere must be zero too
            m = modules[name]
            produced &= _rows_zero(m.weight) & _entries_zero(m.bias, idx)
        for name, off in group.members:
            produced &= _maps_zero_to_zero(modules[name], idx + off)
    unread = torch.zeros(n, dtype=torch.bool)
    if group.consumers:
        unread = torch.ones(n, dtype=torch.bool)
        for name, per, off in group.consumers:
            w = modules[name].weight.detach()
            cols = w.reshape(w.shape[0], w.shape[1], -1)[:, off * per:(off + n) * per]
            unread &= (cols.reshape(w.shape[0], n, -1) == 0).all(2).all(0).cpu()
    return produced | unread


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


# -- removing them -----------------------------------------------------------------------------------
_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")


class _Removals:
    """Indices to drop, per (module, tensor, dim), in the original coordinates."""

    def __init__(self) -> None:
        self.drop: dict[tuple[str, str, int], set[int]] = defaultdict(set)
        self.heads: dict[str, int] = defaultdict(int)
        self.members: dict[str, int] = defaultdict(int)  # channels removed from a member

    def add(self, module: str, attr: str, dim: int, index: torch.Tensor) -> None:
        self.drop[(module, attr, dim)].update(int(i) for i in index)

    def apply(self, modules: dict[str, nn.Module]) -> None:
        for (name, attr, dim), drop in self.drop.items():
            m = modules[name]
            p = getattr(m, attr, None)
            if p is None or not drop:
                continue
            keep = torch.tensor([i for i in range(p.shape[dim]) if i not in drop], dtype=torch.long)
            new = p.detach().index_select(dim, keep.to(p.device)).clone()
            if isinstance(p, nn.Parameter):
                setattr(m, attr, nn.Parameter(new, requires_grad=p.requires_grad))
            else:
                setattr(m, attr, new)
        for name, removed in self.heads.items():
            modules[name].num_heads = int(modules[name].num_heads) - removed
        for name in {k[0] for k in self.drop}:
            sync_shape(modules[name])
        for name, removed in self.members.items():  # a norm without tensors: its sizes alone
            m = modules[name]
            if getattr(m, "weight", None) is None and getattr(m, "running_mean", None) is None:
                if isinstance(m, nn.GroupNorm):
                    m.num_groups -= removed
                    m.num_channels -= removed
                elif hasattr(m, "num_features"):
                    m.num_features -= removed


def sync_shape(m: nn.Module) -> None:
    """A module's size attributes made to match its tensors (after slicing or resizing)."""
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape[0], m.weight.shape[1]
    elif isinstance(m, CONVS):
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        m.out_channels = m.weight.shape[0]
        if depthwise:  # one input channel per output channel, however many remain
            m.groups = m.in_channels = m.weight.shape[0]
        else:
            m.in_channels = m.weight.shape[1] * m.groups
    elif isinstance(m, CHANNEL_NORMS):
        ref = m.weight if m.weight is not None else m.running_mean
        if ref is not None:
            m.num_features = ref.shape[0]
    elif isinstance(m, nn.GroupNorm) and m.weight is not None:
        if m.num_groups == m.num_channels:  # one channel per group: a member, sliced whole
            m.num_groups = m.weight.shape[0]
        m.num_channels = m.weight.shape[0]


def _plan(model: nn.Module, groups: list[ChannelGroup]) -> tuple[_Removals, list[dict], int, int]:
    modules = dict(model.named_modules())
    plan = _Removals()
    rows, before, after = [], 0, 0
    for g in groups:
        if not g.prunable:
            continue
        dead = dead_channels(model, g)
        if bool(dead.all()):  # keep one channel: the shapes stay valid
            dead[0] = False
        before += g.size
        after += int((~dead).sum())
        rows.append({"producers": list(g.producers or g.heads), "channels": g.size,
                     "kept": int((~dead).sum())})
        idx = dead.nonzero().flatten()
        if idx.numel() == 0:
            continue
        for name in g.producers + g.followers:
            plan.add(name, "weight", 0, idx)
            plan.add(name, "bias", 0, idx)
        for name, off in g.members:
            for attr in _PER_CHANNEL:
                plan.add(name, attr, 0, idx + off)
            plan.members[name] += int(idx.numel())
        for name, per, off in g.consumers:
            cols = ((idx + off)[:, None] * per + torch.arange(per)[None, :]).flatten()
            plan.add(name, "weight", 1, cols)
        for name in g.heads:
            mod = modules[name]
            plan.add(f"{name}.qkv", "weight", 0, head_rows(mod, idx))
            plan.add(f"{name}.qkv", "bias", 0, head_rows(mod, idx))
            plan.add(f"{name}.proj", "weight", 1, head_columns(mod, idx))
            plan.heads[name] += int(idx.numel())
    return plan, rows, before, after


@torch.no_grad()
def compact(model: nn.Module, input_shape: Sequence[int], groups: list[ChannelGroup] | None = None,
            check: bool = True) -> tuple[nn.Module, CompactionReport]:
    """A copy of ``model`` without its dead channels, and what was removed.

    The copy computes the same outputs (up to float rounding) in eval mode; it is an ordinary
    module of the same class with smaller layers (see :func:`save_compact`). ``groups``: the
    model's :func:`channel_groups`, when already known (they depend on the architecture only).
    ``check``: run both networks on a random batch and raise a :class:`CompactionError` naming
    the first layer whose outputs differ (or fail)."""
    model_c = copy.deepcopy(model).cpu()
    if groups is None:
        groups = channel_groups(model_c, input_shape)
    modules = dict(model_c.named_modules())
    params_before = sum(p.numel() for p in model_c.parameters())
    plan, rows, before, after = _plan(model_c, groups)
    plan.apply(modules)
    params_after = sum(p.numel() for p in model_c.parameters())
    if check:
        check_same_outputs(model, model_c, input_shape)
    return model_c, CompactionReport(before, after, params_before, params_after, rows)


#: compact and masked outputs agree within this, relative to the largest output magnitude
TOLERANCE = 1e-4


@torch.no_grad()
def check_same_outputs(reference: nn.Module, small: nn.Module, input_shape: Sequence[int],
                       batch: int = 4, seed: int = 0) -> float:
    """The largest output difference of ``small`` from ``reference`` on a random batch (eval);
    a :class:`CompactionError` naming the first layer that differs when it is above
    ``TOLERANCE`` (relative to the largest output) or when ``small`` fails."""
    ref_param = next(iter(reference.parameters()), None)
    device = ref_param.device if ref_param is not None else torch.device("cpu")
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    traces: dict[str, dict[str, torch.Tensor]] = {"ref": {}, "small": {}}
    entered: list[str] = []

    def hooks(net: nn.Module, key: str) -> list:
        handles = []
        for name, m in net.named_modules():
            if name and next(iter(m.children()), None) is None:
                def post(mod, args, out, name=name):
                    if torch.is_tensor(out):
                        traces[key].setdefault(name, out.detach().float().cpu())
                def pre(mod, args, name=name):
                    entered.append(name)
                handles += [m.register_forward_hook(post), m.register_forward_pre_hook(pre)]
        return handles

    modes = {m: m.training for m in (*reference.modules(), *small.modules())}
    reference.eval()
    small.eval()
    handles = hooks(reference, "ref") + hooks(small, "small")
    from torch.utils._pytree import tree_leaves

    def flat(out: Any) -> torch.Tensor:  # a dict or tuple of outputs (segmentation, detection)
        return torch.cat([t.detach().float().cpu().flatten() for t in tree_leaves(out)
                          if torch.is_tensor(t)])

    try:
        ref = flat(reference(x.to(device)))
        entered.clear()
        try:
            out = flat(small(x))
        except Exception as exc:  # noqa: BLE001 - a broken compact network: say where
            where = entered[-1] if entered else type(small).__name__
            raise CompactionError(f"compaction broke the network at {where}: "
                                  f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
                                  ) from None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    scale = max(1.0, float(ref.abs().max()))
    diff = float((ref - out).abs().max()) if ref.shape == out.shape else float("inf")
    if diff <= TOLERANCE * scale:
        return diff
    first = next((n for n, t in traces["ref"].items() if n in traces["small"]
                  and traces["small"][n].shape == t.shape
                  and float((traces["small"][n] - t).abs().max())
                  > TOLERANCE * max(1.0, float(t.abs().max()))), "the output")
    raise CompactionError(f"the compact network differs from the masked one (max |diff| "
                          f"{diff:.3g}, outputs up to {scale:.3g}), first at {first}; "
                          f"this network's channel structure is not understood here")


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
    ``model_config``, the run's model config, rebuilds any other model (torchvision, timm,
    custom). ``python -m prunelab.measure`` and ``python -m prunelab.export compact=true`` write
    their ``model_compact.pt`` this way."""
    from prunelab.files import save_torch_atomic

    path = Path(path)
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.items()}
    sizes = {}  # norms without tensors: their sizes are not in the state_dict
    for name, m in net.named_modules():
        if getattr(m, "weight", None) is None and getattr(m, "running_mean", None) is None:
            if isinstance(m, nn.GroupNorm):
                sizes[name] = {"num_groups": m.num_groups, "num_channels": m.num_channels}
            elif isinstance(m, CHANNEL_NORMS):
                sizes[name] = {"num_features": m.num_features}
    save_torch_atomic({"state_dict": net.state_dict(), "compact": True, "sizes": sizes, **meta},
                      path)
    return path


def resize_to(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Shrink ``model``'s layers (Conv, Linear, norms, attention heads) to the shapes in
    ``state_dict`` (in place; ``load_state_dict`` then accepts it); the modules shrunk."""
    shrunk = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        resized = False
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
            resized = True
        if resized:
            sync_shape(m)
            shrunk.append(name)
        if getattr(type(m), "prunable_heads", False):
            m.num_heads = m.qkv.weight.shape[0] // (3 * int(m.head_dim))
    return shrunk


def load_compact(path: str | Path) -> nn.Module:
    """A model saved by :func:`save_compact` with its weights, in eval mode (a file that is not
    such a checkpoint: a one-line :class:`CompactionError`)."""
    model, ckpt, _ = compact_architecture(path)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def compact_architecture(path: str | Path) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """The architecture saved by :func:`save_compact`: the model rebuilt (registry, or its
    ``model_config``: torchvision, timm, custom; weights not fetched) and shrunk to the saved
    shapes, the checkpoint, and the modules shrunk (uninitialized until a state is loaded)."""
    from prunelab.models import build_from_config, build_model

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input here
        raise CompactionError(f"{str(path)!r} is not a readable compact checkpoint "
                              f"({type(exc).__name__}); prunelab loads it with "
                              f"weights_only=True") from None
    if not isinstance(ckpt, dict) or not ckpt.get("compact") or "state_dict" not in ckpt:
        raise CompactionError(f"{str(path)!r} is not a compact checkpoint (written by "
                              f"prunelab.compress.compact.save_compact)")
    shape, classes = tuple(ckpt.get("input_shape") or ()), int(ckpt.get("num_classes") or 0)
    if ckpt.get("model"):
        model = build_model(ckpt["model"], input_shape=shape, num_classes=classes,
                            **(ckpt.get("model_kwargs") or {}))
    elif isinstance(ckpt.get("model_config"), dict):  # weights: none read from a cache
        model = build_from_config({**ckpt["model_config"], "weights": None}
                                  if "weights" in ckpt["model_config"] else ckpt["model_config"],
                                  shape, classes)
    else:
        raise CompactionError(f"{str(path)!r} names no model to rebuild (neither a registered "
                              f"model nor a model_config); load its state_dict into the network "
                              f"yourself (resize_to, then load_state_dict)")
    shrunk = resize_to(model, ckpt["state_dict"])
    for name, attrs in (ckpt.get("sizes") or {}).items():
        for attr, value in attrs.items():
            setattr(model.get_submodule(name), attr, int(value))
    return model, ckpt, shrunk
