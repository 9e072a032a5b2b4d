"""A small timm-style model registry.

Models register themselves with :func:`register_model`::

    @register_model("lenet5")
    class LeNet5(PrunelabModel):
        def __init__(self, input_shape, num_classes, ...): ...

and are built by name with :func:`build_model`.  Every registered model is a
plain :class:`torch.nn.Module` whose constructor starts with
``(input_shape, num_classes)`` where ``input_shape`` is ``(C, H, W)`` as reported
by the datamodule, so that any model runs on any dataset whose shape fits.

:func:`check_input_fits` is how the train entry point turns "this model does
not fit this data" into a one-line, user-facing :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from prunelab.errors import UserError

__all__ = [
    "MODELS",
    "UnknownModelError",
    "build_model",
    "check_input_fits",
    "fit_error",
    "get_model_class",
    "get_model_name",
    "list_models",
    "output_layer_name",
    "probe_forward",
    "register_model",
]

#: Registered model classes, keyed by registry name.
MODELS: dict[str, type[nn.Module]] = {}

_T = TypeVar("_T", bound=type[nn.Module])


class UnknownModelError(KeyError, UserError):
    """Raised for an unregistered model name.

    Subclasses both :class:`KeyError` and :class:`ValueError` so callers may
    catch either; ``str()`` gives the plain one-line message (a bare
    ``KeyError`` would wrap it in quotes).
    """

    def __str__(self) -> str:  # noqa: D105
        return str(self.args[0]) if self.args else ""


def register_model(name: str) -> Callable[[_T], _T]:
    """Class decorator registering a model class under ``name``.

    The class gets a ``model_name`` attribute set to ``name``.  Registering two
    different classes under one name raises :class:`ValueError`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def decorator(cls: _T) -> _T:
        existing = MODELS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"model name {name!r} is already registered to "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        MODELS[name] = cls
        cls.model_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def list_models() -> list[str]:
    """Sorted list of registered model names."""
    return sorted(MODELS)


def get_model_class(name: str) -> type[nn.Module]:
    """Return the class registered as ``name``.

    Raises :class:`UnknownModelError` (a ``KeyError`` and ``ValueError``) with a
    one-line message listing the known names.
    """
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def get_model_name(model_or_class: nn.Module | type[nn.Module]) -> str | None:
    """Registry name of a model instance or class, or ``None`` if unregistered."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    for name, registered in MODELS.items():
        if registered is cls:
            return name
    return None


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> nn.Module:
    """Instantiate the model registered as ``name``.

    Args:
        name: registry name (see :func:`list_models`).
        input_shape: ``(C, H, W)`` of one input sample.
        num_classes: number of output logits.
        **kwargs: model-specific constructor arguments.

    Raises the one-line "does not fit" :class:`ValueError` of
    :func:`fit_error` when the model's constructor found that ``input_shape``
    collapses (models record this in ``input_fit_error`` instead of raising,
    so that Hydra instantiation succeeds); a full forward check is
    :func:`check_input_fits`.
    """
    cls = get_model_class(name)
    model = cls(input_shape=input_shape, num_classes=num_classes, **kwargs)
    reason = getattr(model, "input_fit_error", None)
    if reason:
        raise fit_error(name, input_shape, reason)
    return model


def output_layer_name(model: nn.Module) -> str:
    """Qualified name of the model's final classifier layer.

    Uses ``model.output_layer_name()`` when the model provides it, otherwise
    falls back to the last :class:`torch.nn.Linear` in module registration order.
    """
    method = getattr(model, "output_layer_name", None)
    if callable(method):
        return method()
    last = None
    for qualname, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = qualname
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear output layer")
    return last


def _format_shape(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def fit_error(name: str, input_shape: Sequence[int], reason: str) -> ValueError:
    """Build the one-line "model does not fit the data" error.

    Format: ``model=<name> does not fit input_shape=(C, H, W) from data: <reason>``.
    """
    reason = " ".join(str(reason).split())  # collapse to one line
    if len(reason) > 240:
        reason = reason[:237] + "..."
    return ValueError(
        f"model={name} does not fit input_shape={_format_shape(input_shape)} "
        f"from data: {reason}"
    )


def _short_exception(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {first}"


_SPATIAL_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
)


def probe_forward(
    module: nn.Module, input_shape: Sequence[int], batch_size: int = 2, prefix: str = ""
) -> tuple[Any, str | None]:
    """Run ``module`` on zeros of shape ``(batch_size, *input_shape)`` and diagnose.

    The forward runs under :func:`torch.no_grad` in eval mode on the device
    and dtype of the module's parameters; the previous train/eval mode of every
    submodule is restored afterwards.

    Returns:
        ``(output, None)`` on success, or ``(output_or_None, reason)`` where
        ``reason`` is a one-line description naming the failing leaf module
        (qualified names get ``prefix``), e.g. ``spatial size collapses in
        features.43 (MaxPool2d) on input (2, 512, 1, 1): RuntimeError: ...``.
    """
    shape = tuple(int(s) for s in input_shape)
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    entered: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    collapsed: list[str] = []
    names: dict[nn.Module, str] = {}

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        in_shape = tuple(args[0].shape) if args and torch.is_tensor(args[0]) else ()
        entered.append((names[mod], mod, in_shape))

    def post_hook(mod: nn.Module, args: tuple, output: Any) -> None:
        if (
            not collapsed
            and isinstance(mod, _SPATIAL_TYPES)
            and torch.is_tensor(output)
            and output.dim() >= 3
            and any(s == 0 for s in output.shape[2:])
        ):
            collapsed.append(
                f"spatial size collapses to {tuple(output.shape[2:])} at "
                f"{names[mod]} ({type(mod).__name__})"
            )

    handles = []
    for qualname, mod in module.named_modules():
        if next(iter(mod.children()), None) is None:  # leaf module
            names[mod] = prefix + qualname if qualname else (prefix.rstrip(".") or type(mod).__name__)
            handles.append(mod.register_forward_pre_hook(pre_hook))
            handles.append(mod.register_forward_hook(post_hook))

    modes = {m: m.training for m in module.modules()}
    module.eval()
    out: Any = None
    reason: str | None = None
    try:
        with torch.no_grad():
            out = module(torch.zeros(batch_size, *shape, device=device, dtype=dtype))
    except Exception as exc:  # noqa: BLE001 - any failure means "does not fit"
        if collapsed:
            reason = collapsed[0]
        else:
            where = ""
            if entered:
                qualname, mod, in_shape = entered[-1]
                where = f"in {qualname} ({type(mod).__name__}) on input {in_shape}: "
                if isinstance(mod, _SPATIAL_TYPES):
                    where = "spatial size collapses " + where
            reason = where + _short_exception(exc)
    finally:
        for handle in handles:
            handle.remove()
        for mod, training in modes.items():
            mod.training = training
    if reason is None and collapsed:
        reason = collapsed[0]
    return out, reason


def check_input_fits(
    model: nn.Module, input_shape: Sequence[int], name: str | None = None
) -> None:
    """Raise a one-line :class:`ValueError` unless ``model`` accepts ``input_shape``.

    Runs a forward pass on ``torch.zeros(2, *input_shape)`` under
    :func:`torch.no_grad` in eval mode (the previous train/eval mode of every
    submodule is restored afterwards; see :func:`probe_forward`).  The check
    fails if the model's constructor recorded an ``input_fit_error``, if the
    forward raises, if a convolution or pooling layer produces an empty
    spatial output (the spatial size collapsed), or if the output is not
    ``(2, num_classes)`` where ``num_classes`` is the output layer's
    ``out_features``.  The message reads
    ``model=<name> does not fit input_shape=(C, H, W) from data: <reason>``.

    Args:
        model: the model to check.
        input_shape: ``(C, H, W)`` of one sample, as reported by the data.
        name: model name used in the message (defaults to the registry name or
            the class name).
    """
    if name is None:
        name = get_model_name(model) or type(model).__name__
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise fit_error(name, shape, "input_shape must be non-empty and positive")
    reason = getattr(model, "input_fit_error", None)
    if reason:
        raise fit_error(name, shape, reason)
    out, reason = probe_forward(model, shape, batch_size=2)
    if reason:
        raise fit_error(name, shape, reason)
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise fit_error(name, shape, f"forward returned {got}, expected (2, num_classes)")
    try:
        head = model.get_submodule(output_layer_name(model))
    except (ValueError, AttributeError):
        head = None
    if isinstance(head, nn.Linear) and out.shape[1] != head.out_features:
        raise fit_error(
            name,
            shape,
            f"forward returned {tuple(out.shape)}, expected (2, {head.out_features})",
        )
