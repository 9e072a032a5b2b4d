"""Dynamic sparse training: sparse from the first step, masks that move at constant sparsity.

- ``set`` (Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive
  sparse connectivity"): drop the smallest-magnitude kept weights, regrow as many at random.
- ``rigl`` (Evci et al. 2020, "Rigging the Lottery"): drop the smallest-magnitude kept weights,
  regrow the pruned weights with the largest gradient magnitude (the dense gradient of the
  current batch).

The network starts sparse: one event at epoch 0 draws a random mask at each layer's density
(``distribution``: ``uniform`` or ``erk``, :mod:`prunelab.pruning.distribution`). Then, every
``delta_t`` optimizer steps up to ``t_end`` of training, each layer drops the fraction
``drop_fraction`` (decayed: ``cosine``, f(t) = f0 / 2 * (1 + cos(pi t / (t_end T))), or
``constant``) of its kept weights and regrows as many; a weight just dropped is not regrown in the
same update, so exactly k weights leave and k others come in and every layer keeps its count.
The callback (:class:`~prunelab.pruning.PruningCallback`) calls :meth:`DynamicSparse.update`
after the optimizer step, zeroes the regrown weights and resets the optimizer's moments (Adam's
averages, SGD's momentum) of the dropped and regrown weights.

An update depends only on the weights, this step's gradient and (SET) a generator seeded by
(seed, step): a run resumed from a checkpoint draws the same masks as one that did not stop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from prunelab.pruning.distribution import DISTRIBUTIONS, kept_counts
from prunelab.pruning.methods.base import PruningMethod, _value, mask_generator
from prunelab.pruning.params import PruningConfigError
from prunelab.seeds import derive_seed

DECAYS = ("cosine", "constant")
GROW_SALT = 0x5E7  # derive_seed(seed, GROW_SALT, step): random regrowth at an update


class DynamicSparse(PruningMethod):
    """Drop by magnitude, regrow by :meth:`grow_scores`, every ``delta_t`` steps.

    Args:
        distribution: each layer's density: ``erk`` (Erdős–Rényi-Kernel) or ``uniform``.
        delta_t: optimizer steps between mask updates (> 0).
        drop_fraction: the fraction of each layer's kept weights replaced at the first update,
            in (0, 1).
        decay: ``cosine`` (to zero at ``t_end``) or ``constant``.
        t_end: the fraction of training after which the masks stay fixed, in (0, 1].
        include, exclude: which parameters (see :class:`PruningMethod`).
        seed: seeds the initial masks and random regrowth.
    """

    may_regrow = True
    at_init = True  # the final sparsity from step 0
    dynamic = True  # masks move every delta_t steps (the callback calls update)
    grow: ClassVar[str] = "random"

    def __init__(self, distribution: str = "erk", delta_t: int = 100, drop_fraction: float = 0.3,
                 decay: str = "cosine", t_end: float = 0.75,
                 include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                 seed: int = 0):
        super().__init__(include, exclude)
        distribution, decay = _value(distribution), _value(decay)
        if distribution not in DISTRIBUTIONS:
            raise PruningConfigError(f"pruner.distribution={distribution!r} is not one of "
                                     f"{', '.join(DISTRIBUTIONS)}")
        if isinstance(delta_t, bool) or not isinstance(delta_t, int) or delta_t <= 0:
            raise PruningConfigError(f"pruner.delta_t={delta_t!r} must be an integer > 0 "
                                     f"(optimizer steps between mask updates)")
        if (isinstance(drop_fraction, bool) or not isinstance(drop_fraction, (int, float))
                or not 0.0 < drop_fraction < 1.0):
            raise PruningConfigError(f"pruner.drop_fraction={drop_fraction!r} must be in (0, 1) "
                                     f"(the fraction of kept weights replaced per update)")
        if decay not in DECAYS:
            raise PruningConfigError(f"pruner.decay={decay!r} is not one of {', '.join(DECAYS)}")
        if (isinstance(t_end, bool) or not isinstance(t_end, (int, float))
                or not 0.0 < t_end <= 1.0):
            raise PruningConfigError(f"pruner.t_end={t_end!r} must be in (0, 1] (the fraction "
                                     f"of training with mask updates)")
        self.distribution = distribution
        self.delta_t = int(delta_t)
        self.drop_fraction = float(drop_fraction)
        self.decay = decay
        self.t_end = float(t_end)
        self.seed = int(seed)
        self.scope = distribution
        self.updates = 0  # mask updates so far (results.json; in the callback's checkpoints)
        self.moved = 0  # weights moved by them

    # -- schedule of updates ----------------------------------------------------------------------
    def due(self, step: int, total: int) -> bool:
        """Whether the masks move after optimizer step ``step`` (1, 2, ...) of ``total``."""
        return step % self.delta_t == 0 and step < self.t_end * total

    def fraction_at(self, step: int, total: int) -> float:
        """The drop fraction at ``step`` of ``total`` optimizer steps."""
        if self.decay == "constant":
            return self.drop_fraction
        return self.drop_fraction / 2.0 * (1.0 + math.cos(math.pi * step / (self.t_end * total)))

    # -- masks ------------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float, event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        """The initial sparse masks: each layer keeps a random ``round(density * numel)``."""
        counts = kept_counts({n: tuple(p.shape) for n, p in params.items()}, target,
                             self.distribution)
        gen = mask_generator(self.seed, event)
        out = {}
        for n, p in params.items():
            order = torch.randperm(p.numel(), generator=gen)
            keep = torch.zeros(p.numel(), dtype=torch.bool)
            keep[order[:counts[n]]] = True
            out[n] = keep.view(p.shape).to(old_masks[n].device)
        return out

    def grow_scores(self, param: torch.Tensor, step: int, gen: torch.Generator) -> torch.Tensor:
        """Larger = regrown first, over the pruned weights (random: SET)."""
        return torch.rand(param.shape, generator=gen).to(param.device)

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
               step: int, total: int) -> dict[str, torch.Tensor]:
        """New masks after optimizer step ``step``: each layer drops the ``k`` kept weights of
        smallest magnitude (ties by position) and regrows ``k`` of the others not just dropped,
        ``k = round(fraction * kept)``."""
        fraction = self.fraction_at(step, total)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, GROW_SALT, step))
        out = {}
        for n, p in params.items():
            old = masks[n].reshape(-1)
            kept = int(old.sum())
            k = min(int(round(fraction * kept)), old.numel() - kept)
            if k == 0:
                out[n] = masks[n].clone()
                continue
            w = p.detach().reshape(-1).abs().float().masked_fill(~old, float("inf"))
            drop = torch.sort(w, stable=True).indices[:k]
            new = old.clone()
            new[drop] = False
            grow = self.grow_scores(p, step, gen).reshape(-1).float()
            # candidates: pruned before this update (not the k just dropped, not the kept)
            grow = grow.masked_fill(old, float("-inf"))
            order = torch.sort(grow, descending=True, stable=True).indices[:k]
            new[order] = True
            out[n] = new.view_as(masks[n])
            self.moved += k
        self.updates += 1
        return out

    def state_dict(self) -> dict:
        return {"updates": self.updates, "moved": self.moved}

    def load_state_dict(self, state: Mapping) -> None:
        self.updates = int(state.get("updates", 0))
        self.moved = int(state.get("moved", 0))

    def report(self) -> dict:
        return {"distribution": self.distribution, "delta_t": self.delta_t,
                "drop_fraction": self.drop_fraction, "decay": self.decay, "t_end": self.t_end,
                "mask_updates": self.updates, "weights_moved": self.moved}


class SET(DynamicSparse):
    """Sparse Evolutionary Training (Mocanu et al. 2018): regrow at random."""

    name = "set"
    grow = "random"


class RigL(DynamicSparse):
    """Rigging the Lottery (Evci et al. 2020): regrow where this step's gradient is largest."""

    name = "rigl"
    grow = "gradient"

    def grow_scores(self, param: torch.Tensor, step: int, gen: torch.Generator) -> torch.Tensor:
        if param.grad is None:
            raise RuntimeError(f"pruner=rigl needs the gradient of every pruned layer; "
                               f"{tuple(param.shape)} has none after step {step}")
        return param.grad.detach().abs()


__all__ = ["DECAYS", "DynamicSparse", "RigL", "SET"]
