"""Compaction: structured-pruned networks become smaller ones computing the same function."""

import pytest
import torch
from torch import nn

from prunelab.compress.compact import (
    CompactionError,
    compact,
    dead_channels,
    load_compact,
    save_compact,
)
from prunelab.graph import channel_groups
from prunelab.models import build_model, list_models
from prunelab.pruning import Structured

SMALL_INPUT = {"mlp": (1, 28, 28), "lenet5": (1, 28, 28), "seed_cnn": (1, 28, 28)}


def pruned(name, sparsity=0.5, seed=0):
    shape = SMALL_INPUT.get(name, (3, 32, 32))
    torch.manual_seed(seed)
    net = build_model(name, input_shape=shape, num_classes=10)
    pruner = Structured(scope="layer")
    masks = pruner.prepare(net)
    masks.update(pruner.compute_masks(masks.params, masks.as_dict(), sparsity))
    masks.apply_()
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():  # trained-looking BatchNorm statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net.eval(), shape


def chain_param_count(net):
    """Parameters a chain network keeps, counted from its zero rows (not from the compactor):
    each layer keeps its non-zero rows and the inputs its predecessor keeps; a BatchNorm keeps
    what the layer before it keeps."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total, kept_in_frac, last_kept = 0, 1.0, None
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            rows = w.reshape(w.shape[0], -1)
            last = m is layers[-1]
            kept_out = w.shape[0] if last else max(1, int((rows != 0).any(1).sum()))
            kept_in = round(w.shape[1] * kept_in_frac)
            total += kept_out * kept_in * w[0, 0].numel() + (kept_out if m.bias is not None else 0)
            kept_in_frac, last_kept = kept_out / w.shape[0], kept_out
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * last_kept
    return total


@pytest.mark.parametrize("name", list_models())
def test_compact_model_computes_the_same_outputs(name):
    net, shape = pruned(name)
    small, report = compact(net, shape)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (net(x) - small.eval()(x)).abs().max().item()
    assert diff <= 1e-4, diff
    assert report.params_after == sum(p.numel() for p in small.parameters())
    assert report.params_after < 0.6 * report.params_before
    assert report.channels_after < report.channels_before
    if not name.startswith(("resnet", "vit")):
        assert report.params_after == chain_param_count(net)


def test_residual_additions_tie_channels():
    net, shape = pruned("resnet20")
    groups = channel_groups(net, shape)
    stage1 = next(g for g in groups if "conv1" in g.producers)
    # the stem and the second conv of every stage-1 block write into one residual stream
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stage1.producers)
    assert {("bn1", 0), ("layer1.0.bn2", 0)} <= set(stage1.members)
    assert ("layer2.0.shortcut.0", 1, 0) in stage1.consumers
    assert ("layer1.0.conv1", 1, 0) in stage1.consumers
    # a channel of a residual stream goes only when it is zero in every producer
    conv = net.layer1[0].conv2
    ch = int(dead_channels(net, stage1).logical_not().nonzero()[0])
    with torch.no_grad():
        for name in stage1.producers:
            dict(net.named_modules())[name].weight[ch] = 0
        for name, _ in stage1.members:
            bn = dict(net.named_modules())[name]
            bn.weight[ch] = 0
            bn.bias[ch] = 0
    assert bool(dead_channels(net, stage1)[ch])
    assert conv.weight.shape[0] == 16


def test_flatten_boundary_removes_hw_columns_per_channel():
    net, shape = pruned("lenet5")
    small, _ = compact(net, shape)
    convs = [m for m in small.modules() if isinstance(m, nn.Conv2d)]
    fc = next(m for m in small.modules() if isinstance(m, nn.Linear))
    assert fc.in_features == convs[-1].out_channels * 4 * 4  # 50 channels x 4 x 4 in LeNet-5
    assert fc.in_features < 800


def test_unpruned_network_is_left_whole():
    net = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).eval()
    small, report = compact(net, (1, 28, 28))
    assert report.params_after == report.params_before
    assert report.channels_after == report.channels_before


def test_sigmoid_blocks_removal():
    net = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0].weight[:3] = 0
        net[0].bias[:3] = 0
    small, report = compact(net, (4,))
    assert small[0].out_features == 6  # sigmoid(0) = 0.5: those channels still carry a value
    x = torch.randn(5, 4)
    assert torch.allclose(net(x), small(x))


def test_save_and_load_as_an_ordinary_checkpoint(tmp_path):
    net, shape = pruned("seed_cnn")
    small, _ = compact(net, shape)
    path = save_compact(small, tmp_path / "compact.pt", model="seed_cnn", input_shape=shape,
                        num_classes=10)
    state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors only
    assert state["compact"] is True and "state_dict" in state
    loaded = load_compact(path).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), small.eval()(x))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())
    assert not loaded.training  # ready for inference


def test_load_compact_refuses_other_files_in_one_line(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)  # a state dict, not a compact checkpoint
    with pytest.raises(CompactionError, match="is not a compact checkpoint"):
        load_compact(plain)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "compact": True, "model": nn.Linear(2, 2)}, pickled)
    with pytest.raises(CompactionError, match="weights_only=True"):  # no pickle executed
        load_compact(pickled)
    unnamed = save_compact(nn.Linear(2, 2), tmp_path / "unnamed.pt", model=None,
                           input_shape=(2,), num_classes=2)
    with pytest.raises(CompactionError, match="names no model to rebuild"):
        load_compact(unnamed)


def test_structured_pruning_removes_residual_channels_jointly():
    torch.manual_seed(0)
    net = build_model("resnet20", input_shape=(3, 32, 32), num_classes=10).eval()
    pruner = Structured(scope="layer")
    masks = pruner.prepare(net)
    masks.update(pruner.compute_masks(masks.params, masks.as_dict(), 0.45))
    masks.apply_()
    # the stem and the second conv of each stage-1 block write into one residual stream: they
    # keep exactly the same channels
    stream = ["conv1.weight"] + [f"layer1.{i}.conv2.weight" for i in range(3)]
    assert any(set(stream) <= set(u.rows) for u in pruner._layout.units)
    keeps = [masks[n].reshape(16, -1).any(1) for n in stream]
    assert all(torch.equal(keeps[0], k) for k in keeps[1:]) and not bool(keeps[0].all())
    small, report = compact(net, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (net(x) - small(x)).abs().max() <= 1e-4
    assert small.conv1.out_channels == int(keeps[0].sum())  # stream channels really removed
