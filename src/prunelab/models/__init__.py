"""Model zoo and registry.

Importing this package registers every model::

    from prunelab.models import build_model, list_models
    model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)

Registered names: ``mlp``, ``lenet5``, ``seed_cnn``, ``conv2``, ``conv4``,
``conv6``, ``resnet20``, ``resnet56``, ``vgg11``, ``vgg16``, ``vit_tiny``.  Each has a Hydra
config ``conf/model/<name>.yaml``.

Models beyond the zoo (``model=torchvision``, ``model=timm``, ``model=custom``; see
:mod:`prunelab.models.external`) are built, like the zoo's, by one call::

    from prunelab.models import build_from_config
    net = build_from_config(cfg.model, input_shape=(3, 32, 32), num_classes=10)
"""

from prunelab.models.base import INIT_SCHEMES, PrunelabModel, init_weights
from prunelab.models.convnets import Conv2, Conv4, Conv6, ConvNet
from prunelab.models.external import (
    EXTERNAL_OPTIONS,
    ExternalModelError,
    build_from_config,
    check_external_fits,
    model_label,
    total_stride,
)
from prunelab.models.lenet import LeNet5, SeedCNN
from prunelab.models.mlp import MLP
from prunelab.models.registry import (
    MODELS,
    UnknownModelError,
    build_model,
    check_input_fits,
    get_model_class,
    get_model_name,
    list_models,
    output_layer_name,
    probe_forward,
    register_model,
)
from prunelab.models.resnet import CifarResNet, ResNet20, ResNet56
from prunelab.models.vgg import VGG, VGG11, VGG16
from prunelab.models.vit import ViTTiny

__all__ = [
    "EXTERNAL_OPTIONS",
    "INIT_SCHEMES",
    "MLP",
    "MODELS",
    "VGG",
    "VGG11",
    "VGG16",
    "CifarResNet",
    "Conv2",
    "Conv4",
    "Conv6",
    "ConvNet",
    "ExternalModelError",
    "LeNet5",
    "PrunelabModel",
    "ResNet20",
    "ResNet56",
    "SeedCNN",
    "UnknownModelError",
    "ViTTiny",
    "build_from_config",
    "build_model",
    "check_external_fits",
    "check_input_fits",
    "get_model_class",
    "get_model_name",
    "init_weights",
    "list_models",
    "model_label",
    "output_layer_name",
    "probe_forward",
    "register_model",
    "total_stride",
]
