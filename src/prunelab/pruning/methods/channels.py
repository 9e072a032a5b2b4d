"""Channel bookkeeping shared by the structured methods (score-then-select with
``granularity=structured``, and latency-aware pruning).

- :class:`ChannelLayout`: the *units* structured pruning keeps or removes whole: the prunable
  channel groups of the traced network (:mod:`prunelab.graph`: channels tied by residual
  additions, concatenations, depthwise convolutions, squeeze-and-excitation gates; attention
  heads), each with the rows of the prunable weights its channels own, and the 1-D parameters
  (biases, BatchNorm) that follow those rows. Only what compaction can remove is a unit, so a
  masked network and its compact twin always agree; the output layer (its channels are the
  classes) never is. A network torch.fx cannot trace falls back to one unit per prunable
  weight (its bias and the BatchNorm after it in module order follow it).
- :func:`select_structured`: whole-unit-channel masks at a cumulative target from element scores;
  :func:`select_unit_ratios`: each unit to its own channel ratio (a searched or profiled policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.graph import (
    ChannelGroup,
    GraphError,
    channel_groups,
    coupled_parameters,
    head_rows,
)
from prunelab.pruning.granularity import channel_keep, select_channels
from prunelab.pruning.masks import Coupled, MaskSet


@dataclass
class Unit:
    """Channels kept or removed together: channel ``c`` is rows ``rows[c]`` of each weight."""

    size: int
    rows: dict[str, torch.Tensor] = field(default_factory=dict)  # weight -> [size, width] rows

    def elements(self, params: Mapping[str, torch.Tensor]) -> int:
        """Weight elements one channel of the unit holds."""
        return sum(r.shape[1] * params[w][0].numel() for w, r in self.rows.items())


@dataclass
class ChannelLayout:
    """What structured pruning must know about a model's prunable weights."""

    units: list[Unit] = field(default_factory=list)
    coupled: dict[str, Coupled] = field(default_factory=dict)
    protected: frozenset[str] = frozenset()
    groups: list[ChannelGroup] | None = None  # the traced groups (None: not traceable)

    @classmethod
    def of(cls, model: nn.Module, params: Mapping[str, nn.Parameter],
           groups: list[ChannelGroup] | None = None) -> ChannelLayout:
        """The layout of ``model`` for the prunable ``params``; ``groups``: reuse a traced result
        (tracing is the slow part and does not change when parameters move)."""
        protected = frozenset(output_weights(model, params))
        if groups is None:
            shape = getattr(model, "input_shape", None)
            try:
                groups = channel_groups(model, tuple(shape)) if shape is not None else None
            except GraphError:
                groups = None
        if groups is None:
            return cls._untraced(model, params, protected)
        layout = cls(protected=protected, groups=groups)
        named = dict(model.named_parameters())
        modules = dict(model.named_modules())
        for g in groups:
            if g.prunable:
                layout._add_group(g, params, named, modules)
        return layout

    @classmethod
    def _untraced(cls, model: nn.Module, params: Mapping[str, nn.Parameter],
                  protected: frozenset[str]) -> ChannelLayout:
        named = dict(model.named_parameters())
        layout = cls(protected=protected)
        for w, coupled in coupled_parameters(model, list(params)).items():
            if w in protected:
                continue
            rows = torch.arange(params[w].shape[0])
            layout.units.append(Unit(len(rows), {w: rows[:, None]}))
            for c in coupled:
                layout.coupled.setdefault(c, Coupled(named[c])).follow(w, rows, rows)
        return layout

    @classmethod
    def per_weight(cls, params: Mapping[str, torch.Tensor]) -> ChannelLayout:
        """One unit per weight, nothing coupled or protected (a method not bound to a model)."""
        return cls(units=[Unit(p.shape[0], {w: torch.arange(p.shape[0])[:, None]})
                          for w, p in params.items()])

    def _add_group(self, g: ChannelGroup, params: Mapping[str, nn.Parameter],
                   named: dict[str, nn.Parameter], modules: dict[str, nn.Module]) -> None:
        idx = torch.arange(g.size)
        if not g.heads and (not g.zero_safe or any(
                getattr(modules[m], "running_mean", None) is not None
                and getattr(modules[m], "weight", None) is None for m, _ in g.members)):
            return  # masks cannot zero these channels (a sigmoid on the way, a BatchNorm
            # without affine parameters): compaction could not remove what they prune
        if g.heads:
            rows = {}
            for name in g.heads:
                w = f"{name}.qkv.weight"
                if w not in params or w in self.protected:
                    return
                rows[w] = torch.stack([head_rows(modules[name], idx[h:h + 1]) for h in idx])
            unit = Unit(g.size, rows)
        else:
            weights = [f"{p}.weight" for p in g.producers]
            if any(w not in params or w in self.protected for w in weights):
                return  # a producer that is not pruned keeps the channels alive
            unit = Unit(g.size, {w: idx[:, None] for w in weights})
            for name in g.followers:
                if f"{name}.weight" in params:
                    unit.rows[f"{name}.weight"] = idx[:, None]
            for name, off in g.members:
                if f"{name}.weight" in params:  # a depthwise convolution
                    unit.rows[f"{name}.weight"] = (idx + off)[:, None]
        self.units.append(unit)
        anchor, anchor_rows = next(iter(unit.rows.items()))
        first_rows = anchor_rows[:, 0]
        for w, r in unit.rows.items():  # each weight's bias follows its own rows
            b = w[:-len("weight")] + "bias"
            if b in named and b not in params:
                self.coupled.setdefault(b, Coupled(named[b])).follow(w, r.flatten(), r.flatten())
        for name, off in ([] if g.heads else g.members):
            for attr in ("weight", "bias"):
                pname = f"{name}.{attr}"
                if pname in named and named[pname].dim() == 1 and pname not in params and pname not in (
                        w[:-len("weight")] + "bias" for w in unit.rows):
                    self.coupled.setdefault(pname, Coupled(named[pname])).follow(
                        anchor, first_rows, idx + off)

    def reach(self, params: Mapping[str, torch.Tensor]) -> float:
        """The highest sparsity whole channels can reach: all but one channel of every unit."""
        total = sum(p.numel() for p in params.values())
        removable = sum((u.size - 1) * u.elements(params) for u in self.units)
        return removable / total


def output_weights(model: nn.Module, params: Mapping[str, nn.Parameter]) -> list[str]:
    """The prunable weights of the model's output layer (none when it has no known one)."""
    from prunelab.models import output_layer_name

    try:
        out = output_layer_name(model)
    except (AttributeError, ValueError):
        return []
    return [n for n in params if n.rsplit(".", 1)[0] == out]


def unit_keep(unit: Unit, masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Channels of ``unit`` that keep an element in every one of its weights' rows."""
    keep = None
    for w, rows in unit.rows.items():
        k = channel_keep(masks[w])[rows.to(masks[w].device)].any(1)
        keep = k if keep is None else keep & k
    return keep


def unit_masks(layout: ChannelLayout, keeps: Mapping[int, torch.Tensor],
               old_masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element masks from per-unit channel keeps (unit index -> bool per channel): the dropped
    channels' rows go in every weight of the unit; old zeros stay."""
    out = {n: m.clone() for n, m in old_masks.items()}
    for ui, keep in keeps.items():
        unit = layout.units[ui]
        drop = (~keep).cpu()
        for w, rows in unit.rows.items():
            gone = rows[drop].flatten().to(out[w].device)
            out[w][gone] = False
    return out


def prune_fraction(model: nn.Module, fraction: float) -> tuple[ChannelLayout, MaskSet]:
    """``model``'s prunable weights masked (in place) without ``fraction`` of every unit's
    channels, those of lowest L1 norm over all the unit's rows: "remove x % of the channels of
    every group", as Torch-Pruning's per-group ratio does (the benchmark and the compaction
    matrix use it). Returns the layout and the applied masks."""
    from prunelab.pruning.params import prunable_parameters

    params = prunable_parameters(model)
    layout = ChannelLayout.of(model, params)
    masks = MaskSet(params, layout.coupled)
    old = masks.as_dict()
    keeps = {}
    for i, unit in enumerate(layout.units):
        score = torch.zeros(unit.size)
        for w, rows in unit.rows.items():
            norms = params[w].detach().abs().reshape(params[w].shape[0], -1).sum(1).cpu()
            score += norms[rows].sum(1)
        keep = unit_keep(unit, old).cpu().clone()
        keep[torch.argsort(score)[:int(fraction * unit.size)]] = False
        keeps[i] = keep
    masks.update(unit_masks(layout, keeps, old))
    masks.apply_()
    return layout, masks


def unit_scores(unit: Unit, scores: Mapping[str, torch.Tensor], norm: int | None) -> torch.Tensor:
    """Per channel of ``unit``: the L``norm`` norm of its element scores over all its rows, or
    their sum when ``norm`` is None."""
    pw = float(norm or 1)
    ch = torch.zeros(unit.size)
    for w, rows in unit.rows.items():
        flat = scores[w].detach().float().reshape(scores[w].shape[0], -1).cpu()
        per_row = flat.sum(1) if norm is None else flat.abs().pow(pw).sum(1)
        ch += per_row[rows].sum(1)
    return ch if norm is None else ch.pow(1.0 / pw)


def select_structured(params: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                      old_masks: Mapping[str, torch.Tensor], target: float, scope: str,
                      layout: ChannelLayout, norm: int | None) -> dict[str, torch.Tensor]:
    """Element masks removing whole unit channels at the cumulative ``target``.

    A channel's score is the L``norm`` norm of the element scores of all its rows (in every
    weight of its unit), or their sum when ``norm`` is ``None``; global scope compares a
    per-weight value: the norm / size^(1/p), or the sum / size."""
    units = {i: u for i, u in enumerate(layout.units) if set(u.rows) <= set(params)}
    total = sum(p.numel() for p in params.values())
    pw = float(norm or 1)
    u_ch, u_sizes, u_norm, u_old = {}, {}, {}, {}
    for i, u in units.items():
        u_ch[i] = unit_scores(u, scores, norm)
        u_sizes[i] = u.elements(params)
        u_norm[i] = float(u_sizes[i]) if norm is None else u_sizes[i] ** (1.0 / pw)
        u_old[i] = unit_keep(u, old_masks).cpu()
    keep = select_channels(u_ch, u_old, target, scope, u_sizes, total, frozenset(), u_norm)
    return unit_masks(layout, keep, old_masks)


def select_unit_ratios(params: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                       old_masks: Mapping[str, torch.Tensor], ratios: Mapping[str, float],
                       layout: ChannelLayout, norm: int = 1) -> dict[str, torch.Tensor]:
    """Element masks removing from each unit ``round(ratio * size)`` channels (at least those
    already removed, at most all but one) with the smallest L``norm`` norm of their element
    scores; a unit's ratio is the largest that ``ratios`` gives any of its weights (0: none)."""
    keeps = {}
    for i, u in enumerate(layout.units):
        if not set(u.rows) <= set(params):
            continue
        ratio = max((float(ratios.get(w, 0.0)) for w in u.rows), default=0.0)
        old = unit_keep(u, old_masks).cpu()
        k = min(u.size - 1, max(int(round(ratio * u.size)), int((~old).sum())))
        if k <= int((~old).sum()):
            continue
        ch = unit_scores(u, scores, norm)
        order = torch.sort(ch.masked_fill(~old, float("-inf")), stable=True).indices
        keep = torch.ones(u.size, dtype=torch.bool)
        keep[order[:k]] = False
        keeps[i] = keep
    return unit_masks(layout, keeps, old_masks)
