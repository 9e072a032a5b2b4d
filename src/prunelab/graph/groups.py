"""The vocabulary of channel structure: channel groups, the operations the tracer knows, the
rows an attention head owns, and the trace-free coupling of an untraceable network."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunelab.errors import UserError

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Per-channel normalizations (one statistic per channel): members of the channels' groups.
CHANNEL_NORMS = (*NORMS, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
#: Modules that work per element or per channel and map a zero channel to zero.
KEEP_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh,
                     nn.Hardswish, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softsign,
                     nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                     nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                     nn.AdaptiveMaxPool3d, nn.Identity, nn.Upsample, nn.ZeroPad2d)
#: Element-wise modules that turn a zero into something else (the channel is kept, not zero).
NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
KEEP_ZERO_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.gelu, F.silu,
                       F.hardswish, F.leaky_relu, F.elu, F.mish, torch.tanh, F.hardtanh,
                       F.dropout, F.dropout2d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
                       F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                       F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                       F.adaptive_max_pool2d, F.interpolate, torch.clone}
KEEP_ZERO_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone", "float", "to", "type_as",
                     "detach"}
#: Functions (by name) that scale whole samples: stochastic depth / drop path (torchvision, timm)
SAMPLE_SCALING = {"stochastic_depth", "drop_path"}
NONZERO_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus}
NONZERO_METHODS = {"sigmoid", "sigmoid_"}
ADDS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub,
        "add", "add_", "sub", "sub_", "__add__", "__radd__", "__iadd__", "__sub__"}
MULS = {operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__"}
DIVS = {operator.truediv, torch.div, "div", "div_", "__truediv__"}
CATS = {torch.cat, torch.concat}
REDUCTIONS = {"mean", "sum", "amax", torch.mean, torch.sum, torch.amax}


#: Operators that write into their first operand (``x += y``)
INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def keeps_zero(mod: nn.Module) -> bool:
    """Whether one of KEEP_ZERO_MODULES maps 0 to 0 (a clamp only with 0 in its range)."""
    return not isinstance(mod, nn.Hardtanh) or mod.min_val <= 0 <= mod.max_val


def has_channel_tensors(mod: nn.Module) -> bool:
    return isinstance(mod, (*CONVS, nn.Linear, *CHANNEL_NORMS, nn.GroupNorm)) or bool(
        getattr(type(mod), "prunable_heads", False))


def is_heads_module(module: nn.Module) -> bool:
    return bool(getattr(type(module), "prunable_heads", False))


class GraphError(UserError):
    """A network whose channel structure cannot be traced (one-line message)."""


@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together.

    ``producers``: Conv/Linear modules whose output rows these channels are; ``members``:
    ``(module, offset)`` of per-channel modules (BatchNorm, depthwise convolutions) on them;
    ``consumers``: ``(module, features per channel, offset)``, a channel ``c`` being the input
    columns ``(offset + c) * per ... + per - 1``; ``followers``: producers whose rows go with
    the channels whatever their values (a squeeze-and-excitation gate); ``heads``: attention
    modules whose heads these are (a heads group has nothing else)."""

    size: int
    producers: list[str] = field(default_factory=list)
    members: list[tuple[str, int]] = field(default_factory=list)
    consumers: list[tuple[str, int, int]] = field(default_factory=list)
    followers: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    fixed: bool = False
    zero_safe: bool = True  # no operation between producers and consumers turns a zero into a value

    @property
    def prunable(self) -> bool:
        """Whether structured pruning may select its channels (and compaction remove them)."""
        return not self.fixed and (bool(self.producers) or bool(self.heads)) and self.size > 1


@dataclass(frozen=True)
class Space:
    """A tensor's channel dimension: its groups (id, size) in order, where it is, features per
    channel, and whether a dead channel is zero in it."""

    segs: tuple[tuple[int, int], ...]
    dim: int
    ndim: int
    per: int = 1
    zero: bool = True

    @property
    def size(self) -> int:
        return sum(n for _, n in self.segs)

    def offsets(self) -> list[tuple[int, int]]:
        """(group id, offset) of each segment."""
        out, off = [], 0
        for gid, n in self.segs:
            out.append((gid, off))
            off += n
        return out


class UnionFind:
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

    def get(self, i: int) -> ChannelGroup:
        return self.info[self.find(i)]

    def union(self, a: int, b: int, follow: bool = False) -> int:
        """One group of ``a`` and ``b``; ``follow``: ``b`` is a gate whose producers follow."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        ia, ib = self.info[a], self.info[b]
        if follow:
            ia.followers += ib.producers + ib.followers
            if ib.members or ib.consumers or ib.heads:  # the gate's values are read elsewhere
                ia.fixed = True
        else:
            ia.producers += ib.producers
            ia.members += ib.members
            ia.consumers += ib.consumers
            ia.followers += ib.followers
            ia.heads += ib.heads
            ia.zero_safe = ia.zero_safe and ib.zero_safe
        ia.fixed = ia.fixed or ib.fixed or ia.size != ib.size
        self.parent[b] = a
        return a


def head_rows(mod: nn.Module, heads: torch.Tensor) -> torch.Tensor:
    """The query, key and value rows of ``qkv`` that ``heads`` own."""
    d, inner = int(mod.head_dim), int(mod.num_heads) * int(mod.head_dim)
    per_head = (heads[:, None] * d + torch.arange(d)[None, :]).flatten()
    return torch.cat([per_head + p * inner for p in range(3)])


def head_columns(mod: nn.Module, heads: torch.Tensor) -> torch.Tensor:
    d = int(mod.head_dim)
    return (heads[:, None] * d + torch.arange(d)[None, :]).flatten()


def numel(shape: Sequence[int] | None) -> int:
    n = 1
    for s in shape or ():
        n *= int(s)
    return n


def flat_nodes(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: found.append(n) or n)
    return found


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
    its layer's bias and the affine weight and bias of the BatchNorm that follows it in module
    order (the trace-free coupling used for a network torch.fx cannot trace)."""
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
