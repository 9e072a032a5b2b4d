"""Tests for the model registry, the models and their Hydra configs."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from prunelab.models import (
    EXTERNAL_OPTIONS,
    MODELS,
    UnknownModelError,
    build_model,
    check_input_fits,
    get_model_class,
    get_model_name,
    init_weights,
    list_models,
    output_layer_name,
)

CONF_DIR = Path(__file__).resolve().parents[2] / "src" / "prunelab" / "conf" / "model"
MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
MNIST_MODELS = ["mlp", "lenet5", "seed_cnn", "vit_tiny"]
EXPECTED = {
    "mlp", "lenet5", "seed_cnn", "conv2", "conv4", "conv6",
    "resnet20", "resnet56", "vgg11", "vgg16", "vit_tiny",
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def n_weights(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


def test_expected_models_registered():
    assert set(list_models()) == EXPECTED
    assert list_models() == sorted(MODELS)


@pytest.mark.parametrize(
    ("name", "shape"),
    [(n, CIFAR) for n in sorted(EXPECTED)] + [(n, MNIST) for n in MNIST_MODELS],
)
def test_build_and_forward(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes=10)
    assert isinstance(model, nn.Module)
    assert get_model_name(model) == name
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    check_input_fits(model, shape, name)


def test_registry_names_match_yaml_files():
    yaml_names = {p.stem for p in CONF_DIR.glob("*.yaml")} - set(EXTERNAL_OPTIONS)
    assert yaml_names == set(MODELS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_yaml_instantiates_and_spells_out_constructor_args(name):
    cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    cls = MODELS[name]
    assert cfg._target_ == f"{cls.__module__}.{cls.__name__}"
    signature = inspect.signature(cls.__init__)
    tunable = {p for p in signature.parameters if p not in ("self", "input_shape", "num_classes")}
    keys = set(cfg.keys()) - {"_target_"}
    assert keys == tunable, f"{name}.yaml keys {keys} != constructor args {tunable}"
    for key in keys:  # defaults in yaml agree with the Python defaults
        default = signature.parameters[key].default
        value = OmegaConf.to_container(cfg, resolve=True)[key]
        if isinstance(default, tuple):
            default = list(default)
        assert value == default, f"{name}.{key}: yaml {value!r} != default {default!r}"
    model = instantiate(cfg, input_shape=(3, 32, 32), num_classes=5)
    assert type(model) is cls
    assert model.input_shape == (3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_yaml_overrides_reach_the_constructor():
    cfg = OmegaConf.load(CONF_DIR / "mlp.yaml")
    cfg.hidden = [50, 20, 10]
    model = instantiate(cfg, input_shape=[1, 28, 28], num_classes=10)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [50, 20, 10, 10]
    assert model.hidden == (50, 20, 10)


def test_exact_parameter_counts():
    assert n_params(build_model("mlp", MNIST, 10)) == 266_610  # LeNet-300-100
    assert n_params(build_model("lenet5", MNIST, 10)) == 431_080  # Caffe LeNet-5
    # seed CNN: 320 + 18,496 + (9216*128 + 128) + 1,290 (28 -> 26 -> 24 -> pool 12)
    assert n_params(build_model("seed_cnn", MNIST, 10)) == 1_199_882
    # Frankle & Carbin 2019 Figure 2: Conv-2 4.3M, Conv-4 2.4M weights.
    assert n_weights(build_model("conv2", CIFAR, 10)) == 4_300_992
    assert n_weights(build_model("conv4", CIFAR, 10)) == 2_425_024
    assert n_weights(build_model("conv6", CIFAR, 10)) == 2_261_184
    # He et al. 2016: ResNet-20 0.27M, ResNet-56 0.85M (option A); option B adds
    # two projections: 16*32 + 2*32 + 32*64 + 2*64 = 2,752 parameters.
    resnet20 = n_params(build_model("resnet20", CIFAR, 10))
    assert resnet20 == 269_722 + 2_752
    assert math.isclose(resnet20 / 1e6, 0.27, abs_tol=0.005)
    assert n_params(build_model("resnet56", CIFAR, 10)) == 853_018 + 2_752
    assert 14.6e6 < n_params(build_model("vgg16", CIFAR, 10)) < 14.8e6
    assert 9.1e6 < n_params(build_model("vgg11", CIFAR, 10)) < 9.3e6


def test_architecture_details():
    lenet = build_model("lenet5", MNIST, 10)
    convs = [m for m in lenet.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]
    assert not any(isinstance(m, nn.ReLU) for m in lenet.features)  # Caffe: no conv ReLU
    assert lenet.classifier[0].in_features == 800 and lenet.classifier[0].out_features == 500

    conv6 = build_model("conv6", CIFAR, 10)
    assert [c.out_channels for c in conv6.modules() if isinstance(c, nn.Conv2d)] == [
        64, 64, 128, 128, 256, 256
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in conv6.modules()) == 3
    assert [m.out_features for m in conv6.modules() if isinstance(m, nn.Linear)] == [256, 256, 10]

    resnet56 = build_model("resnet56", CIFAR, 10)
    convs = [m for m in resnet56.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 55  # 6n + 1 3x3 convs + fc = 56 layers
    shortcuts = [n for n, m in resnet56.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert shortcuts == ["layer2.0.shortcut.0", "layer3.0.shortcut.0"]

    vgg16 = build_model("vgg16", CIFAR, 10)
    params = dict(vgg16.named_parameters())
    assert isinstance(vgg16.get_submodule("features.0"), nn.Conv2d)
    assert isinstance(vgg16.get_submodule("features.1"), nn.BatchNorm2d)
    assert "features.0.weight" in params and "classifier.weight" in params
    assert sum(isinstance(m, nn.Conv2d) for m in vgg16.modules()) == 13
    assert sum(isinstance(m, nn.Conv2d) for m in build_model("vgg11", CIFAR, 10).modules()) == 8


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as info:
        build_model("resnet1000", CIFAR, 10)
    message = str(info.value)
    assert "\n" not in message
    assert "resnet1000" in message
    for name in EXPECTED:
        assert name in message
    with pytest.raises(ValueError):
        get_model_class("nope")
    assert isinstance(info.value, UnknownModelError)


def test_check_input_fits_rejects_vgg16_on_mnist():
    model = build_model("vgg16", MNIST, 10)  # constructor itself does not fail
    model.train()
    with pytest.raises(ValueError) as info:
        check_input_fits(model, MNIST, "vgg16")
    message = str(info.value)
    assert message.startswith("model=vgg16 does not fit input_shape=(1, 28, 28) from data: ")
    assert "\n" not in message
    assert "collapse" in message
    assert model.training and all(m.training for m in model.modules())  # mode restored


def test_check_input_fits_passes_and_restores_mode():
    model = build_model("mlp", MNIST, 10)
    model.eval()
    check_input_fits(model, MNIST, "mlp")
    assert not model.training
    model.train()
    check_input_fits(model, MNIST, "mlp")
    assert model.training


def test_check_input_fits_rejects_wrong_data_shape():
    model = build_model("mlp", MNIST, 10)
    with pytest.raises(ValueError, match=r"^model=mlp does not fit input_shape=\(3, 32, 32\)"):
        check_input_fits(model, CIFAR, "mlp")


def test_collapsing_input_reported_in_one_line_not_by_constructor():
    prefix = r"^model=lenet5 does not fit input_shape=\(1, 8, 8\) from data: "
    with pytest.raises(ValueError, match=prefix + "spatial size collapses"):
        build_model("lenet5", (1, 8, 8), 10)
    # Hydra instantiation succeeds; the train entry point's check reports it
    cfg = OmegaConf.load(CONF_DIR / "lenet5.yaml")
    model = instantiate(cfg, input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match=prefix) as info:
        check_input_fits(model, (1, 8, 8), "lenet5")
    assert "\n" not in str(info.value)
    for name in ("seed_cnn", "conv6"):
        with pytest.raises(ValueError, match=f"^model={name} does not fit"):
            build_model(name, (3, 4, 4), 10)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_output_layer_is_final_linear(name):
    shape = MNIST if name in MNIST_MODELS else CIFAR
    model = build_model(name, shape, num_classes=7)
    layer_name = model.output_layer_name()
    assert layer_name == output_layer_name(model)
    layer = model.get_submodule(layer_name)
    assert isinstance(layer, nn.Linear) and layer.out_features == 7
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    handle.remove()
    assert torch.equal(captured["out"], out)


def test_init_schemes():
    lenet = build_model("lenet5", MNIST, 10)
    bound = math.sqrt(3.0 / 25)  # Caffe xavier filler, fan_in = 1*5*5
    w = lenet.features[0].weight
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert torch.count_nonzero(lenet.features[0].bias) == 0
    torch.manual_seed(0)
    resnet = build_model("resnet56", CIFAR, 10)
    w = resnet.layer3[0].conv2.weight  # fan_in = 64*9
    assert math.isclose(w.std().item(), math.sqrt(2 / (64 * 9)), rel_tol=0.05)
    with pytest.raises(ValueError, match="unknown init scheme"):
        init_weights(resnet, "orthogonal")
    with pytest.raises(ValueError, match="unknown init scheme"):
        build_model("mlp", MNIST, 10, init="bogus")


def test_dropout_option():
    model = build_model("seed_cnn", MNIST, 10, dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert isinstance(model.get_submodule(model.output_layer_name()), nn.Linear)
    assert not any(isinstance(m, nn.Dropout) for m in build_model("seed_cnn", MNIST, 10).modules())
