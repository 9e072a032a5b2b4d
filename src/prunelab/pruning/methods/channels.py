"""Channel bookkeeping shared by the structured methods (score-then-select with
``granularity=structured``, and latency-aware pruning).

- :class:`ChannelLayout`: per prunable weight, the bias / BatchNorm parameters indexed by its
  output channels (masked with it), the output layer's weights (never pruned: its channels are
  the classes) and the weights whose output channels a residual addition ties together (kept or
  removed as one unit). Found from the model's modules and its traced graph
  (:mod:`prunelab.graph`).
- :func:`select_structured`: whole-channel masks at a cumulative target from element scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.graph import GraphError, channel_groups, coupled_parameters
from prunelab.pruning.granularity import (
    channel_keep,
    channel_norms,
    channel_sums,
    expand_channels,
    select_channels,
)


@dataclass
class ChannelLayout:
    """What structured pruning must know about a model's prunable weights."""

    coupled: dict[str, dict[str, nn.Parameter]] = field(default_factory=dict)
    protected: frozenset[str] = frozenset()
    tied: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module, params: Mapping[str, nn.Parameter],
           tied: dict[str, list[str]] | None = None) -> ChannelLayout:
        """The layout of ``model`` for the prunable ``params``; ``tied``: reuse a traced result
        (tracing is the slow part and does not change when parameters move)."""
        named = dict(model.named_parameters())
        coupled = {w: {c: named[c] for c in cs}
                   for w, cs in coupled_parameters(model, list(params)).items()}
        return cls(coupled, frozenset(output_weights(model, params)),
                   tied if tied is not None else tied_channels(model, list(params)))

    def reach(self, params: Mapping[str, torch.Tensor]) -> float:
        """The highest sparsity whole channels can reach: all but one channel of every layer
        outside the protected output layer."""
        total = sum(p.numel() for p in params.values())
        removable = sum(p.numel() - p[0].numel() for n, p in params.items()
                        if n not in self.protected)
        return removable / total


def output_weights(model: nn.Module, params: Mapping[str, nn.Parameter]) -> list[str]:
    """The prunable weights of the model's output layer (none when it has no known one)."""
    from prunelab.models import output_layer_name

    try:
        out = output_layer_name(model)
    except (AttributeError, ValueError):
        return []
    return [n for n in params if n.rsplit(".", 1)[0] == out]


def tied_channels(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """Prunable weights whose output channels a residual addition ties together (found by
    tracing the model; ``{first weight: [weights]}``). Empty when the model has no
    ``input_shape`` or cannot be traced."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return {}
    try:
        groups = channel_groups(model, tuple(shape))
    except GraphError:
        return {}
    known = set(names)
    out = {}
    for g in groups:
        weights = [f"{p}.weight" for p in g.producers]
        if len(weights) > 1 and not g.fixed and set(weights) <= known:
            out[weights[0]] = weights
    return out


def select_structured(params: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                      old_masks: Mapping[str, torch.Tensor], target: float, scope: str,
                      layout: ChannelLayout, norm: int | None) -> dict[str, torch.Tensor]:
    """Element masks removing whole output channels at the cumulative ``target``.

    A channel's score is the L``norm`` norm of its element scores, or their sum when ``norm`` is
    ``None``. Channels tied by a residual addition form one unit, scored over all of its layers'
    weights of that channel (the norm over them all, or the sum) and kept or removed together.
    Global scope compares a per-weight value: the norm / size^(1/p), or the sum / size.
    """
    sizes = {n: params[n][0].numel() for n in params}
    if norm is None:
        ch = {n: channel_sums(scores[n]) for n in params}
    else:
        ch = {n: channel_norms(scores[n], norm) for n in params}
    total = sum(p.numel() for p in params.values())
    units = {u: names for u, names in layout.tied.items() if set(names) <= set(params)}
    tied = {n for names in units.values() for n in names}
    units.update({n: [n] for n in params if n not in tied})
    pw = float(norm or 1)
    u_ch, u_sizes, u_norm, u_old = {}, {}, {}, {}
    for u, names in units.items():
        u_ch[u] = (sum(ch[n] for n in names) if norm is None
                   else sum(ch[n] ** pw for n in names) ** (1.0 / pw))
        u_sizes[u] = sum(sizes[n] for n in names)
        u_norm[u] = float(u_sizes[u]) if norm is None else u_sizes[u] ** (1.0 / pw)
        k = channel_keep(old_masks[names[0]])
        for n in names[1:]:
            k = k & channel_keep(old_masks[n])
        u_old[u] = k
    protected = frozenset(u for u, names in units.items() if set(names) & layout.protected)
    keep = select_channels(u_ch, u_old, target, scope, u_sizes, total, protected, u_norm)
    return {n: expand_channels(keep[u], params[n].shape)
            for u, names in units.items() for n in names}
