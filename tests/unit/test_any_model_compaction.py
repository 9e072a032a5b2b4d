"""One structural engine for real networks (issue #15): torchvision models pruned at 30 % of the
channels of every prunable group, compacted, and compared with the masked model; group coverage
against Torch-Pruning's DependencyGraph."""

import pytest
import torch
import torchvision
from torch import nn

from prunelab.compress.compact import (
    CompactionError,
    compact,
    load_compact,
    macs_report,
    save_compact,
)
from prunelab.graph import channel_groups
from prunelab.metrics.macs import count_macs
from prunelab.pruning.methods.channels import prune_fraction

# the matrix (about 1 s a model); vgg11_bn (128M parameters, a 0.5 GB save) in -m slow
FAST = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
        "shufflenet_v2_x0_5", "squeezenet1_0", "densenet121", "regnet_x_400mf", "convnext_tiny"]
SLOW = ["vgg11_bn"]
SHAPE = (3, 32, 32)


def small_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=10)


def build(name):
    torch.manual_seed(0)
    if name == "vit_32":
        net, shape = small_vit(), (3, 32, 32)
    else:
        net, shape = torchvision.models.get_model(name, num_classes=10), SHAPE
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():  # trained-looking statistics and affine parameters
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    net.input_shape = shape
    return net.eval(), shape


def prune_channels(net, fraction=0.3):
    """Masks removing ``fraction`` of every prunable unit's channels (lowest L1 norm), applied."""
    return prune_fraction(net, fraction)


def check_model(name, tmp_path, report_macs=False):
    net, shape = build(name)
    layout, masks = prune_channels(net)
    assert layout.units, "no prunable group"
    small, report = compact(net, shape)  # compact() checks itself; the test checks again
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = net(x), small.eval()(x)
    assert (ref - out).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max()))
    assert report.params_after == sum(p.numel() for p in small.parameters())
    assert report.params_after < report.params_before
    small_macs = count_macs(small, shape)["dense"]
    assert small_macs < count_macs(net, shape)["dense"]
    if report_macs:  # what measure reports is the compact network's count
        assert macs_report(net, shape)["compact"] == small_macs
    path = save_compact(small, tmp_path / "compact.pt", model=None, input_shape=shape,
                        num_classes=10, model_config=_config(name))
    loaded = load_compact(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    return report


def _config(name):
    if name == "vit_32":
        return {"_target_": "torchvision.models.vision_transformer.VisionTransformer",
                "image_size": 32, "patch_size": 4, "num_layers": 2, "num_heads": 2,
                "hidden_dim": 32, "mlp_dim": 64}
    return {"_target_": "prunelab.models.libraries.torchvision_model", "name": name}


@pytest.mark.parametrize("name", FAST + ["vit_32"])
def test_compaction_matrix(name, tmp_path):
    check_model(name, tmp_path, report_macs=name == "resnet18")


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_compaction_matrix_more(name, tmp_path):
    check_model(name, tmp_path)


def test_concatenated_branches_are_compacted_exactly():
    """The issue's two-branch network: a concatenation is 16 channels made of two groups."""
    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.c = nn.Conv2d(16, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
            return self.fc(torch.flatten(self.c(y), 1))

    net = TwoBranch().eval()
    net.input_shape = (3, 8, 8)
    groups = channel_groups(net, (3, 8, 8))
    a = next(g for g in groups if g.producers == ["a"])
    b = next(g for g in groups if g.producers == ["b"])
    assert ("bn", 0) in a.members and ("bn", 8) in b.members
    assert ("c", 1, 0) in a.consumers and ("c", 1, 8) in b.consumers
    layout, _ = prune_channels(net, 0.3)
    small, report = compact(net, (3, 8, 8))
    assert small.bn.num_features == small.c.in_channels == 12  # 8 - 2 and 8 - 2
    assert small.a.out_channels == small.b.out_channels == 6


def test_group_coverage_at_least_torch_pruning():
    """Prunable groups found, against Torch-Pruning 1.6.1's DependencyGraph on the same models
    (25, 27, 40: counted with root Conv/Linear modules, the classifier ignored)."""
    expected = {"mobilenet_v2": 25, "mobilenet_v3_small": 27, "efficientnet_b0": 40}
    for name, tp_groups in expected.items():
        net = torchvision.models.get_model(name, num_classes=10).eval()
        groups = channel_groups(net, SHAPE)
        assert sum(g.prunable for g in groups) >= tp_groups, name


def test_group_coverage_live_against_dependency_graph():
    tp = pytest.importorskip("torch_pruning")
    for name in ("mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"):
        net = torchvision.models.get_model(name, num_classes=10).eval()
        dg = tp.DependencyGraph().build_dependency(net, example_inputs=torch.zeros(1, *SHAPE))
        head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
        theirs = len(list(dg.get_all_groups(ignored_layers=[head],
                                            root_module_types=[nn.Conv2d, nn.Linear])))
        ours = sum(g.prunable for g in channel_groups(net, SHAPE))
        assert ours >= theirs, (name, ours, theirs)


def test_a_clamp_that_moves_zero_keeps_the_channels():
    net = nn.Sequential(nn.Linear(4, 6), nn.Hardtanh(0.5, 1.0), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        net[0].weight[:3] = 0
        net[0].bias[:3] = 0
    small, report = compact(net, (4,))
    assert small[0].out_features == 6  # hardtanh(0) = 0.5 here: the channels carry a value
    relu6 = nn.Sequential(nn.Linear(4, 6), nn.ReLU6(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        relu6[0].weight[:3] = 0
        relu6[0].bias[:3] = 0
    assert compact(relu6, (4,))[0][0].out_features == 3


def test_a_broken_compaction_names_the_layer():
    """compact() checks its output: a group structure that is wrong (here: a group told it may
    drop channels that a sigmoid turns into 0.5) raises a CompactionError naming the layer."""
    net = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        net[0].weight[:3] = 0
        net[0].bias[:3] = 0
    groups = channel_groups(net, (4,))
    hidden = next(g for g in groups if g.producers == ["0"])
    assert not hidden.zero_safe  # the tracer knows: sigmoid(0) = 0.5
    hidden.zero_safe = True  # pretend it did not
    with pytest.raises(CompactionError, match=r"differs from the masked one .* first at 2"):
        compact(net, (4,), groups=groups)


class _Case(nn.Module):
    """Small networks for the edge cases a review found (each once wrong)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.gn = nn.GroupNorm(8, 8, affine=False)
        self.inorm = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.gn4 = nn.GroupNorm(4, 8)
        self.h = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        k = self.kind
        if k == "groupnorm_without_affine":
            y = self.c(torch.relu(self.gn(self.a(x))))
        elif k == "instance_norm_with_running_stats":
            y = self.c(torch.relu(self.inorm(self.a(x))))
        elif k == "in_place_add":
            y = self.a(x)
            y.add_(1.0)
            y = self.c(y)
        elif k == "gate_read_again":
            g = torch.relu(self.a(x))
            y = self.c(self.b(x) * g.mean((2, 3), keepdim=True)) + self.c(g)
        elif k == "module_called_twice":
            y = self.h(torch.cat([self.c(self.a(x)), self.c(self.b(x))], 1))
            return self.fc(y.mean((2, 3)))
        elif k == "untouched_groupnorm":
            y = self.c(self.gn4(self.c(torch.relu(self.a(x)))))
        return self.fc(self.h(torch.cat([y, self.b(x)], 1)).mean((2, 3)))


@pytest.mark.parametrize("kind", ["groupnorm_without_affine", "instance_norm_with_running_stats",
                                  "in_place_add", "gate_read_again", "module_called_twice",
                                  "untouched_groupnorm"])
def test_edge_cases_compact_to_the_masked_network_and_reload(kind, tmp_path):
    torch.manual_seed(0)
    net = _Case(kind).eval()
    with torch.no_grad():
        net.inorm.running_mean.uniform_(-1.0, -0.5)
        for m in (net.a, net.b, net.c):
            m.bias.uniform_(0.5, 1.0)
    net.input_shape = (3, 8, 8)
    prune_channels(net, 0.5)
    small, _ = compact(net, (3, 8, 8))  # raises when the compact network differs
    path = save_compact(small, tmp_path / "c.pt", model=None, input_shape=(3, 8, 8),
                        num_classes=10, model_config={"_target_": f"{__name__}._Case",
                                                      "kind": kind})
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(load_compact(path)(x), net(x), atol=1e-5)
