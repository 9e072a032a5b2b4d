"""Parameter counting and sparsity statistics.

All functions see a model's *effective* parameters: for a plain model these
are its parameters; for a module pruned with :mod:`torch.nn.utils.prune` the
masked ``weight_orig * weight_mask`` is reported under the name ``weight``;
for a module using :mod:`torch.nn.utils.parametrize` the parametrized value is
reported under its plain name.  Shared parameters are counted once.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["count_params", "effective_parameters", "effective_state_dict", "sparsity_report"]


def _parametrization_prefixes(model: nn.Module) -> list[str]:
    return [
        name + "."
        for name, module in model.named_modules()
        if isinstance(module, parametrize.ParametrizationList)
    ]


def _masked(module: nn.Module, base: str) -> torch.Tensor:
    return getattr(module, base + "_orig") * getattr(module, base + "_mask")


def effective_parameters(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Detached effective parameter tensors keyed by qualified name.

    ``weight_orig``/``weight_mask`` pairs (torch pruning) become ``weight`` and
    parametrized tensors appear under their plain name.  Each underlying
    parameter appears once (first name wins, as in ``named_parameters``).
    """
    skip = _parametrization_prefixes(model)
    seen: set[int] = set()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for mod_name, module in model.named_modules():
        if any((mod_name + ".").startswith(p) for p in skip):
            continue
        prefix = mod_name + "." if mod_name else ""
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                key = id(plist)
                if key in seen:
                    continue
                seen.add(key)
                with torch.no_grad():
                    out[prefix + pname] = getattr(module, pname).detach()
        for pname, param in module._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            if pname.endswith("_orig") and (pname[:-5] + "_mask") in module._buffers:
                with torch.no_grad():
                    out[prefix + pname[:-5]] = _masked(module, pname[:-5]).detach()
            else:
                out[prefix + pname] = param.detach()
    return out


def effective_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """``model.state_dict()`` with pruning masks / parametrizations folded in.

    For a plain model this equals ``model.state_dict()`` (tensors detached).
    ``X_orig``/``X_mask`` entries become a single masked ``X`` entry and
    ``m.parametrizations.X.original`` becomes ``m.X``; this is what a pruned
    model would ship as after the masks are made permanent.
    """
    sd = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in sd.items():
        parts = key.split(".")
        if "parametrizations" in parts:
            i = parts.index("parametrizations")
            mod_name = ".".join(parts[:i])
            pname = parts[i + 1]
            new_key = ".".join([*parts[:i], pname])
            if new_key not in out:
                module = model.get_submodule(mod_name)
                with torch.no_grad():
                    out[new_key] = getattr(module, pname).detach()
            continue
        if key.endswith("_orig") and key[:-5] + "_mask" in sd:
            out[key[:-5]] = (value * sd[key[:-5] + "_mask"]).detach()
            continue
        if key.endswith("_mask") and key[:-5] + "_orig" in sd:
            continue
        out[key] = value.detach()
    return out


def count_params(model: nn.Module) -> dict[str, int]:
    """Total and non-zero number of (effective) parameter elements.

    Counts every parameter, including biases and normalisation affine
    parameters.

    Returns:
        ``{"total": int, "nonzero": int}``
    """
    total = 0
    nonzero = 0
    for tensor in effective_parameters(model).values():
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    return {"total": int(total), "nonzero": int(nonzero)}


def _resolve_names(available: Iterable[str], param_names: Iterable[str]) -> list[str]:
    available = list(available)
    available_set = set(available)
    resolved: list[str] = []
    for entry in param_names:
        if entry in available_set:
            matches = [entry]
        else:
            matches = [n for n in available if fnmatch.fnmatchcase(n, entry)]
        if not matches:
            raise KeyError(f"no parameter matches {entry!r}")
        for name in matches:
            if name not in resolved:
                resolved.append(name)
    return resolved


def sparsity_report(model: nn.Module, param_names: Iterable[str]) -> dict:
    """Exact-zero statistics of selected parameters.

    Args:
        model: the model.
        param_names: parameter names such as ``"features.0.weight"``; entries
            that are not an exact name are treated as glob patterns
            (``"*.weight"``).  A name or pattern matching nothing raises
            :class:`KeyError`.  A single string is treated as one name.

    Returns:
        ``{"global": zeros/total, "per_layer": {name: zeros/numel},
        "zeros": int, "total": int}`` where sparsity is the fraction of
        elements exactly equal to zero (0.0 when nothing is selected).
    """
    if isinstance(param_names, str):
        param_names = [param_names]
    params = effective_parameters(model)
    per_layer: dict[str, float] = {}
    zeros = 0
    total = 0
    for name in _resolve_names(params, param_names):
        tensor = params[name]
        n = tensor.numel()
        z = n - int(torch.count_nonzero(tensor))
        per_layer[name] = z / n if n else 0.0
        zeros += z
        total += n
    return {
        "global": zeros / total if total else 0.0,
        "per_layer": per_layer,
        "zeros": int(zeros),
        "total": int(total),
    }
