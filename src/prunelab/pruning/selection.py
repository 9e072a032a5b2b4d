"""Selection: pure functions from scores and old masks to new masks at a cumulative target.

Invariants (each has a test):
- already-pruned elements stay pruned (their score is treated as -inf);
- the result hits the target exactly: ``round(target * numel)`` zeros per tensor (layer scope) or
  ``round(target * total)`` zeros overall (global scope);
- ties are broken deterministically by position (stable sort), so the same scores give the same
  masks.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

SCOPES = ("layer", "global")


def _n_prune(target: float, numel: int) -> int:
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target sparsity {target} outside [0, 1]")
    return int(round(target * numel))


def _prune_lowest(flat_scores: torch.Tensor, flat_old: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask (flat) pruning the ``k`` lowest scores, old zeros first."""
    already = int((~flat_old).sum())
    k = max(k, already)  # old zeros stay zero even if the target went down
    keep = torch.ones_like(flat_old)
    if k == 0:
        return keep
    s = flat_scores.float().masked_fill(~flat_old, float("-inf"))
    order = torch.sort(s, stable=True).indices
    keep[order[:k]] = False
    return keep


def select_masks(
    scores: Mapping[str, torch.Tensor],
    old_masks: Mapping[str, torch.Tensor],
    target: float | Mapping[str, float],
    scope: str = "layer",
) -> dict[str, torch.Tensor]:
    """Return new keep-masks at ``target`` sparsity (cumulative fraction of zeros).

    ``target`` may be a per-tensor mapping for layer scope (per-layer ratios).
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; allowed: {', '.join(SCOPES)}")
    names = list(scores)
    if set(names) != set(old_masks):
        raise KeyError("scores and old masks name different parameters")
    for n in names:
        if scores[n].shape != old_masks[n].shape:
            raise ValueError(f"score for {n!r} has shape {tuple(scores[n].shape)}, mask has "
                             f"{tuple(old_masks[n].shape)}")
    if scope == "layer":
        out = {}
        for n in names:
            t = target[n] if isinstance(target, Mapping) else target
            flat_old = old_masks[n].reshape(-1)
            keep = _prune_lowest(scores[n].reshape(-1), flat_old, _n_prune(t, flat_old.numel()))
            out[n] = keep.view_as(old_masks[n])
        return out
    if isinstance(target, Mapping):
        raise ValueError("global scope takes one target, not per-layer targets")
    device = old_masks[names[0]].device
    flat_scores = torch.cat([scores[n].reshape(-1).float().to(device) for n in names])
    flat_old = torch.cat([old_masks[n].reshape(-1).to(device) for n in names])
    keep = _prune_lowest(flat_scores, flat_old, _n_prune(target, flat_old.numel()))
    out, offset = {}, 0
    for n in names:
        numel = old_masks[n].numel()
        out[n] = keep[offset:offset + numel].view_as(old_masks[n]).to(old_masks[n].device)
        offset += numel
    return out
