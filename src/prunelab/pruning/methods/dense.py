"""``pruner=none``: the dense baseline."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from prunelab.pruning.methods.base import PruningMethod
from prunelab.pruning.params import PruningConfigError


class Dense(PruningMethod):
    """Prunes nothing (``sparsity`` must be 0); its masks still list the prunable parameters, so
    that a dense run reports and measures the same tensors as a pruned one."""

    name = "none"
    is_dense = True

    def check_sparsity(self, sparsity: float) -> None:
        if sparsity > 0:
            raise PruningConfigError(f"pruner=none cannot reach sparsity={sparsity}; use "
                                     f"sparsity=0 or a pruning method")

    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float, event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        raise PruningConfigError("pruner=none does not prune; use sparsity=0")
