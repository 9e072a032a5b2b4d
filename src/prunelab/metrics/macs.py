"""Multiply-accumulate (MAC) counting: :class:`torch.utils.flop_counter.FlopCounterMode`'s
FLOPs / 2, each operation attributed to the innermost module that ran it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from prunelab.metrics.params import effective_parameters

__all__ = ["count_macs"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WEIGHT_LAYERS = (*_CONV_TYPES, nn.Linear)
# the positions of the arguments an operation multiplies (the others are added or are options)
_ADDING = {"addmm": (1, 2), "baddbmm": (1, 2)}  # (bias/mask, a, b)
_TWO = (0, 1)  # mm, bmm, convolutions (input, weight, bias, ...), _scaled_mm
_ATTENTION = (0, 1, 2)  # query, key, value

Key = tuple[str, ...]  # the weights (effective parameter names) an operation multiplies by


def _operands(packet: object) -> tuple[int, ...]:
    name = str(getattr(packet, "__name__", packet))
    return _ADDING.get(name) or (_ATTENTION if "attention" in name else _TWO)


def _storage(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except Exception:  # noqa: BLE001 - sparse, nested, a subclass: not a dense weight's storage
        return 0


class _Weights:
    """The model's weights by storage: each parameter, and each torch-prune masked
    (``weight_orig * weight_mask``, recomputed by its module's pre-hook) or parametrized
    (under :func:`parametrize.cached`) value, under its ``effective_parameters`` name; a view
    or slice of one shares its storage. The tensors are kept alive, so no activation can take
    a storage over."""

    def __init__(self, names: Mapping[nn.Module, str]):
        self.by_storage: dict[int, tuple[str, torch.Tensor]] = {}
        self.masked: dict[nn.Module, list[tuple[str, str]]] = {}
        for module, name in names.items():
            prefix = f"{name}." if name else ""
            if parametrize.is_parametrized(module):  # before its ParametrizationList's names
                for pname, plist in module.parametrizations.items():
                    self.note(prefix + pname, getattr(module, pname))
                    for tensor in plist.parameters(recurse=False):
                        self.note(prefix + pname, tensor)
            for pname, param in module._parameters.items():
                base = pname[:-5]
                if pname.endswith("_orig") and f"{base}_mask" in module._buffers:
                    self.masked.setdefault(module, []).append((prefix + base, base))
                    self.note(prefix + base, getattr(module, base, None))
                    pname = base
                self.note(prefix + pname, param)

    def note(self, name: str, tensor: object) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.numel() > 0:
            ptr = _storage(tensor)
            if ptr:
                self.by_storage.setdefault(ptr, (name, tensor))

    def refresh(self, module: nn.Module) -> None:
        """The masked values a torch-prune pre-hook has just recomputed."""
        for name, attr in self.masked.get(module, ()):
            self.note(name, getattr(module, attr, None))

    def used_by(self, packet: object, args: tuple) -> Key:
        found: set[str] = set()
        for i in _operands(packet):
            if i < len(args) and isinstance(args[i], torch.Tensor):
                hit = self.by_storage.get(_storage(args[i]))
                if hit is not None:
                    found.add(hit[0])
        return tuple(sorted(found))


def _attributing(formula: Callable, packet: object, record: Callable) -> Callable:
    """FlopCounterMode's own formula for ``packet``, also reporting each count to ``record``."""

    def counted(*args, out_val=None, **kwargs):
        flops = formula(*args, out_val=out_val, **kwargs)
        record(packet, args, flops)
        return flops

    counted._get_raw = True  # the raw tensors: their storage tells a weight from an activation
    return counted


def count_macs(
    model: nn.Module,
    input_shape: Sequence[int],
    densities: Mapping[str, float] | None = None,
) -> dict:
    """Dense and sparsity-aware MACs of one forward pass with batch size 1.

    One forward pass on ``zeros(1, *input_shape)`` (eval mode, no grad; the previous modes are
    restored) runs under :class:`torch.utils.flop_counter.FlopCounterMode`: ``dense`` is its
    FLOPs / 2, every operation it has a formula for (convolutions, ``mm``/``addmm``,
    ``bmm``/``baddbmm``, attention) wherever it runs: ``nn.Conv*``/``nn.Linear``,
    ``nn.MultiheadAttention``, ``F.linear``, ``@``, ``scaled_dot_product_attention`` in a custom
    forward. Bias additions, normalisation, activations and pooling are not counted. A module
    called several times accumulates.

    Fused attention kernels FlopCounterMode has no formula for (on CPU) are not run: the
    forward runs with the ``nn.MultiheadAttention``/``nn.TransformerEncoderLayer`` fast path
    off and ``scaled_dot_product_attention`` on its math backend (both restored after; the fast
    path switch is process-wide), so attention counts as the products it is (q @ k^T, attn @ v)
    on every device.

    ``per_layer`` attributes each operation to the innermost module that ran it (the root
    ``""`` for functional calls in the root's own forward), so it sums to the total; only
    modules that ran a counted operation appear, under their ``model.named_modules()`` name
    (the first one for a shared module).

    ``effective`` (the *non-zero* MACs) scales the MACs that multiply by a weight with that
    weight's density (fraction of non-zero elements): ``densities[name]`` when given there,
    else computed from the effective (i.e. masked) weight ``effective_parameters(model)[name]``.
    An ``nn.Conv*``/``nn.Linear`` layer's MACs all scale by its own ``weight``. In any other
    module an operation scales by the model parameter it multiplies, found by storage (the
    parameter, a view or slice of it, its torch-prune masked or parametrized value; the lowest
    density if it multiplies two): ``nn.MultiheadAttention``'s input projection by its packed
    ``in_proj_weight`` (q, k and v alike) and its output projection by ``out_proj.weight``;
    products of two activations (attention scores, attn @ v) stay dense. These are the
    *non-zero* MACs: they do not see that a removed output channel also removes the next
    layer's inputs, so for channel pruning they are well above the MACs of the compact network
    (:func:`prunelab.compress.compact.macs_report` reports both, named).

    Returns:
        ``{"dense": int, "effective": int,
        "per_layer": {module_name: {"dense": int, "effective": int}}}``
    """
    shape = tuple(int(s) for s in input_shape)
    params = effective_parameters(model)
    names = {module: name for name, module in model.named_modules()}
    flops: dict[str, dict[Key, int]] = {}  # innermost module -> weights multiplied -> FLOPs
    stack: list[nn.Module] = []
    weights: _Weights | None = None

    def record(packet: object, args: tuple, count: int) -> None:
        module = stack[-1] if stack else model
        name = names[module]
        if isinstance(module, _WEIGHT_LAYERS):
            key: Key = (f"{name}.weight" if name else "weight",)
        else:
            key = weights.used_by(packet, args) if weights is not None else ()
        layer = flops.setdefault(name, {})
        layer[key] = layer.get(key, 0) + int(count)

    def enter(module: nn.Module, args: tuple) -> None:
        stack.append(module)
        if weights is not None:
            weights.refresh(module)

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is module:
                del stack[i]
                break

    mapping = {packet: _attributing(formula, packet, record)
               for packet, formula in flop_registry.items()}
    ref = next(iter(params.values()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    modes = {m: m.training for m in model.modules()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    handles = []
    try:
        for module in names:
            if not isinstance(module, torch.jit.ScriptModule):  # no Python hooks there
                handles.append(module.register_forward_pre_hook(enter))
                handles.append(module.register_forward_hook(leave, always_call=True))
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), parametrize.cached(), sdpa_kernel(SDPBackend.MATH):
            weights = _Weights(names)
            x = torch.zeros(1, *shape, device=device, dtype=dtype)
            with FlopCounterMode(display=False, custom_mapping=mapping):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, training in modes.items():
            module.training = training

    found: dict[str, Fraction | float | None] = {}

    def density(name: str) -> Fraction | float | None:
        if name not in found:
            if densities is not None and name in densities:
                value = float(densities[name])
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"density of {name!r} must be in [0, 1], got {value}")
                found[name] = value
            elif name in params and params[name].numel() > 0:
                weight = params[name]
                found[name] = Fraction(int(torch.count_nonzero(weight)), weight.numel())
            else:
                found[name] = None
        return found[name]

    per_layer: dict[str, dict[str, int]] = {}
    for name, parts in flops.items():
        layer_dense = sum(parts.values()) // 2
        layer_effective = 0
        for key, part_flops in parts.items():
            macs = part_flops // 2
            known = [d for d in map(density, key) if d is not None]
            d = min(known) if known else None
            if d is None:
                layer_effective += macs
            elif isinstance(d, Fraction):  # exact integer rounding of macs * d
                layer_effective += (2 * macs * d.numerator + d.denominator) // (2 * d.denominator)
            else:
                layer_effective += round(macs * d)
        per_layer[name] = {"dense": layer_dense, "effective": layer_effective}
    return {"dense": sum(v["dense"] for v in per_layer.values()),
            "effective": sum(v["effective"] for v in per_layer.values()),
            "per_layer": per_layer}
