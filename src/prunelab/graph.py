"""The channel structure of a network: which channels must be kept or removed together.

Below both :mod:`prunelab.pruning` (structured pruning scores and keeps tied channels together)
and :mod:`prunelab.compress` (compaction removes dead channels). The network is traced with
``torch.fx`` and every tensor's channel dimension is assigned a *channel group*: a Conv or Linear
starts a new group (its output channels); BatchNorm, activations that map 0 to 0, pooling and
dropout keep it; ``flatten`` keeps it with ``H*W`` features per channel (the Flatten-to-Linear
boundary); a residual addition ties the groups of its operands into one. Groups that reach the
network's input or output, or an operation not known to keep zeros (a Sigmoid, a concatenation,
a grouped convolution), are *fixed*: left whole.

:func:`coupled_parameters` is the simpler, trace-free coupling used by structured masks: a
layer's bias and the BatchNorm that follows it share its output channels.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from prunelab.errors import UserError

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


class GraphError(UserError):
    """A network whose channel structure cannot be traced (one-line message)."""


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
        raise GraphError(f"{type(model).__name__} cannot be traced by torch.fx "
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


def _following_norms(model: nn.Module) -> dict[str, str]:
    """Layer name -> the BatchNorm right after it in module order that normalizes its outputs."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    out = {}
    for (name, mod), (nxt_name, nxt) in zip(leaves, leaves[1:]):
        width = getattr(mod, "out_channels", getattr(mod, "out_features", None))
        if isinstance(nxt, nn.modules.batchnorm._BatchNorm) and nxt.num_features == width:
            out[name] = nxt_name
    return out


def coupled_parameters(model: nn.Module, weight_names: list[str]) -> dict[str, list[str]]:
    """For each prunable weight, the parameters whose entries belong to the same output channel:
    its layer's bias and the affine weight and bias of the BatchNorm that follows it."""
    params = dict(model.named_parameters())
    norms = _following_norms(model)
    out = {}
    for wname in weight_names:
        mod_name = wname.rsplit(".", 1)[0] if "." in wname else ""
        names = [f"{mod_name}.bias"] if f"{mod_name}.bias" in params else []
        bn = norms.get(mod_name)
        if bn is not None:
            names += [f"{bn}.{p}" for p in ("weight", "bias") if f"{bn}.{p}" in params]
        out[wname] = names
    return out
