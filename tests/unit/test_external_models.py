"""Models beyond the zoo (issue 15): ``model=torchvision``, ``model=timm``, ``model=custom``,
built by :func:`prunelab.models.build_from_config` for the data's shape and classes; weights
from local files only; every bad input one line (no download ever)."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from prunelab.errors import UserError
from prunelab.models import (
    ExternalModelError,
    build_from_config,
    check_input_fits,
    model_label,
    output_layer_name,
)

CONF = Path(__file__).resolve().parents[2] / "src" / "prunelab" / "conf" / "model"
CIFAR = (3, 32, 32)


def node(option: str, **values):
    cfg = OmegaConf.load(CONF / f"{option}.yaml")
    return OmegaConf.merge(cfg, values) if values else cfg


def forward(net: nn.Module, shape) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.randn(2, *shape))


def message(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Any attempt to download fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def hub(tmp_path):
    """An empty local torch hub cache (``torch.hub.get_dir()``) for the test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


# -- torchvision --------------------------------------------------------------------------------
TORCHVISION = [("resnet18", CIFAR), ("resnet50", CIFAR), ("mobilenet_v2", CIFAR),
               ("mobilenet_v3_small", (3, 64, 64)), ("efficientnet_b0", CIFAR),
               ("shufflenet_v2_x0_5", CIFAR), ("squeezenet1_0", CIFAR), ("densenet121", CIFAR),
               ("regnet_x_400mf", (3, 64, 64)), ("vgg11_bn", CIFAR), ("convnext_tiny", CIFAR),
               ("vit_b_16", CIFAR)]


@pytest.mark.parametrize(("name", "shape"), TORCHVISION)
def test_torchvision_model_builds_for_the_data(name, shape):
    torch.manual_seed(0)
    net = build_from_config(node("torchvision", name=name), shape, 10)
    assert forward(net, shape).shape == (2, 10)
    assert net.input_shape == shape and net.num_classes == 10
    head = net.get_submodule(output_layer_name(net))  # the layer pruning leaves whole
    assert getattr(head, "out_features", getattr(head, "out_channels", None)) == 10
    assert model_label(node("torchvision", name=name)) == f"torchvision/{name}"


def test_squeezenet_conv_head_is_its_output_layer():
    net = build_from_config(node("torchvision", name="squeezenet1_0"), CIFAR, 7)
    assert output_layer_name(net) == "classifier.1"
    assert isinstance(net.classifier[1], nn.Conv2d) and net.classifier[1].out_channels == 7
    check_input_fits(net, CIFAR, "torchvision/squeezenet1_0")


def test_vit_image_size_is_for_vision_transformers():
    """(``vit_b_16`` above is built for the data's 32x32; at torchvision's 224 it would fail.)"""
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("torchvision", name="vit_b_16", image_size=30), CIFAR, 10)
    assert message(exc) == ("model=torchvision/vit_b_16 cannot be built with image_size=30: "
                            "AssertionError: Input shape indivisible by patch size!")
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("torchvision", name="resnet18", image_size=32), CIFAR, 10)
    assert message(exc) == ("model.image_size=32: only vision transformers (vit_*) take it; "
                            "model=torchvision/resnet18 takes any input size")


def test_builder_kwargs_reach_torchvision():
    net = build_from_config(node("torchvision", name="mobilenet_v2", kwargs={"dropout": 0.4}),
                            CIFAR, 10)
    assert net.classifier[0].p == 0.4
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("torchvision", kwargs={"foo": 1}), CIFAR, 10)
    assert message(exc) == ("model=torchvision/resnet18 cannot be built with foo=1: TypeError: "
                            "ResNet.__init__() got an unexpected keyword argument 'foo'")


def _cache_file(weights) -> str:
    return weights.url.rsplit("/", 1)[-1]


@pytest.mark.parametrize("spelling", ["IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT"])
def test_torchvision_weights_names(spelling):
    from prunelab.models.libraries import _torchvision_weights

    chosen = _torchvision_weights("resnet18", spelling)
    assert chosen is torchvision.models.ResNet18_Weights.IMAGENET1K_V1


def test_torchvision_weights_come_from_the_local_hub_cache(hub):
    torch.manual_seed(1)
    pretrained = torchvision.models.resnet18()
    file = _cache_file(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    assert file == "resnet18-f37072fd.pth"
    torch.save(pretrained.state_dict(), hub / file)
    net = build_from_config(node("torchvision", weights="IMAGENET1K_V1"), CIFAR, 10)
    assert torch.equal(net.conv1.weight, pretrained.conv1.weight)
    assert torch.equal(net.layer4[1].conv2.weight, pretrained.layer4[1].conv2.weight)
    assert net.fc.out_features == 10 and output_layer_name(net) == "fc"  # a fresh head
    kept = build_from_config(node("torchvision", weights="DEFAULT"), CIFAR, 1000)
    assert torch.equal(kept.fc.weight, pretrained.fc.weight)  # as many classes: head kept


def test_torchvision_weights_replace_a_conv_head(hub):
    torch.manual_seed(2)
    pretrained = torchvision.models.squeezenet1_0()
    torch.save(pretrained.state_dict(),
               hub / _cache_file(torchvision.models.SqueezeNet1_0_Weights.IMAGENET1K_V1))
    net = build_from_config(node("torchvision", name="squeezenet1_0", weights="IMAGENET1K_V1"),
                            CIFAR, 10)
    assert torch.equal(net.features[0].weight, pretrained.features[0].weight)
    assert net.classifier[1].out_channels == 10 and forward(net, CIFAR).shape == (2, 10)


@pytest.mark.slow  # three ViT-B/16 (86M parameters) and a 330 MB file
def test_pretrained_vit_is_resized_to_the_data(hub):
    torch.manual_seed(3)
    pretrained = torchvision.models.vit_b_16()
    torch.save(pretrained.state_dict(),
               hub / _cache_file(torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1))
    net = build_from_config(node("torchvision", name="vit_b_16", weights="IMAGENET1K_V1"),
                            CIFAR, 10)
    assert net.image_size == 32 and net.encoder.pos_embedding.shape == (1, 5, 768)
    assert torch.equal(net.conv_proj.weight, pretrained.conv_proj.weight)
    assert forward(net, CIFAR).shape == (2, 10)


def test_absent_weights_are_one_line_saying_how_to_get_them(hub):
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("torchvision", weights="IMAGENET1K_V1"), CIFAR, 10)
    assert message(exc) == (
        f"model.weights=IMAGENET1K_V1: resnet18-f37072fd.pth is not in the local torch hub cache "
        f"{hub} (prunelab never downloads); on a machine with internet run python -c \"import "
        f"torchvision; torchvision.models.get_model('resnet18', weights='IMAGENET1K_V1')\", then "
        f"copy resnet18-f37072fd.pth from its ~/.cache/torch/hub/checkpoints to {hub}")
    # a finished run's network is rebuilt without them (its checkpoint holds the weights)
    net = build_from_config(node("torchvision", weights="IMAGENET1K_V1"), CIFAR, 10,
                            load_weights=False)
    assert net.fc.out_features == 10


def test_a_weights_file_that_is_not_a_state_dict_is_one_line(hub):
    file = hub / "resnet18-f37072fd.pth"
    torch.save({"not": object}, file)
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("torchvision", weights="IMAGENET1K_V1"), CIFAR, 10)
    assert message(exc) == (f"cannot read the weights file {file}: UnpicklingError: not a plain "
                            f"state dict (prunelab reads weights with weights_only=True)")


def test_unknown_torchvision_name_and_weights_are_one_line():
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("torchvision", name="resnet81"), CIFAR, 10)
    total = len(torchvision.models.list_models(module=torchvision.models))
    assert message(exc) == (
        f"unknown model=torchvision model.name='resnet81'; closest: resnet18, resnet152, "
        f"resnet101, resnet50, resnet34 (all {total}: python -c \"import torchvision; "
        f"print(torchvision.models.list_models(module=torchvision.models))\")")
    for bad in ("IMAGENET1K_V3", "ResNet50_Weights.IMAGENET1K_V1"):
        with pytest.raises(ExternalModelError) as exc:
            build_from_config(node("torchvision", weights=bad), CIFAR, 10)
        assert message(exc) == (f"model.weights='{bad}' is not a weights name of torchvision "
                                f"resnet18; allowed: IMAGENET1K_V1, DEFAULT (or "
                                f"ResNet18_Weights.<name>), null for random initialization")


def test_input_smaller_than_the_total_stride_is_one_line():
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("torchvision"), (3, 28, 28), 10)
    assert message(exc) == ("input 28x28 is smaller than model=torchvision/resnet18's total "
                            "stride 32; allowed: inputs of at least 32x32 (resize the data, or "
                            "choose a model with a smaller total stride)")
    # CIFAR's 32x32 is enough at stride 32: resnet18, mobilenet_v2 build above


def test_channels_the_model_does_not_take_are_one_line():
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("torchvision"), (1, 32, 32), 10)
    assert message(exc) == ("model=torchvision/resnet18 takes 3-channel images; the data has 1 "
                            "(input_shape=(1, 32, 32)); allowed: 3-channel data, or model=timm "
                            "(its first layer takes the data's)")


# -- timm ---------------------------------------------------------------------------------------
def test_timm_resnet18_builds_for_the_data():
    net = build_from_config(node("timm"), CIFAR, 10)
    assert forward(net, CIFAR).shape == (2, 10) and output_layer_name(net) == "fc"
    gray = build_from_config(node("timm"), (1, 32, 32), 5)  # in_chans follows the data
    assert forward(gray, (1, 32, 32)).shape == (2, 5) and gray.input_shape == (1, 32, 32)
    assert model_label(node("timm")) == "timm/resnet18"


def test_timm_weights_from_a_local_file(tmp_path):
    import timm

    torch.manual_seed(4)
    pretrained = timm.create_model("resnet18")
    file = tmp_path / "r18.pth"
    torch.save(pretrained.state_dict(), file)
    net = build_from_config(node("timm", weights=str(file)), CIFAR, 10)
    assert torch.equal(net.conv1.weight, pretrained.conv1.weight)
    assert net.fc.out_features == 10
    tuned = timm.create_model("resnet18", num_classes=10)  # a file of the data's classes
    torch.save({"state_dict": tuned.state_dict()}, tmp_path / "r18_10.pth")
    net = build_from_config(node("timm", weights=str(tmp_path / "r18_10.pth")), CIFAR, 10)
    assert torch.equal(net.fc.weight, tuned.fc.weight)  # its head kept
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("timm", weights=str(tmp_path / "none.pth")), CIFAR, 10)
    assert message(exc) == (f"model.weights={tmp_path / 'none.pth'}: no such file; model=timm "
                            f"loads a local weights file (.pth, .bin or .safetensors; nothing is "
                            f"downloaded)")


def test_unknown_timm_name_is_one_line():
    import timm

    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("timm", name="resnet81"), CIFAR, 10)
    assert message(exc).startswith("unknown model=timm model.name='resnet81'; closest: resnet18, ")
    assert message(exc).endswith(f"(all {len(timm.list_models())}: python -c \"import timm; "
                                 f"print(timm.list_models())\")")


def test_timm_not_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(UserError) as exc:
        build_from_config(node("timm"), CIFAR, 10)
    assert message(exc) == "model=timm needs the timm package (pip install prunelab[timm])"


# -- your own nn.Module -------------------------------------------------------------------------
NETS = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes, width=8):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class FixedNet(nn.Module):  # takes neither: 3 channels and 10 classes built in
    def __init__(self, width=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, 10))

    def forward(self, x):
        return self.body(x)


class KwNet(TinyNet):  # **kwargs takes input_shape and num_classes
    def __init__(self, **kwargs):
        self.given = dict(kwargs)
        super().__init__(**kwargs)


def make_net(num_classes, hidden=16):  # a function, only num_classes
    return nn.Sequential(nn.Conv2d(3, hidden, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(hidden, num_classes))


class FlatNet(nn.Module):  # written for 28x28 inputs
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3 * 28 * 28, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
'''


@pytest.fixture
def user_nets(tmp_path, monkeypatch):
    """A module of the user's own networks in ``tmp_path``, the working directory (not on
    ``sys.path``: the working directory is importable by itself)."""
    name = f"user_nets_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(NETS))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def test_custom_model_with_input_shape_and_num_classes(user_nets):
    cfg = node("custom", _target_=f"{user_nets}.TinyNet", width=6)
    net = build_from_config(cfg, (1, 16, 16), 4)
    assert net.conv.in_channels == 1 and net.conv.out_channels == 6 and net.fc.out_features == 4
    assert net.input_shape == (1, 16, 16) and net.num_classes == 4
    assert model_label(cfg) == "custom/TinyNet"


def test_custom_model_without_them_gets_the_attributes(user_nets):
    net = build_from_config(node("custom", _target_=f"{user_nets}.FixedNet"), CIFAR, 10)
    assert net.input_shape == CIFAR and net.num_classes == 10
    assert forward(net, CIFAR).shape == (2, 10)


def test_custom_kwargs_model_and_factory_function(user_nets):
    net = build_from_config(node("custom", _target_=f"{user_nets}.KwNet"), CIFAR, 3)
    assert net.given == {"input_shape": CIFAR, "num_classes": 3}
    net = build_from_config(node("custom", _target_=f"{user_nets}.make_net", hidden=8), CIFAR, 3)
    assert forward(net, CIFAR).shape == (2, 3) and net.num_classes == 3


def test_custom_model_bad_inputs_are_one_line(user_nets, tmp_path):
    cases = {
        "???": "model._target_ is not set: model=custom needs model._target_=<package.module."
               "Class> of a torch.nn.Module (extra arguments: +model.<key>=...; "
               "docs/any_model.md)",
        "my_pkg.nets.MyNet": f"model._target_=my_pkg.nets.MyNet cannot be imported "
                             f"(ModuleNotFoundError: No module named 'my_pkg'); allowed: a "
                             f"torch.nn.Module class or function importable from the launch "
                             f"directory ({tmp_path}) or an installed package",
        f"{user_nets}.NoNet": f"model._target_={user_nets}.NoNet cannot be imported "
                              f"(AttributeError: module '{user_nets}' has no attribute 'NoNet'); "
                              f"allowed: a torch.nn.Module class or function importable from "
                              f"the launch directory ({tmp_path}) or an installed package",
    }
    for target, expected in cases.items():
        with pytest.raises(ExternalModelError) as exc:
            cfg = node("custom") if target == "???" else node("custom", _target_=target)
            build_from_config(cfg, CIFAR, 10)
        assert message(exc) == expected
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("custom", _target_=f"{user_nets}.TinyNet", widht=4), CIFAR, 10)
    assert message(exc) == (f"model._target_={user_nets}.TinyNet cannot be called with these "
                            f"arguments (got an unexpected keyword argument 'widht'); it takes: "
                            f"input_shape, num_classes, width")


def test_custom_model_that_does_not_fit_the_data_is_one_line(user_nets):
    with pytest.raises(ExternalModelError) as exc:
        build_from_config(node("custom", _target_=f"{user_nets}.FlatNet"), CIFAR, 10)
    assert message(exc).startswith(
        "model=custom/FlatNet does not fit input_shape=(3, 32, 32) from data: in fc (Linear) on "
        "input (2, 3072): RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(ExternalModelError) as exc:  # 10 classes built in, the data has 5
        build_from_config(node("custom", _target_=f"{user_nets}.FixedNet"), CIFAR, 5)
    assert message(exc) == ("model=custom/FixedNet gives 10 logits per input; the data has 5 "
                            "classes (give the model num_classes outputs)")


def test_zoo_configs_are_instantiated_as_before():
    cfg = node("resnet20")
    net = build_from_config(cfg, CIFAR, 10)
    assert type(net).__name__ == "ResNet20" and model_label(cfg) is None
    assert forward(net, CIFAR).shape == (2, 10)
