"""``pruner=fixed_mask``: train a given mask from the first step (the unstructured arm of the
"Rethinking" control, ``control=scratch``; any mask saved as ``{parameter name: bool tensor}``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from prunelab.pruning.methods.base import PruningMethod
from prunelab.pruning.params import PruningConfigError


class FixedMask(PruningMethod):
    """The masks in the file ``masks`` (``torch.save`` of ``{name: bool tensor}``, loaded with
    ``weights_only=True``), applied before the first step and kept; the schedule is not used.

    Args:
        masks: the mask file.
        include, exclude: which parameters (see :class:`PruningMethod`); every one needs a mask.
    """

    name = "fixed_mask"
    at_init = True

    def __init__(self, masks: str | None = None, include: Sequence[str] | None = None,
                 exclude: Sequence[str] = ()):
        super().__init__(include, exclude)
        if not masks:
            raise PruningConfigError("pruner=fixed_mask needs pruner.masks=<file of {name: bool "
                                     "tensor}>")
        path = Path(str(masks))
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input here
            raise PruningConfigError(f"pruner.masks={str(masks)!r} cannot be read "
                                     f"({type(exc).__name__}); allowed: a torch file of "
                                     f"{{parameter name: bool tensor}}") from None
        if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
            raise PruningConfigError(f"pruner.masks={str(masks)!r} is not a mapping of parameter "
                                     f"names to mask tensors")
        self.path = str(path)
        self.masks = {k: v.bool() for k, v in loaded.items()}

    def compute_masks(self, params: Mapping[str, torch.Tensor], old_masks: Mapping[str, torch.Tensor],
                      target: float, event: int = 0,
                      stats: Mapping[str, dict] | None = None) -> dict[str, torch.Tensor]:
        missing = [n for n in params if n not in self.masks]
        if missing:
            raise PruningConfigError(f"pruner.masks={self.path!r} has no mask for {missing[0]} "
                                     f"({len(missing)} of {len(params)} parameters missing)")
        out = {}
        for n, p in params.items():
            if tuple(self.masks[n].shape) != tuple(p.shape):
                raise PruningConfigError(f"pruner.masks={self.path!r}: {n} has shape "
                                         f"{tuple(self.masks[n].shape)}, the parameter "
                                         f"{tuple(p.shape)}")
            out[n] = self.masks[n].to(old_masks[n].device)
        return out

    def check_run(self, model, schedule, sparsity: float) -> None:
        """The run's ``sparsity`` is the masks' own (so results.json reports what is trained)."""
        params = self.resolve(model)
        masks = self.compute_masks(params, {n: torch.ones_like(p, dtype=torch.bool)
                                            for n, p in params.items()}, sparsity)
        total = sum(m.numel() for m in masks.values())
        zeros = sum(int((~m).sum()) for m in masks.values())
        if abs(zeros / total - sparsity) > 1e-6:
            raise PruningConfigError(f"sparsity={sparsity} but pruner.masks={self.path!r} prunes "
                                     f"{zeros / total:.6f} of these parameters: set "
                                     f"sparsity={zeros / total:.6f}")

    def report(self) -> dict:
        return {"masks": self.path}


__all__ = ["FixedMask"]
