"""Masks: one bool tensor per prunable parameter (``True`` keeps).

:class:`MaskSet` owns the bookkeeping (validation, in-place application, statistics and
(de)serialisation); the maths of *which* elements to drop lives in
:mod:`prunelab.pruning.selection`, :mod:`prunelab.pruning.granularity` and the method classes of
:mod:`prunelab.pruning.methods`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Coupled:
    """A 1-D parameter whose entries follow prunable weights' rows (structured pruning: a bias,
    a BatchNorm's weight and bias): ``entries[i]`` is zeroed when row ``rows[i]`` of ``weight``
    keeps no element. ``sources``: ``(weight name, rows, entries)``, index tensors."""

    param: nn.Parameter
    sources: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def follow(self, weight: str, rows: torch.Tensor, entries: torch.Tensor) -> None:
        self.sources.append((weight, rows.long().flatten(), entries.long().flatten()))


class MaskSet:
    """Named bool masks bound to the parameters they prune.

    ``apply_()`` multiplies every parameter by its mask in place with one fused
    ``torch._foreach_mul_`` call, which is what keeps pruned weights at exactly zero after an
    optimizer step (momentum and weight decay would otherwise regrow them).
    """

    def __init__(self, params: Mapping[str, nn.Parameter],
                 coupled: Mapping[str, Coupled] | None = None):
        """``coupled``: for structured pruning, the 1-D parameters (by name) whose entries follow
        prunable weights' rows (:class:`Coupled`): a row with no kept element zeroes them too,
        so that the channel's output is exactly zero."""
        if not params:
            raise ValueError("MaskSet needs at least one parameter")
        self._params: dict[str, nn.Parameter] = dict(params)
        self._coupled: dict[str, Coupled] = self._check_coupled(coupled)
        self._masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(p, dtype=torch.bool) for n, p in self._params.items()
        }
        self._factors: dict[str, torch.Tensor] = {}
        self._refresh_factors()

    # -- access -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._params)

    @property
    def params(self) -> dict[str, nn.Parameter]:
        return dict(self._params)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """A shallow copy of the masks (name -> bool tensor)."""
        return dict(self._masks)

    # -- update -------------------------------------------------------------------------------
    def update(self, masks: Mapping[str, torch.Tensor], *, allow_regrow: bool = False) -> None:
        """Replace masks after validating dtype, shape and (unless ``allow_regrow``: a method whose
        ``may_regrow`` is true) monotonicity: a pruned weight stays pruned."""
        for name, mask in masks.items():
            self._validate(name, mask)
            old = self._masks[name]
            mask = mask.to(device=old.device)
            if not allow_regrow and bool((mask & ~old).any()):
                raise ValueError(f"mask for {name!r} would revive pruned weights (masks only shrink)")
            self._masks[name] = mask
        self._refresh_factors()

    def _validate(self, name: str, mask: torch.Tensor) -> None:
        if name not in self._params:
            raise KeyError(f"no prunable parameter named {name!r}; known: {', '.join(self._params)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask for {name!r} must be bool, got {mask.dtype}")
        if tuple(mask.shape) != tuple(self._params[name].shape):
            raise ValueError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, parameter has "
                f"{tuple(self._params[name].shape)}"
            )

    def _check_coupled(self, coupled: Mapping[str, Coupled] | None) -> dict[str, Coupled]:
        out = {}
        for cname, c in (coupled or {}).items():
            if not c.sources:
                continue
            for w, rows, entries in c.sources:
                if w not in self._params:
                    raise ValueError(f"coupled parameter {cname!r} follows {w!r}, which is not "
                                     f"prunable")
                if (c.param.dim() != 1 or len(rows) != len(entries)
                        or (len(rows) and int(rows.max()) >= self._params[w].shape[0])
                        or (len(entries) and int(entries.max()) >= c.param.shape[0])):
                    raise ValueError(f"coupled parameter {cname!r} of shape "
                                     f"{tuple(c.param.shape)} does not follow the rows of {w!r}")
            out[cname] = c
        return out

    def _refresh_factors(self) -> None:
        self._factors = {}
        for n, p in self._params.items():
            m = self._masks[n]
            if m.device != p.device:
                m = m.to(p.device)
                self._masks[n] = m
            self._factors[n] = m.to(dtype=p.dtype)
        # the flat lists apply_() multiplies, built once per mask change, not once per step
        self._apply_params = list(self._params.values())
        self._apply_factors = [self._factors[n] for n in self._params]
        for c in self._coupled.values():
            factor = torch.ones(c.param.shape, dtype=c.param.dtype, device=c.param.device)
            for w, rows, entries in c.sources:
                m = self._masks[w]
                keep = m.reshape(m.shape[0], -1).any(1)[rows.to(m.device)]
                factor[entries.to(factor.device)] *= keep.to(device=factor.device,
                                                             dtype=factor.dtype)
            self._apply_params.append(c.param)
            self._apply_factors.append(factor)

    @property
    def coupled(self) -> dict[str, Coupled]:
        """The coupled 1-D parameters by name (see :class:`Coupled`)."""
        return dict(self._coupled)

    def rebind(self, params: Mapping[str, nn.Parameter],
               coupled: Mapping[str, Coupled] | None = None) -> None:
        """Point the masks at new parameter objects (same names and shapes), e.g. after a copy."""
        if set(params) != set(self._params):
            raise KeyError("rebind needs exactly the same parameter names")
        self._params = dict(params)
        if coupled is not None:
            self._coupled = self._check_coupled(coupled)
        self._refresh_factors()

    # -- application --------------------------------------------------------------------------
    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned element in place (one fused multiply over all tensors)."""
        first, factor = self._apply_params[0], self._apply_factors[0]
        if first.device != factor.device or first.dtype != factor.dtype:  # module moved or cast
            self._refresh_factors()
        torch._foreach_mul_(self._apply_params, self._apply_factors)

    # -- statistics ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """Sparsity of the masks: global and per parameter (fraction of ``False``)."""
        per_layer = {}
        pruned = total = 0
        for n, m in self._masks.items():
            k = int((~m).sum())
            per_layer[n] = k / m.numel()
            pruned += k
            total += m.numel()
        return {"global": pruned / total, "per_layer": per_layer, "pruned": pruned, "total": total}

    @property
    def sparsity(self) -> float:
        return self.stats()["global"]

    # -- (de)serialisation --------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.detach().cpu().clone() for n, m in self._masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = set(self._masks) - set(state)
        unexpected = set(state) - set(self._masks)
        if missing or unexpected:
            raise KeyError(
                f"mask state does not match the prunable parameters "
                f"(missing: {sorted(missing)}, unexpected: {sorted(unexpected)})"
            )
        for n, m in state.items():
            self._validate(n, m)
        self._masks = {n: state[n].to(self._params[n].device).clone() for n in self._masks}
        self._refresh_factors()
