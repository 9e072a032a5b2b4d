"""torchvision and timm classifiers as prunelab models (``model=torchvision``, ``model=timm``).

Built for the data's classes (a fresh head of the right size), weights never downloaded:
torchvision's from the local torch hub cache (``torch.hub.get_dir()/checkpoints``), timm's from a
local file, both read with ``weights_only=True``. :mod:`prunelab.models.external` is the entry
point that builds and checks every ``model=`` option.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.errors import UserError, one_line

__all__ = ["ExternalModelError", "OutputLayer", "set_facts", "timm_model", "torchvision_model"]


class ExternalModelError(UserError):
    """A ``model=`` choice beyond the zoo that cannot be built for this data (one line)."""


class OutputLayer:
    """An external model's ``output_layer_name()``: the qualified name of its classifier head
    (a plain callable attribute, so the model still pickles and deep-copies)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"OutputLayer({self.name!r})"


def set_facts(net: nn.Module, shape: tuple[int, ...], classes: int) -> None:
    """``net.input_shape`` / ``net.num_classes`` where the model has none (other code traces
    the model with that input shape)."""
    if getattr(net, "input_shape", None) is None:
        net.input_shape = shape
    if getattr(net, "num_classes", None) is None:
        net.num_classes = classes


def _plain(kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(kwargs, DictConfig):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    if not isinstance(kwargs, Mapping):
        raise ExternalModelError(f"model.kwargs={kwargs!r} is not a mapping; allowed: "
                                 f"model.kwargs={{key: value, ...}}")
    return dict(kwargs)


def _unknown(library: str, name: str, known: list[str], listing: str) -> ExternalModelError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    return ExternalModelError(
        f"unknown model={library} model.name={name!r}; closest: {', '.join(close) or 'none'} "
        f"(all {len(known)}: python -c \"{listing}\")")


def _call(label: str, what: str, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``build(*args, **kwargs)``; a bad argument (the builder's TypeError, ValueError,
    AssertionError or a state dict that does not fit) as one line."""
    try:
        return build(*args, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        if isinstance(exc, UserError):
            raise
        raise ExternalModelError(f"model={label} cannot be built{what}: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    """``Type: message`` in one line; a state dict that does not fit with its first mismatch,
    an unpicklable file without torch's advice."""
    if type(exc).__name__ == "UnpicklingError":
        return ("UnpicklingError: not a plain state dict (prunelab reads weights with "
                "weights_only=True)")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else one_line(exc)
    return f"{type(exc).__name__}: {text[:300]}"


def _with(arguments: Mapping[str, Any]) -> str:
    return (" with " + ", ".join(f"{k}={v!r}" for k, v in arguments.items())) if arguments else ""


def _head(net: nn.Module, classes: int) -> str | None:
    """The classifier head: the last Linear or Conv2d with ``classes`` outputs."""
    found = None
    for qualname, mod in net.named_modules():
        if (isinstance(mod, nn.Linear) and mod.out_features == classes) or (
                isinstance(mod, nn.Conv2d) and mod.out_channels == classes):
            found = qualname
    return found


def _mark_head(net: nn.Module, name: str | None) -> None:
    if name and not callable(getattr(type(net), "output_layer_name", None)):
        net.output_layer_name = OutputLayer(name)


# -- torchvision --------------------------------------------------------------------------------
def torchvision_model(input_shape: Sequence[int], num_classes: int, name: str = "resnet18",
                      weights: str | None = None, image_size: int | None = None,
                      kwargs: Mapping[str, Any] | None = None, load_weights: bool = True
                      ) -> nn.Module:
    """``torchvision.models.get_model(name)`` with ``num_classes`` outputs. ``weights``: a
    torchvision weights name (``IMAGENET1K_V1``, ``ResNet18_Weights.IMAGENET1K_V1``, ``DEFAULT``)
    read from the local torch hub cache (the head is then replaced by a fresh one unless the
    data has as many classes as the weights); ``image_size``: vision transformers only (default:
    the input's side); ``kwargs``: more builder arguments."""
    from torchvision import models as tvm

    name, label, extra = str(name), f"torchvision/{name}", _plain(kwargs)
    known = tvm.list_models(module=tvm)
    if name not in known:
        raise _unknown("torchvision", name, known, "import torchvision; print(torchvision.models."
                                                   "list_models(module=torchvision.models))")
    vit = tvm.get_model_builder(name).__module__.endswith("vision_transformer")
    if vit:
        extra.setdefault("image_size", _square_side(input_shape, label)
                         if image_size is None else int(image_size))
    elif image_size is not None:
        raise ExternalModelError(f"model.image_size={image_size}: only vision transformers (vit_*) "
                                 f"take it; model={label} takes any input size")
    chosen = None if weights is None else _torchvision_weights(name, str(weights))
    if chosen is None or not load_weights:
        net = _call(label, _with(extra), tvm.get_model, name, num_classes=int(num_classes),
                    **extra)
    else:
        path = _hub_file(name, str(weights), chosen)
        size = extra.pop("image_size", None)
        with _local_weights(path):
            net = _call(label, f" with weights {path}", tvm.get_model, name, weights=chosen, **extra)
        if size is not None and size != net.image_size:  # pretrained ViT at another input size
            net = _resized_vit(net, name, int(size), len(chosen.meta["categories"]), extra, label)
        old = _head(net, len(chosen.meta["categories"]))
        if old is not None and len(chosen.meta["categories"]) != int(num_classes):
            net.set_submodule(old, _fresh_head(net.get_submodule(old), int(num_classes)))
    stem = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if stem is not None and len(input_shape) == 3 and stem.in_channels != int(input_shape[0]):
        raise ExternalModelError(
            f"model={label} takes {stem.in_channels}-channel images; the data has "
            f"{int(input_shape[0])} (input_shape={tuple(int(s) for s in input_shape)}); allowed: "
            f"{stem.in_channels}-channel data, or model=timm (its first layer takes the data's)")
    set_facts(net, tuple(int(s) for s in input_shape), int(num_classes))
    _mark_head(net, _head(net, int(num_classes)))
    return net


def _square_side(input_shape: Sequence[int], label: str) -> int:
    spatial = [int(s) for s in input_shape[1:]]
    if len(spatial) != 2 or spatial[0] != spatial[1]:
        raise ExternalModelError(f"model={label} is a vision transformer for square images; the "
                                 f"data's input is {tuple(int(s) for s in input_shape)}")
    return spatial[0]


def _torchvision_weights(name: str, value: str) -> Any:
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    owner, _, member = value.rpartition(".")
    allowed = [w.name for w in enum] + ["DEFAULT"]
    if (owner and owner != enum.__name__) or member not in allowed:
        raise ExternalModelError(f"model.weights={value!r} is not a weights name of torchvision "
                                 f"{name}; allowed: {', '.join(allowed)} (or "
                                 f"{enum.__name__}.<name>), null for random initialization")
    return enum[member] if member != "DEFAULT" else enum.DEFAULT


def _hub_file(name: str, value: str, chosen: Any) -> Path:
    from urllib.parse import urlparse

    file = os.path.basename(urlparse(chosen.url).path)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    if not (folder / file).is_file():
        raise ExternalModelError(
            f"model.weights={value}: {file} is not in the local torch hub cache {folder} "
            f"(prunelab never downloads); on a machine with internet run python -c \"import "
            f"torchvision; torchvision.models.get_model('{name}', weights='{chosen.name}')\", "
            f"then copy {file} from its ~/.cache/torch/hub/checkpoints to {folder}")
    return folder / file


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's
        raise ExternalModelError(f"cannot read the weights file {path}: {_why(exc)}") from None


@contextlib.contextmanager
def _local_weights(path: Path) -> Iterator[None]:
    """torchvision's builders read their weights from ``path`` with ``weights_only=True``
    (their own loader would download a missing file and unpickle anything)."""
    from torchvision.models import WeightsEnum

    original = WeightsEnum.get_state_dict
    WeightsEnum.get_state_dict = lambda self, *a, **k: _read_state_dict(path)  # type: ignore
    try:
        yield
    finally:
        WeightsEnum.get_state_dict = original  # type: ignore[method-assign]


def _resized_vit(net: nn.Module, name: str, size: int, categories: int,
                 extra: dict[str, Any], label: str) -> nn.Module:
    from torchvision.models import get_model
    from torchvision.models.vision_transformer import interpolate_embeddings

    resized = _call(label, f" with image_size={size}", get_model, name, image_size=size,
                    num_classes=categories, **extra)
    resized.load_state_dict(interpolate_embeddings(size, net.patch_size, net.state_dict()))
    return resized


def _fresh_head(old: nn.Module, classes: int) -> nn.Module:
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, classes, bias=old.bias is not None)
    return nn.Conv2d(old.in_channels, classes, old.kernel_size, old.stride, old.padding,
                     bias=old.bias is not None)


# -- timm ---------------------------------------------------------------------------------------
def timm_model(input_shape: Sequence[int], num_classes: int, name: str = "resnet18",
               weights: str | None = None, kwargs: Mapping[str, Any] | None = None,
               load_weights: bool = True) -> nn.Module:
    """``timm.create_model(name, num_classes=..., in_chans=<the data's channels>)``;
    ``weights``: a local weights file (``.pth``, ``.bin``, ``.safetensors``; its head kept when
    it has ``num_classes`` outputs, else a fresh one); ``kwargs``: more model arguments (e.g.
    ``img_size`` for a vision transformer)."""
    try:
        import timm
    except ImportError:
        raise ExternalModelError("model=timm needs the timm package (pip install prunelab[timm])"
                                 ) from None
    name, label, extra = str(name), f"timm/{name}", _plain(kwargs)
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models(), "import timm; print(timm.list_models())")
    if len(input_shape) == 3:
        extra.setdefault("in_chans", int(input_shape[0]))
    if weights is None or not load_weights:
        net = _call(label, _with(extra), timm.create_model, name, pretrained=False,
                    num_classes=int(num_classes), **extra)
    else:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise ExternalModelError(f"model.weights={weights}: no such file; model=timm loads a "
                                     f"local weights file (.pth, .bin or .safetensors; nothing is "
                                     f"downloaded)")
        from timm.models import load_state_dict

        try:
            state = load_state_dict(str(path))  # weights_only=True; safetensors; EMA unwrapped
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's
            raise ExternalModelError(f"cannot read the weights file {path}: {_why(exc)}"
                                     ) from None
        overlay: dict[str, Any] = {"state_dict": state}
        head = getattr(timm.get_pretrained_cfg(name.split(".")[0]), "classifier", None)
        for key in [head] if isinstance(head, str) else list(head or ()):
            if f"{key}.weight" in state:
                overlay["num_classes"] = int(state[f"{key}.weight"].shape[0])
        net = _call(label, f" with weights {path}", timm.create_model, name, pretrained=True,
                    num_classes=int(num_classes), pretrained_cfg_overlay=overlay, **extra)
    set_facts(net, tuple(int(s) for s in input_shape), int(num_classes))
    classifier = net.get_classifier() if hasattr(net, "get_classifier") else None
    names = {id(m): n for n, m in net.named_modules()}
    _mark_head(net, names.get(id(classifier)) if isinstance(classifier, (nn.Linear, nn.Conv2d))
               else _head(net, int(num_classes)))
    return net
