"""Models beyond the zoo: any torchvision or timm classifier, or any ``nn.Module`` by ``_target_``.

:func:`build_from_config` builds every ``model=`` option for the data's input shape and classes::

    model=<zoo name>                      instantiate(node, input_shape=..., num_classes=...)
    model=torchvision model.name=resnet18 [model.weights=IMAGENET1K_V1]   libraries.torchvision_model
    model=timm model.name=resnet18 [model.weights=<local file>]           libraries.timm_model
    model=custom model._target_=my_pkg.nets.MyNet +model.width=64         custom_model

A model from outside the zoo gets ``input_shape``/``num_classes`` attributes when it lacks them
(a torchvision/timm one also an ``output_layer_name()`` naming its head, the layer pruning leaves
whole), and is checked to fit the data: its forward runs, gives one logit per class, and its total
stride (the product of the strides that shrink its feature maps) is not larger than the input.
Bad input: one line (:class:`ExternalModelError`, a :class:`~prunelab.errors.UserError`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunelab.errors import one_line
from prunelab.models.libraries import (
    ExternalModelError,
    OutputLayer,
    set_facts,
    timm_model,
    torchvision_model,
)

__all__ = ["EXTERNAL_OPTIONS", "ExternalModelError", "OutputLayer", "build_from_config", "check_external_fits",
           "custom_model", "model_label", "timm_model", "torchvision_model", "total_stride"]

#: The ``model=`` options beyond the zoo (``conf/model/<option>.yaml``, no registered class).
EXTERNAL_OPTIONS = ("custom", "timm", "torchvision")
TORCHVISION = "prunelab.models.libraries.torchvision_model"
TIMM = "prunelab.models.libraries.timm_model"
#: Below this input side a model's total stride is measured on a probe of this side (no
#: feature map is clamped at 1x1 there for strides up to it).
PROBE_SIDE = 64
_STRIDED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
            nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


# -- the entry point ---------------------------------------------------------------------------
def _target(node: Mapping[str, Any]) -> Any:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig) and OmegaConf.is_missing(node, "_target_"):
        return None
    return node.get("_target_")


def _kind(node: Mapping[str, Any]) -> str:
    target = _target(node)
    if target == TORCHVISION:
        return "torchvision"
    if target == TIMM:
        return "timm"
    if isinstance(target, str) and target.startswith("prunelab."):
        return "zoo"
    return "custom"


def model_label(node: Mapping[str, Any]) -> str | None:
    """The model's name in messages and results: ``torchvision/resnet18``, ``timm/resnet18``,
    ``custom/MyNet``; ``None`` for a zoo model (its registry name says it)."""
    kind = _kind(node)
    if kind in ("torchvision", "timm"):
        return f"{kind}/{node.get('name')}"
    if kind == "custom":
        return f"custom/{str(_target(node) or 'none').rsplit('.', 1)[-1]}"
    return None


def build_from_config(node: Mapping[str, Any], input_shape: Sequence[int], num_classes: int,
                      *, load_weights: bool = True) -> nn.Module:
    """The network a ``model=`` config node describes, built for ``input_shape`` (C, H, W) and
    ``num_classes``. A zoo node is ``instantiate(node, input_shape=..., num_classes=...)``
    unchanged; torchvision, timm and custom nodes are built here and checked to fit (one-line
    :class:`ExternalModelError`). ``load_weights=False`` skips ``model.weights`` (a checkpoint's
    state dict replaces them anyway)."""
    from omegaconf import DictConfig, OmegaConf

    shape, classes = tuple(int(s) for s in input_shape), int(num_classes)
    kind = _kind(node)
    if kind == "zoo":
        from hydra.utils import instantiate

        net = instantiate(node, input_shape=shape, num_classes=classes)
        set_facts(net, shape, classes)
        return net
    if kind == "custom":
        net = custom_model(node, shape, classes)
    else:
        plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        params = {k: v for k, v in dict(plain).items() if not str(k).startswith("_")}
        build = torchvision_model if kind == "torchvision" else timm_model
        net = build(shape, classes, load_weights=load_weights, **params)
    set_facts(net, shape, classes)
    check_external_fits(net, shape, classes, str(model_label(node)))
    return net


# -- your own nn.Module -------------------------------------------------------------------------
def custom_model(node: Mapping[str, Any], input_shape: Sequence[int], num_classes: int
                 ) -> nn.Module:
    """The user's ``_target_`` (a class or function), with the node's other keys as arguments
    and ``input_shape``/``num_classes`` when it takes them (a ``**kwargs`` takes them)."""
    from hydra.utils import instantiate

    target = _target(node)
    if not target:
        raise ExternalModelError("model._target_ is not set: model=custom needs model._target_="
                                 "<package.module.Class> of a torch.nn.Module (extra arguments: "
                                 "+model.<key>=...; docs/any_model.md)")
    fn = _import_target(str(target))
    extra = {k: v for k, v in (("input_shape", tuple(int(s) for s in input_shape)),
                               ("num_classes", int(num_classes)))
             if k not in node and _accepts(fn, k)}
    built = instantiate(node, _partial_=True)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(*built.args, **built.keywords, **extra)
        except TypeError as exc:
            takes = ", ".join(p for p in signature.parameters) or "nothing"
            raise ExternalModelError(f"model._target_={target} cannot be called with these "
                                     f"arguments ({exc}); it takes: {takes}") from None
    net = built(**extra)
    if not isinstance(net, nn.Module):
        raise ExternalModelError(f"model._target_={target} built a {type(net).__name__}, not a "
                                 f"torch.nn.Module")
    return net


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _import_target(path: str) -> Any:
    """The object ``path`` names (``pkg.module.Class``), the working directory importable."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    parts, failure = path.split("."), None
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                failure = failure or exc  # this prefix is not a module: try a shorter one
                continue
            failure = exc
            break
        except Exception as exc:  # noqa: BLE001 - the user's module failed to import
            failure = exc
            break
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                failure = AttributeError(f"module {module!r} has no attribute {attr!r}")
                break
            obj = getattr(obj, attr)
        else:
            return obj
        break
    why = f"{type(failure).__name__}: {one_line(failure)}" if failure else "not a dotted path"
    raise ExternalModelError(f"model._target_={path} cannot be imported ({why}); allowed: a "
                             f"torch.nn.Module class or function importable from the launch "
                             f"directory ({cwd}) or an installed package")


# -- does it fit the data -----------------------------------------------------------------------
def _stride_of(mod: nn.Module) -> int:
    stride = getattr(mod, "stride", 1) or 1
    return int(max(stride) if isinstance(stride, (tuple, list)) else stride)


def _strided_forward(net: nn.Module, shape: tuple[int, ...]) -> tuple[Any, int]:
    """Output on zeros of ``(1, *shape)`` and the total stride: the product of the strides of
    the strided convolutions and poolings that each give a smaller map than any before."""
    seen: list[tuple[int, int]] = []

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        if torch.is_tensor(out) and out.dim() >= 3:
            seen.append((min(out.shape[2:]), _stride_of(mod)))

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, _STRIDED) and _stride_of(m) > 1]
    param = next(iter(net.parameters()), None)
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, *shape, device=param.device if param is not None else "cpu",
                                  dtype=param.dtype if param is not None else torch.float32))
    finally:
        for handle in handles:
            handle.remove()
        for mod, training in modes.items():
            mod.training = training
    total, smallest = 1, None
    for side, stride in seen:
        if smallest is None or side < smallest:
            total, smallest = total * stride, side
    return out, total


def total_stride(net: nn.Module, input_shape: Sequence[int]) -> tuple[Any, int]:
    """(an output, the total stride) of ``net``: measured on a ``PROBE_SIDE`` input when the
    input is smaller and the model takes one (no map is clamped at 1x1 there for strides up to
    ``PROBE_SIDE``), else on the input itself."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) >= 2 and min(shape[1:]) < PROBE_SIDE:
        try:
            return _strided_forward(net, (shape[0],) + (PROBE_SIDE,) * len(shape[1:]))
        except Exception:  # noqa: BLE001, S110 - a model of one input size (a ViT): its own
            pass
    return _strided_forward(net, shape)


def check_external_fits(net: nn.Module, input_shape: Sequence[int], num_classes: int,
                        label: str) -> None:
    """One line unless ``net`` runs on ``input_shape`` (``check_input_fits``), gives
    ``num_classes`` logits, and its total stride is not larger than the input's sides."""
    from prunelab.models.registry import check_input_fits

    shape = tuple(int(s) for s in input_shape)
    try:
        check_input_fits(net, shape, label)
    except ValueError as exc:
        raise ExternalModelError(one_line(exc)) from None
    out, stride = total_stride(net, shape)
    if torch.is_tensor(out) and out.dim() == 2 and out.shape[1] != int(num_classes):
        raise ExternalModelError(f"model={label} gives {out.shape[1]} logits per input; the data "
                                 f"has {num_classes} classes (give the model num_classes "
                                 f"outputs)")
    if len(shape) >= 2 and min(shape[1:]) < stride:
        side = "x".join(str(s) for s in shape[1:])
        least = "x".join(str(stride) for _ in shape[1:])
        raise ExternalModelError(f"input {side} is smaller than model={label}'s total stride "
                                 f"{stride}; allowed: inputs of at least {least} (resize the "
                                 f"data, or choose a model with a smaller total stride)")
