"""prunelab.metrics (parameters, MACs, size on disk, latency, accuracy) and the ``measure``
command's command line (help, unknown options, the deprecated ``prunelab.measure`` imports)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from prunelab.metrics import (
    accuracy,
    count_macs,
    count_params,
    effective_state_dict,
    load_sparse_state_dict,
    measure_latency,
    size_on_disk,
    sparsity_report,
)
from prunelab.models import MODELS, build_model

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def small_net() -> nn.Sequential:
    """conv(1->2, 3x3) on 1x5x5 -> 2x3x3; grouped conv; flatten; linear 18->4."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),  # out 2*3*3 = 18 elements, 1*9 MACs each -> 162
        nn.Conv2d(2, 4, 3, padding=1, groups=2),  # out 4*3*3 = 36, (2/2)*9 each -> 324
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 4),  # 36*4 = 144
    )


def test_count_macs_hand_computed():
    macs = count_macs(small_net(), (1, 5, 5))
    assert macs["per_layer"] == {
        "0": {"dense": 162, "effective": 162},
        "1": {"dense": 324, "effective": 324},
        "4": {"dense": 144, "effective": 144},
    }
    assert macs["dense"] == macs["effective"] == 162 + 324 + 144


def test_count_macs_linear_leading_dims():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 3)

        def forward(self, x):  # x: (B, 5, 8) -> (B, 5, 3)
            return self.proj(x)

    assert count_macs(Tokens(), (5, 8))["dense"] == 5 * 8 * 3


def test_effective_macs_halve_when_half_weights_zero():
    net = small_net()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                flat = module.weight.view(-1)
                flat[: flat.numel() // 2] = 0.0
    macs = count_macs(net, (1, 5, 5))
    assert macs["dense"] == 630
    assert macs["effective"] == 315
    for layer in macs["per_layer"].values():
        assert layer["effective"] * 2 == layer["dense"]
    # explicit densities override the weights
    macs = count_macs(net, (1, 5, 5), densities={"0.weight": 1.0, "1.weight": 0.25})
    assert macs["per_layer"]["0"]["effective"] == 162
    assert macs["per_layer"]["1"]["effective"] == 81
    assert macs["per_layer"]["4"]["effective"] == 72  # not in densities: from weight


def test_count_macs_sees_torch_prune_masks_and_restores_mode():
    net = small_net()
    prune.l1_unstructured(net[4], "weight", amount=0.75)
    net.train()
    macs = count_macs(net, (1, 5, 5))
    assert macs["per_layer"]["4"] == {"dense": 144, "effective": 36}
    assert net.training


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dense_macs_match_flop_counter(name):
    shape = MNIST if name in ("mlp", "lenet5", "seed_cnn") else CIFAR
    model = build_model(name, shape, num_classes=10).eval()
    macs = count_macs(model, shape)
    # attention through its plain ("math") kernel: the fused CPU kernel has no FLOP formula
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape))
    assert macs["dense"] * 2 == counter.get_total_flops()
    # freshly initialised weights are (almost surely) all non-zero
    assert 0.999 * macs["dense"] <= macs["effective"] <= macs["dense"]


def test_known_mac_totals():
    assert count_macs(build_model("mlp", MNIST, 10), MNIST)["dense"] == 784 * 300 + 300 * 100 + 100 * 10
    # Caffe LeNet-5: 24*24*20*25 + 8*8*50*500 + 800*500 + 500*10
    lenet = count_macs(build_model("lenet5", MNIST, 10), MNIST)
    assert lenet["dense"] == 288_000 + 1_600_000 + 400_000 + 5_000
    # ResNet-20 on CIFAR: ~41M MACs (+ the two 1x1 option-B projections)
    resnet = count_macs(build_model("resnet20", CIFAR, 10), CIFAR)
    assert 40e6 < resnet["dense"] < 42e6


def _nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def test_count_params():
    model = build_model("mlp", MNIST, 10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)  # make every element non-zero (init zeroes the biases)
    assert count_params(model) == {"total": 266_610, "nonzero": 266_610}
    with torch.no_grad():
        model.features[0].weight[:10].zero_()  # 10 rows of 784
        model.classifier.bias.zero_()
    assert count_params(model) == {"total": 266_610, "nonzero": 266_610 - 7_840 - 10}
    resnet = build_model("resnet20", CIFAR, 10)
    counts = count_params(resnet)
    assert counts["total"] == sum(p.numel() for p in resnet.parameters())
    assert counts["nonzero"] == _nonzero(resnet)


def test_count_params_with_torch_prune():
    model = build_model("mlp", MNIST, 10)
    with torch.no_grad():
        model.features[0].weight.fill_(1.0)
    before = _nonzero(model)
    prune.random_unstructured(model.features[0], "weight", amount=0.5)
    counts = count_params(model)
    assert counts["total"] == 266_610  # weight_orig not double counted, mask is a buffer
    assert counts["nonzero"] == before - 117_600  # half of the 235,200 masked


def test_sparsity_report_exact():
    model = build_model("lenet5", MNIST, 10)
    with torch.no_grad():
        model.features[0].weight.view(-1)[:100].zero_()  # 100 of 500
        model.classifier[0].weight[:, :400].zero_()  # 200,000 of 400,000
    report = sparsity_report(model, ["features.0.weight", "classifier.0.weight"])
    assert report["zeros"] == 200_100
    assert report["total"] == 400_500
    assert report["per_layer"] == {"features.0.weight": 0.2, "classifier.0.weight": 0.5}
    assert report["global"] == pytest.approx(200_100 / 400_500)
    globbed = sparsity_report(model, ["*.weight"])
    assert set(globbed["per_layer"]) == {
        "features.0.weight", "features.2.weight", "classifier.0.weight", "classifier.2.weight"
    }
    assert globbed["zeros"] == 200_100
    with pytest.raises(KeyError):
        sparsity_report(model, ["no.such.weight"])


def _zero_fraction_(model: nn.Module, fraction: float, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() > 1:
                keep = torch.rand(param.shape, generator=generator) >= fraction
                param.mul_(keep)


def test_size_on_disk_sparse_smaller_and_round_trip(tmp_path):
    model = build_model("mlp", MNIST, 10)
    _zero_fraction_(model, 0.9)
    sizes = size_on_disk(model, tmp_path / "out")
    dense_file = tmp_path / "out" / "model_dense.pt"
    sparse_file = tmp_path / "out" / "model_sparse.pt"
    assert dense_file.is_file() and sparse_file.is_file()
    assert sizes == {
        "dense_bytes": os.path.getsize(dense_file),
        "sparse_bytes": os.path.getsize(sparse_file),
    }
    assert sizes["dense_bytes"] > 266_610 * 4
    # ~10% float32 values + 1 bit/element mask: well under a third of dense
    assert sizes["sparse_bytes"] < sizes["dense_bytes"] / 3
    decoded = load_sparse_state_dict(sparse_file)
    expected = model.state_dict()
    assert list(decoded) == list(expected)
    for key, value in expected.items():
        assert decoded[key].dtype == value.dtype and decoded[key].shape == value.shape
        assert torch.equal(decoded[key], value), key
    dense = torch.load(dense_file, weights_only=True)
    assert all(torch.equal(dense[k], v) for k, v in expected.items())


def test_size_on_disk_dense_model_and_buffers(tmp_path):
    model = build_model("resnet20", CIFAR, 10)
    model.train()
    model(torch.randn(4, *CIFAR))  # non-trivial BN running stats and num_batches_tracked
    _zero_fraction_(model, 0.6)
    with torch.no_grad():
        model.bn1.bias.zero_()  # a 1-d tensor that is all zeros
    sizes = size_on_disk(model, tmp_path)
    assert sizes["dense_bytes"] > 0 and sizes["sparse_bytes"] > 0
    decoded = load_sparse_state_dict(tmp_path / "model_sparse.pt")
    expected = model.state_dict()
    assert set(decoded) == set(expected)
    for key, value in expected.items():
        assert decoded[key].dtype == value.dtype
        assert torch.equal(decoded[key], value), key
    # unpruned model: sparse encoding stores everything densely, similar size
    dense_model = build_model("mlp", MNIST, 10)
    sizes = size_on_disk(dense_model, tmp_path / "dense")
    assert abs(sizes["sparse_bytes"] - sizes["dense_bytes"]) < 0.05 * sizes["dense_bytes"]


def test_size_on_disk_folds_torch_prune_masks(tmp_path):
    model = build_model("mlp", MNIST, 10)
    prune.l1_unstructured(model.features[0], "weight", amount=0.9)
    effective = effective_state_dict(model)
    assert "features.0.weight" in effective and "features.0.weight_mask" not in effective
    size_on_disk(model, tmp_path)
    decoded = load_sparse_state_dict(tmp_path / "model_sparse.pt")
    assert torch.equal(decoded["features.0.weight"], model.features[0].weight)
    assert int((decoded["features.0.weight"] == 0).sum()) == round(0.9 * 235_200)


def test_measure_latency():
    model = build_model("lenet5", MNIST, 10)
    model.train()
    threads_before = torch.get_num_threads()
    result = measure_latency(model, MNIST, batch_sizes=(1, 8), threads=1, warmup=2, min_runs=7,
                             max_runs=20, max_time_s=0.5)
    assert set(result) == {"batch_1", "batch_8"}
    for stats in result.values():
        assert stats["runs"] >= 7
        assert stats["median_ms"] > 0
        assert stats["iqr_ms"] >= 0
        assert stats["min_ms"] <= stats["median_ms"]
    assert torch.get_num_threads() == threads_before
    assert model.training


def test_measure_latency_time_budget_never_below_min_runs():
    model = build_model("mlp", MNIST, 10)
    result = measure_latency(model, MNIST, batch_sizes=(2,), warmup=0, min_runs=5,
                             max_runs=1000, max_time_s=0.0)
    assert result["batch_2"]["runs"] == 5


def test_parametrized_weights_are_measured_through_the_parametrization():
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, weight):
            return weight * self.mask

    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    mask = (torch.arange(16).view(4, 4) % 2).float()  # half zeros
    parametrize.register_parametrization(net[0], "weight", Mask(mask))
    assert count_params(net) == {"total": 30, "nonzero": 22}
    assert sparsity_report(net, ["0.weight"])["zeros"] == 8
    assert count_macs(net, (4,))["per_layer"]["0"] == {"dense": 16, "effective": 8}
    assert set(effective_state_dict(net)) == {"0.weight", "0.bias", "1.weight", "1.bias"}


# -- accuracy: the one evaluation loop ---------------------------------------------------------------
class _Fixed(nn.Module):
    """Predicts class ``x[:, 0] > 0`` (logits built from the first feature)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        first = x.flatten(1)[:, :1] * self.scale
        return torch.cat([-first, first], 1)


def _batches():
    x = torch.tensor([[1.0], [-1.0], [2.0], [3.0], [-2.0], [1.0]])
    y = torch.tensor([1, 1, 1, 0, 0, 0])  # right: samples 0, 2, 4
    return [(x[i:i + 2], y[i:i + 2]) for i in range(0, 6, 2)]


def test_accuracy_counts_right_predictions_and_restores_the_mode():
    from prunelab.data.loader import BatchGroups

    net = _Fixed().train()
    batches = _batches()
    assert accuracy(net, batches) == pytest.approx(3 / 6)
    assert net.training  # evaluated in eval mode, put back as it was
    assert accuracy(net, batches, max_batches=1) == pytest.approx(1 / 2)
    assert accuracy(net, batches, max_batches=2) == pytest.approx(2 / 4)
    # groups of batches (data.steps_per_batch) are unpacked: max_batches counts single batches
    grouped = BatchGroups(batches, 2)
    assert accuracy(net, grouped) == pytest.approx(3 / 6)
    assert accuracy(net, grouped, max_batches=1) == pytest.approx(1 / 2)
    assert accuracy(net, []) == 0.0


def test_accuracy_moves_inputs_to_the_models_dtype():
    net = _Fixed().double()
    assert accuracy(net, _batches()) == pytest.approx(0.5)


# -- the old package name ------------------------------------------------------------------------------
def test_old_measure_imports_still_work_with_a_deprecation_warning():
    import prunelab.measure as old
    import prunelab.metrics as new

    with pytest.warns(DeprecationWarning, match="prunelab.measure.load_sparse_state_dict is now "
                                                 "prunelab.metrics.load_sparse_state_dict"):
        fn = old.load_sparse_state_dict
    assert fn is new.load_sparse_state_dict
    with pytest.warns(DeprecationWarning):
        from prunelab.measure import count_macs as old_count_macs
    assert old_count_macs is new.count_macs
    with pytest.raises(AttributeError):
        old.no_such_name
    with warnings.catch_warnings():
        warnings.simplefilter("error")


def test_metrics_imports_no_command():
    code = ("import sys, prunelab.metrics; "
            "bad = [m for m in ('prunelab.measure', 'prunelab.export', 'prunelab.deploy', "
            "'prunelab.train', 'prunelab.cli', 'prunelab.data.datamodules') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the measure command's command line ----------------------------------------------------------------
def _cli(args, cwd, module="prunelab.measure"):
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _help_options(text):
    """``key=default`` of each line of the help's options section."""
    section = text.split("== Options", 1)[1].split("Examples:", 1)[0]
    out = {}
    for line in section.splitlines()[1:]:
        if "=" in line.strip().split(" ", 1)[0]:
            key, value = line.split()[0].split("=", 1)
            out[key] = value
    return out


def _yaml(value):
    """A config value as the help writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


@pytest.mark.parametrize("command, schema", [("measure", "MeasureConf"),
                                             ("export", "ExportConf")])
def test_help_lists_every_option_with_its_default_and_examples(tmp_path, command, schema):
    import dataclasses

    import prunelab.deploy as deploy

    proc = _cli(["--help"], tmp_path, f"prunelab.{command}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert text.startswith(f"prunelab.{command}: ")
    assert "schema/" not in text and "_schema" not in text and "pruner" not in text
    examples = {"measure": 2, "export": 3}[command]  # export: onnx, int8, executorch
    assert text.count(f"python -m prunelab.{command} run=") == examples
    fields = {f.name: f for f in dataclasses.fields(getattr(deploy, schema))}
    options = _help_options(text)
    assert set(options) == set(fields) - {"hardware"}
    defaults = getattr(deploy, schema)()
    for key, shown in options.items():
        assert shown == _yaml(getattr(defaults, key)), key
    if command == "measure":
        from prunelab.cli import known_options

        profiles = text.split("== Hardware profile", 1)[1].split("== Options", 1)[0]
        listed = {line.split()[0] for line in profiles.splitlines()[1:] if line.strip()}
        assert listed == {"(none)", *known_options("hardware")}
    assert list(tmp_path.iterdir()) == []  # --help writes nothing
