"""The one constructor of every data config, and any user ``LightningDataModule`` by ``_target_``.

:func:`build_datamodule` builds what ``cfg.data`` names: for prunelab's own data modules it is
:func:`hydra.utils.instantiate`; for a user's (``data=custom data._target_=my_pkg.data.MyDM
+data.foo=1``) it also finds the two facts a network is built from, so that every caller gets
``dm.input_shape`` (a tuple) and ``dm.num_classes`` (an int):

* the module's own ``input_shape`` / ``num_classes`` attributes, when it has them;
* ``+data.input_shape=[3,32,32]`` / ``+data.num_classes=10``: passed to the constructor when it
  takes them, else set as the attributes;
* else inferred after ``prepare_data()`` and ``setup("fit")``: the input shape from the first
  training batch (its first element, without the batch dimension), the number of classes from
  the training data set's ``classes`` (their count) or ``num_classes`` (a ``Subset``'s or
  wrapper's ``.dataset`` followed), or the module's ``classes``.

Errors are one line (:class:`~prunelab.data.base.DataError`): no ``_target_``, a ``_target_``
that cannot be imported, an object that is not a LightningDataModule, a number of classes that
cannot be found.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from prunelab.data.base import DataError
from prunelab.errors import UserError, one_line

__all__ = ["build_datamodule"]

#: Keys of a data config that prunelab reads itself when the target's constructor lacks them.
FACT_KEYS = ("input_shape", "num_classes")


def _locate(target: str) -> Any:
    """The object ``target`` (``package.module.Name``) names, or a one-line DataError."""
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as exc:  # noqa: BLE001 - diagnosed below with the import's own error
        first = exc
    module_name, _, attr = target.rpartition(".")
    why = f"'{target}' is not a dotted path package.module.Class"
    if module_name:
        try:
            module = importlib.import_module(module_name)
            why = f"{module_name} has no attribute {attr}"
            return getattr(module, attr)
        except AttributeError:
            pass
        except Exception as exc:  # noqa: BLE001 - any import failure is the user's module
            why = f"importing {module_name} failed: {type(exc).__name__}: {one_line(exc)}"
    raise DataError(f"data._target_={target} cannot be imported ({why}); allowed: a "
                    f"LightningDataModule class importable from the launch directory or an "
                    f"installed package") from first


def _takes(obj: Any, key: str) -> bool:
    """Whether calling ``obj`` accepts the keyword ``key``."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == key or p.kind is p.VAR_KEYWORD for p in params)


def _first_inputs(batch: Any) -> Any:
    """The inputs of a batch: ``(x, y)`` / ``[x, y]`` -> x; a dict's first value."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    while isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    return batch


def _class_count(dm: Any, loader: Any) -> int | None:
    """``num_classes`` or ``len(classes)`` of the training data set (wrappers followed) or of
    the module; None when none has them."""
    seen, candidates = set(), []
    data = getattr(loader, "dataset", None)
    while data is not None and id(data) not in seen:
        seen.add(id(data))
        candidates.append(data)
        data = getattr(data, "dataset", None)
    for obj in [*candidates, dm]:
        n = getattr(obj, "num_classes", None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
        classes = getattr(obj, "classes", None)
        if classes is not None and hasattr(classes, "__len__") and len(classes) > 0:
            return len(classes)
    return None


def _infer(dm: pl.LightningDataModule, target: str, shape: Any, classes: Any
           ) -> tuple[Any, Any]:
    """The missing facts from the data: after prepare_data / setup("fit"), the first training
    batch's input shape and the training set's classes."""
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    if shape is None:
        x = _first_inputs(next(iter(loader)))
        if not hasattr(x, "shape"):
            raise DataError(f"data._target_={target}: its training batches hold no tensor "
                            f"first ({type(x).__name__}); set +data.input_shape=[C,H,W] or an "
                            f"input_shape attribute")
        shape = tuple(x.shape[1:])
    if classes is None:
        classes = _class_count(dm, loader)
    if classes is None:
        raise DataError(f"data._target_={target}: the number of classes is unknown (no "
                        f"num_classes attribute, no classes / num_classes on its training data "
                        f"set); set +data.num_classes=<N> or a num_classes attribute")
    return shape, classes


def build_datamodule(node: DictConfig | dict) -> pl.LightningDataModule:
    """The data module of a data config, with ``input_shape`` (tuple) and ``num_classes``
    (int) attributes (module docstring)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not isinstance(node, DictConfig):
        node = OmegaConf.create(dict(node))
    if OmegaConf.is_missing(node, "_target_") or not node.get("_target_"):
        raise DataError("data._target_ is not set: data=custom needs data._target_=<package."
                        "module.Class> of a LightningDataModule (extra arguments: +data.<key>=...)")
    target = str(node._target_)
    factory = _locate(target)
    given = {k: node[k] for k in FACT_KEYS if k in node and not _takes(factory, k)}
    if given:  # read here, not passed: a plain copy without them (interpolations resolved)
        plain = OmegaConf.to_container(node, resolve=True)
        node = OmegaConf.create({k: v for k, v in plain.items() if k not in given})
    try:
        dm = instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise cause if cause is not None else exc
    if not isinstance(dm, pl.LightningDataModule):
        raise DataError(f"data._target_={target} built a {type(dm).__name__}, not a "
                        f"pytorch_lightning.LightningDataModule")
    for key, value in given.items():
        setattr(dm, key, OmegaConf.to_object(value) if OmegaConf.is_config(value) else value)
    shape, classes = getattr(dm, "input_shape", None), getattr(dm, "num_classes", None)
    if shape is None or classes is None:
        shape, classes = _infer(dm, target, shape, classes)
    try:
        shape, classes = tuple(int(d) for d in shape), int(classes)
    except (TypeError, ValueError):
        raise DataError(f"data._target_={target}: input_shape={shape!r} / num_classes="
                        f"{classes!r} are not a shape and a count") from None
    if dm.__dict__.get("input_shape") != shape or dm.__dict__.get("num_classes") != classes:
        try:
            dm.input_shape, dm.num_classes = shape, classes
        except AttributeError:  # read-only properties: already what they should be
            pass
    return dm
