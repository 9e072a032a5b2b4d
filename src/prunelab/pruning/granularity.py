"""Structured (channel / neuron) and N:M selection: pure functions on scores and masks.

Structured: a *channel* is one output unit of a layer (``weight[c]``: an output channel of a
Conv, a neuron of a Linear). Its score is a reduction of its elements' scores; whole channels are
kept or dropped, never the last one of a layer, and layers named ``protected`` (the output layer:
its channels are the classes) are never touched. ``target`` keeps its one meaning: the fraction
of all prunable weights that are zero.

N:M: in every group of ``m`` consecutive input weights (along the input dimension: ``in_features``
of a Linear, ``in_channels`` of a Conv, for each output unit and kernel position) keep the ``n``
largest scores.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


# -- structured -----------------------------------------------------------------------------------
def channel_norms(elem_scores: torch.Tensor, norm: int = 1) -> torch.Tensor:
    """Per output channel, the L``norm`` norm of its element scores (magnitude criteria: the
    channel's weights' L1 or L2 norm)."""
    flat = elem_scores.detach().float().reshape(elem_scores.shape[0], -1)
    return flat.abs().pow(norm).sum(1).pow(1.0 / norm)


def channel_sums(elem_scores: torch.Tensor) -> torch.Tensor:
    """Per output channel, the sum of its element scores (gradient and random criteria)."""
    return elem_scores.detach().float().reshape(elem_scores.shape[0], -1).sum(1)


def channel_keep(mask: torch.Tensor) -> torch.Tensor:
    """Channels with any kept element (bool, one per output channel)."""
    return mask.reshape(mask.shape[0], -1).any(1)


def expand_channels(keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """An element mask of ``shape`` from a per-output-channel keep vector."""
    view = (-1,) + (1,) * (len(shape) - 1)
    return keep.reshape(view).expand(shape).clone()


def select_channels(scores: Mapping[str, torch.Tensor], old_keep: Mapping[str, torch.Tensor],
                    target: float, scope: str, channel_sizes: Mapping[str, int],
                    total_elements: int, protected: frozenset[str] = frozenset(),
                    normalizers: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Per-channel keep vectors so that ``round(target * total_elements)`` weights are zero, as
    closely as whole channels allow (within one channel of the smallest eligible layer for global
    scope, one channel per layer for layer scope).

    Old pruned channels stay pruned; the last channel of a layer is never pruned; ``protected``
    layers keep all their channels (their weights still count in ``total_elements``). Global scope
    compares ``score / normalizers[layer]`` (default: the channel size, so that layers of
    different fan-in compare), ties broken by layer order then index. A target that whole
    channels cannot reach (every eligible layer down to one channel) raises ``ValueError``.
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity {target} outside [0, 1)")
    names = [n for n in scores if n not in protected]
    out = {n: old_keep[n].clone() for n in scores}
    goal = int(round(target * total_elements))
    if not names or goal == 0:
        return out
    eligible = sum(channel_sizes[n] * old_keep[n].numel() for n in names)
    keepable = sum(channel_sizes[n] for n in names)  # one channel per eligible layer stays
    if goal > eligible - keepable:
        raise ValueError(f"target sparsity {target} cannot be reached by whole channels: the "
                         f"output layer and one channel per layer stay")
    if scope == "layer":
        ratio = min(1.0, goal / eligible)
        for n in names:
            c = old_keep[n].numel()
            k = min(c - 1, max(int(round(ratio * c)), int((~old_keep[n]).sum())))
            s = scores[n].float().masked_fill(~old_keep[n], float("-inf"))
            order = torch.sort(s, stable=True).indices
            keep = torch.ones(c, dtype=torch.bool, device=old_keep[n].device)
            keep[order[:k]] = False
            out[n] = keep
        return out
    if scope != "global":
        raise ValueError(f"unknown scope {scope!r}; allowed: layer, global")
    entries = []  # (score, layer index, channel index)
    pruned = 0
    alive = {}
    for li, n in enumerate(names):
        keep = old_keep[n]
        alive[n] = int(keep.sum())
        pruned += int((~keep).sum()) * channel_sizes[n]
        s = scores[n].float() / (normalizers[n] if normalizers is not None else channel_sizes[n])
        for ci in torch.nonzero(keep).flatten().tolist():
            entries.append((float(s[ci]), li, ci))
    entries.sort()
    for _, li, ci in entries:
        if pruned >= goal:
            break
        n = names[li]
        if alive[n] <= 1:
            continue
        if pruned + channel_sizes[n] - goal > goal - pruned:  # overshoot worse than stopping
            continue
        out[n][ci] = False
        alive[n] -= 1
        pruned += channel_sizes[n]
    return out


# -- N:M ------------------------------------------------------------------------------------------
def nm_compatible(shape: torch.Size, m: int) -> bool:
    """Whether a weight's input dimension (dim 1) divides into groups of ``m``."""
    return len(shape) >= 2 and shape[1] % m == 0


def _to_groups(t: torch.Tensor, m: int) -> torch.Tensor:
    # (out, in, *k) -> (out, *k, in) -> (-1, m): groups of m consecutive input weights
    perm = (0, *range(2, t.dim()), 1)
    return t.permute(perm).reshape(-1, m)


def _from_groups(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    perm_shape = (shape[0], *shape[2:], shape[1])
    t = g.reshape(perm_shape)
    inv = (0, t.dim() - 1, *range(1, t.dim() - 1))
    return t.permute(inv).contiguous()


def nm_mask(scores: torch.Tensor, old: torch.Tensor, n: int, m: int, prune_per_group: int) -> torch.Tensor:
    """Keep-mask pruning the ``prune_per_group`` lowest scores of every group of ``m`` (old zeros
    first; ties by position). ``prune_per_group = m - n`` gives exact N:M sparsity."""
    if not 0 <= prune_per_group <= m - n:
        raise ValueError(f"prune_per_group={prune_per_group} outside [0, {m - n}]")
    if not nm_compatible(scores.shape, m):
        raise ValueError(f"input dimension of shape {tuple(scores.shape)} is not a multiple of m={m}")
    s = _to_groups(scores.float().masked_fill(~old, float("-inf")), m)
    keep = torch.ones_like(s, dtype=torch.bool)
    already = (~_to_groups(old, m)).sum(1, keepdim=True)
    k = torch.clamp(already, min=prune_per_group)  # old zeros stay zero
    order = torch.sort(s, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(m, device=s.device).expand_as(order))
    keep = ranks >= k
    return _from_groups(keep, scores.shape)
