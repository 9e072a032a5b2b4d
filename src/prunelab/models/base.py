"""Shared building blocks for prunelab models.

* :class:`PrunelabModel` - base class storing ``input_shape``/``num_classes`` and
  exposing :meth:`PrunelabModel.output_layer_name`.
* :func:`init_weights` - the weight-initialisation schemes used by the papers
  the models reproduce.
* :func:`infer_flat_features` - flattened feature size of a feature extractor
  for a given input shape (raises the standard one-line "does not fit" error).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models.registry import fit_error, probe_forward

__all__ = ["INIT_SCHEMES", "PrunelabModel", "infer_flat_features", "init_weights", "to_shape"]

#: Supported values of the models' ``init`` argument.
INIT_SCHEMES = (
    "default",
    "kaiming_normal",
    "kaiming_normal_fan_out",
    "xavier_normal",
    "xavier_uniform",
    "caffe_xavier",
    "slimming",
)


def to_shape(input_shape: Sequence[int], ndim: int | None = 3) -> tuple[int, ...]:
    """Validate and convert ``input_shape`` (list, tuple, ListConfig) to ints."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"input_shape must be a sequence of ints, got {input_shape!r}") from exc
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"input_shape must have {ndim} entries (C, H, W), got {shape}")
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape entries must be positive, got {shape}")
    return shape


class PrunelabModel(nn.Module):
    """Base class of all registered prunelab models.

    Subclasses set ``self._output_layer`` to the qualified name of their final
    :class:`torch.nn.Linear` (the layer producing the class logits).
    """

    model_name: str = ""
    _output_layer: str = ""

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.input_shape = to_shape(input_shape, ndim=None)
        self.num_classes = num_classes

    #: Why the constructor's ``input_shape`` does not fit (``None`` if it fits).
    input_fit_error: str | None = None

    def _flat_features(self, features: nn.Module) -> int:
        """Flattened size of ``features`` on ``self.input_shape``.

        Constructors never raise for a misfitting input shape, so that Hydra
        instantiation succeeds and :func:`prunelab.models.check_input_fits`
        can report the problem in one line.  If the features collapse, the
        reason is stored in :attr:`input_fit_error` and a placeholder width of
        1 is returned; such a model cannot run a forward pass.
        """
        name = getattr(type(self), "model_name", "") or type(self).__name__
        try:
            return infer_flat_features(features, self.input_shape, name)
        except ValueError as exc:
            self.input_fit_error = str(exc).split(" from data: ", 1)[-1]
            return 1

    def output_layer_name(self) -> str:
        """Qualified module name of the final classifier ``nn.Linear``."""
        return self._output_layer

    def output_layer(self) -> nn.Linear:
        """The final classifier ``nn.Linear`` module."""
        layer = self.get_submodule(self._output_layer)
        assert isinstance(layer, nn.Linear)
        return layer

    def extra_repr(self) -> str:  # noqa: D102
        return f"input_shape={self.input_shape}, num_classes={self.num_classes}"


def init_weights(model: nn.Module, scheme: str) -> None:
    """Initialise conv/linear/batch-norm parameters of ``model`` in place.

    Schemes (biases of conv/linear layers are zeroed by all but ``default``;
    batch-norm weights are set to 1 and biases to 0):

    * ``default`` - keep PyTorch's default initialisation.
    * ``kaiming_normal`` - He et al. 2015: N(0, 2/fan_in) for conv and linear
      weights (used by He et al. 2016 for ResNets).
    * ``kaiming_normal_fan_out`` - N(0, 2/fan_out) for conv and linear weights.
    * ``xavier_normal`` - Glorot & Bengio 2010 Gaussian; Frankle & Carbin 2019
      use it for LeNet-300-100 and Conv-2/4/6.
    * ``xavier_uniform`` - Glorot uniform (the Keras default).
    * ``caffe_xavier`` - Caffe's ``xavier`` filler, U(-sqrt(3/fan_in),
      sqrt(3/fan_in)) as in the Caffe LeNet model used by Han et al. 2015.
    * ``slimming`` - as in Liu et al. 2017's network-slimming code: conv
      weights N(0, 2/fan_out), linear weights N(0, 0.01^2).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
            continue
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        weight = module.weight
        if scheme == "kaiming_normal":
            nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
        elif scheme == "kaiming_normal_fan_out":
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(weight)
        elif scheme == "xavier_uniform":
            nn.init.xavier_uniform_(weight)
        elif scheme == "caffe_xavier":
            fan_in = weight[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(weight, -bound, bound)
        elif scheme == "slimming":
            if isinstance(module, nn.Linear):
                nn.init.normal_(weight, 0.0, 0.01)
            else:
                nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def infer_flat_features(features: nn.Module, input_shape: Sequence[int], model_name: str) -> int:
    """Number of features after flattening ``features(x)`` for one sample.

    Runs a tiny forward pass on zeros (eval mode, no grad, see
    :func:`prunelab.models.registry.probe_forward`); the sub-module names in
    messages are prefixed with ``features.``.  If the spatial size collapses
    or the forward fails, raises the one-line :func:`fit_error` ``ValueError``
    used by :func:`prunelab.models.check_input_fits`.
    """
    shape = tuple(int(s) for s in input_shape)
    out, reason = probe_forward(features, shape, batch_size=1, prefix="features.")
    if reason is None and (not torch.is_tensor(out) or out.numel() == 0):
        reason = "spatial size collapses to an empty feature map before the classifier"
    if reason:
        raise fit_error(model_name, shape, reason)
    return int(out[0].numel())
