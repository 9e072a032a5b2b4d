"""Model zoo and registry.

Importing this package registers every model::

    from prunelab.models import build_model, list_models
    model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)

Registered names: ``mlp``, ``lenet5``, ``seed_cnn``, ``conv2``, ``conv4``,
``conv6``, ``resnet20``, ``resnet56``, ``vgg11``, ``vgg16``.  Each has a Hydra
config ``conf/model/<name>.yaml``.
"""

from prunelab.models.base import INIT_SCHEMES, PrunelabModel, init_weights
from prunelab.models.convnets import Conv2, Conv4, Conv6, ConvNet
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

__all__ = [
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
    "LeNet5",
    "PrunelabModel",
    "ResNet20",
    "ResNet56",
    "SeedCNN",
    "UnknownModelError",
    "build_model",
    "check_input_fits",
    "get_model_class",
    "get_model_name",
    "init_weights",
    "list_models",
    "output_layer_name",
    "probe_forward",
    "register_model",
]
