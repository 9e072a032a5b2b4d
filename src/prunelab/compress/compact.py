"""Compaction: a structured-pruned network becomes a physically smaller ``nn.Module``.

Zeros in a dense tensor buy nothing on a CPU; removing the channels they belong to does. The
network is traced with ``torch.fx`` and every tensor's channel dimension is assigned a *channel
group*: a Conv or Linear starts a new group (its output channels); BatchNorm, activations that
map 0 to 0, pooling and dropout keep it; ``flatten`` keeps it with ``H*W`` features per channel
(the Flatten-to-Linear boundary); a residual addition ties the groups of its operands into one.
A channel of a group can go when its output is exactly zero everywhere it is produced:

- every producer (Conv/Linear whose output channels the group is) has an all-zero weight row
  and a zero bias;
- every BatchNorm on the group maps zero to zero (bias 0, and weight 0 or running mean 0).

Removing it deletes the producers' rows, the BatchNorm entries and the consumers' matching input
columns (``H*W`` columns each after a flatten), so the compact network computes the same
function. Groups that reach the network's input or output, or an operation not known to keep
zeros (a Sigmoid, a concatenation, a grouped convolution), are left whole.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Modules that keep the channel dimension and map an all-zero channel to zero.
KEEP_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh,
                     nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d,
                     nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveMaxPool2d, nn.Identity)
KEEP_ZERO_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.tanh, F.dropout,
                       F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
KEEP_ZERO_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone"}
ADDS = {operator.add, operator.iadd, torch.add}


class CompactionError(ValueError):
    """A network or run that cannot be compacted (one-line message)."""


@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together."""

    size: int
    producers: list[str] = field(default_factory=list)  # Conv/Linear producing these channels
    norms: list[str] = field(default_factory=list)  # BatchNorms on these channels
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (layer, inputs per channel)
    fixed: bool = False  # reaches the input, the output or an unknown operation


class _Groups:
    """Union-find over channel-group ids."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.info: list[ChannelGroup] = []

    def new(self, size: int, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.info.append(ChannelGroup(size=size, fixed=fixed))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        ia, ib = self.info[a], self.info[b]
        if ia.size != ib.size:
            ia.fixed = True
        ia.producers += ib.producers
        ia.norms += ib.norms
        ia.consumers += ib.consumers
        ia.fixed = ia.fixed or ib.fixed
        self.parent[b] = a
        return a

    def get(self, i: int) -> ChannelGroup:
        return self.info[self.find(i)]


def channel_groups(model: nn.Module, input_shape: Sequence[int]) -> list[ChannelGroup]:
    """The channel groups of ``model`` (traced with ``torch.fx`` on a batch of ``input_shape``)."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: cannot compact
        raise CompactionError(f"{type(model).__name__} cannot be traced by torch.fx "
                              f"({type(exc).__name__}: {exc}); compaction needs a traceable "
                              f"network") from None
    modules = dict(gm.named_modules())
    was_training = gm.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
    gm.train(was_training)
    groups = _Groups()
    space: dict[fx.Node, tuple[int, int]] = {}  # node -> (group id, features per channel)

    def shape(node: Any) -> tuple[int, ...] | None:
        meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def fix(node: Any) -> None:
        if isinstance(node, fx.Node) and node in space:
            groups.get(space[node][0]).fixed = True

    def new_fixed(node: fx.Node) -> None:
        s = shape(node)
        if s is not None and len(s) >= 2:
            space[node] = (groups.new(s[1], fixed=True), 1)

    def keep(node: fx.Node, src: Any) -> None:
        if isinstance(src, fx.Node) and src in space:
            space[node] = space[src]
        else:
            new_fixed(node)

    for node in gm.graph.nodes:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if node.op == "placeholder":
            new_fixed(node)
        elif node.op == "output":
            for a in _flat_nodes(node.args):
                fix(a)
        elif node.op == "call_module":
            mod = modules[node.target]
            src = node.args[0] if node.args else None
            if isinstance(mod, LAYERS) and getattr(mod, "groups", 1) == 1 and src in space:
                gid, per = space[src]
                groups.get(gid).consumers.append((node.target, per))
                out = shape(node)
                space[node] = (groups.new(out[1] if out else mod.weight.shape[0]), 1)
                groups.get(space[node][0]).producers.append(node.target)
            elif isinstance(mod, NORMS) and src in space:
                space[node] = space[src]
                groups.get(space[node][0]).norms.append(node.target)
            elif isinstance(mod, KEEP_ZERO_MODULES):
                keep(node, src)
            elif isinstance(mod, nn.Flatten) and mod.start_dim == 1:
                _flatten(node, src, space, shape, new_fixed)
            else:
                for a in args:
                    fix(a)
                new_fixed(node)
        elif node.op in ("call_function", "call_method"):
            target = node.target
            src = node.args[0] if node.args else None
            if target in ADDS or target in ("add", "add_", "__add__"):
                tensors = [a for a in args if a in space]
                if len(tensors) == 2 and space[tensors[0]][1] == space[tensors[1]][1]:
                    gid = groups.union(space[tensors[0]][0], space[tensors[1]][0])
                    space[node] = (gid, space[tensors[0]][1])
                else:
                    for a in args:
                        fix(a)
                    new_fixed(node)
            elif target in KEEP_ZERO_FUNCTIONS or target in KEEP_ZERO_METHODS:
                keep(node, src)
            elif target in (torch.flatten, "flatten") and _flatten_start(node) == 1:
                _flatten(node, src, space, shape, new_fixed)
            else:
                for a in args:
                    fix(a)
                new_fixed(node)
        elif node.op == "get_attr":
            new_fixed(node)
    seen, out = set(), []
    for i in range(len(groups.parent)):
        r = groups.find(i)
        if r not in seen:
            seen.add(r)
            out.append(groups.info[r])
    return out


def _flat_nodes(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: found.append(n) or n)
    return found


def _flatten_start(node: fx.Node) -> int:
    if len(node.args) > 1:
        return int(node.args[1])
    return int(node.kwargs.get("start_dim", 0))


def _flatten(node, src, space, shape, new_fixed) -> None:
    s = shape(src)
    if src in space and s is not None and len(s) >= 2:
        gid, per = space[src]
        factor = 1
        for d in s[2:]:
            factor *= int(d)
        space[node] = (gid, per * factor)
    else:
        new_fixed(node)


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
        w_zero = (bn.weight.detach() == 0).cpu() if bn.weight is not None else \
            torch.zeros(group.size, dtype=torch.bool)
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


# -- saving and loading ------------------------------------------------------------------------------
def save_compact(net: nn.Module, path: str | Path, **meta: Any) -> Path:
    """An ordinary checkpoint: ``{"state_dict", **meta}``; ``meta`` should name how to build the
    dense model (``model``: registry name, ``input_shape``, ``num_classes``, ``model_kwargs``)."""
    path = Path(path)
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in meta.items()}
    torch.save({"state_dict": net.state_dict(), "compact": True, **meta}, path)
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
    """Rebuild a model saved by :func:`save_compact` (through the model registry)."""
    from prunelab.models import build_model

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ckpt["model"], input_shape=tuple(ckpt["input_shape"]),
                        num_classes=int(ckpt["num_classes"]), **(ckpt.get("model_kwargs") or {}))
    resize_to(model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"])
    return model
