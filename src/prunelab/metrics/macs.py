"""Multiply-accumulate (MAC) counting for convolutional and linear layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.metrics.params import effective_parameters

__all__ = ["count_macs"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_macs(
    model: nn.Module,
    input_shape: Sequence[int],
    densities: Mapping[str, float] | None = None,
) -> dict:
    """Dense and sparsity-aware MACs of one forward pass with batch size 1.

    A forward pass on ``zeros(1, *input_shape)`` (eval mode, no grad; the
    previous modes are restored) is observed with forward hooks:

    * ``nn.Conv1d/2d/3d``: ``output elements * in_channels / groups * prod(kernel)``
    * ``nn.Linear``: ``output elements * in_features`` (i.e. ``out_features *
      in_features * leading dims``)

    Bias additions, normalisation, activations and pooling are not counted
    (the same convention as :class:`torch.utils.flop_counter.FlopCounterMode`,
    whose FLOPs are 2x these MACs).  A module called several times
    accumulates.

    ``effective`` scales each layer's MACs by the density (fraction of
    non-zero elements) of its weight: taken from ``densities[f"{name}.weight"]``
    when given there, else computed from the (effective, i.e. masked) weight.
    These are the *non-zero* MACs: they do not see that a removed output channel also removes
    the next layer's inputs, so for channel pruning they are well above the MACs of the compact
    network (:func:`prunelab.compress.compact.macs_report` reports both, named).

    Returns:
        ``{"dense": int, "effective": int,
        "per_layer": {module_name: {"dense": int, "effective": int}}}``
    """
    shape = tuple(int(s) for s in input_shape)
    params = effective_parameters(model)
    dense: dict[str, int] = {}
    order: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        name = names[module]
        if isinstance(module, _CONV_TYPES):
            weight_shape = module.weight.shape
            per_output = int(torch.Size(weight_shape[1:]).numel())  # in/groups * kernel
        else:
            per_output = int(module.in_features)
        macs = int(output.numel()) * per_output
        if name not in dense:
            dense[name] = 0
            order.append(name)
        dense[name] += macs

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, (*_CONV_TYPES, nn.Linear))
    ]
    ref = next(iter(params.values()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    per_layer: dict[str, dict[str, int]] = {}
    total_dense = 0
    total_effective = 0
    for name in order:
        key = f"{name}.weight" if name else "weight"
        layer_dense = dense[name]
        if densities is not None and key in densities:
            density = float(densities[key])
            if not 0.0 <= density <= 1.0:
                raise ValueError(f"density of {key!r} must be in [0, 1], got {density}")
            layer_effective = int(round(layer_dense * density))
        elif key in params and params[key].numel() > 0:
            weight = params[key]
            nonzero, numel = int(torch.count_nonzero(weight)), weight.numel()
            # exact integer rounding of layer_dense * nonzero / numel
            layer_effective = (2 * layer_dense * nonzero + numel) // (2 * numel)
        else:
            layer_effective = layer_dense
        per_layer[name] = {"dense": layer_dense, "effective": layer_effective}
        total_dense += layer_dense
        total_effective += layer_effective
    return {"dense": int(total_dense), "effective": int(total_effective), "per_layer": per_layer}
