"""MACs named for what they are: dense (what the masked network executes), compact (the network
with its dead channels removed, counted by torch's own FlopCounterMode too) and non-zero."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunelab.compress.compact import compact, macs_report
from test_compact import pruned


def flop_counter_macs(net, shape):
    """MACs by torch.utils.flop_counter: it counts 2 FLOPs per multiply-accumulate of a conv /
    matmul (and nothing for bias, norms, activations, pooling: count_macs' convention)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.zeros(1, *shape))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def test_flop_counter_counts_two_flops_per_mac():
    """The convention checked on one layer by hand: Linear 3 -> 5 is 15 MACs, 30 FLOPs."""
    assert flop_counter_macs(nn.Linear(3, 5), (3,)) == 15


@pytest.mark.parametrize("name", ["lenet5", "seed_cnn", "resnet20", "mlp"])
def test_compact_macs_equal_the_flop_counter_on_the_compact_network(name):
    net, shape = pruned(name, sparsity=0.5)
    macs = macs_report(net, shape)
    small, report = compact(net, shape)
    assert report.channels_after < report.channels_before  # channels did go
    assert macs["compact"] == flop_counter_macs(small, shape)
    assert macs["dense"] == flop_counter_macs(net, shape)
    # a removed channel also removes the next layer's inputs: the compact network does less
    # than the per-layer weight density says (the old "effective" figure)
    assert macs["compact"] < macs["nonzero"] == macs["effective"] < macs["dense"]


def test_lenet5_at_half_the_channels_keeps_28_percent_of_the_macs():
    """The issue's numbers: 0.645 M of 2.29 M compact, where the density figure said 1.15 M."""
    net, shape = pruned("lenet5", sparsity=0.5)
    assert macs_report(net, shape) == {"dense": 2_293_000, "compact": 645_270,
                                       "nonzero": 1_146_600, "effective": 1_146_600}


def test_unpruned_and_unstructured_networks_compact_to_their_dense_macs():
    from prunelab.models import build_model
    from prunelab.pruning import Magnitude

    torch.manual_seed(0)
    net = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    macs = macs_report(net, (1, 28, 28))
    assert macs["compact"] == macs["nonzero"] == macs["dense"]
    pruner = Magnitude()
    masks = pruner.prepare(net)
    masks.update(pruner.compute_masks(masks.params, masks.as_dict(), 0.5))
    masks.apply_()
    macs = macs_report(net, (1, 28, 28))
    assert macs["compact"] == macs["dense"] and macs["nonzero"] < 0.6 * macs["dense"]


def test_an_untraceable_network_has_no_compact_macs():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.fc(x)
            return -self.fc(x)

    macs = macs_report(Branchy(), (4,))
    assert macs["compact"] is None and macs["dense"] == 16


def _res(macs, pruner="structured", seed=0):
    return {"data": "mnist", "model": "lenet5", "pruner": pruner, "target_sparsity": 0.5,
            "seed": seed, "test_acc": 0.99, "sparsity": {"global": 0.5, "per_layer": {}},
            "macs": macs, "wall_time_s": 1.0, "group_hash": pruner}


def test_the_report_shows_compact_and_nonzero_macs_kept():
    from prunelab.analysis.sweep import COLUMNS, markdown, summarize

    new = _res({"dense": 2_293_000, "compact": 645_270, "nonzero": 1_146_600,
                "effective": 1_146_600})
    old = _res({"dense": 100, "effective": 40}, pruner="magnitude")  # before compact was kept
    rows = {r["pruner"]: r for r in summarize([new, old])}
    assert rows["structured"]["macs_compact_ratio"] == pytest.approx(645_270 / 2_293_000)
    assert rows["structured"]["macs_nonzero_ratio"] == pytest.approx(1_146_600 / 2_293_000)
    assert rows["magnitude"]["macs_compact_ratio"] is None
    assert rows["magnitude"]["macs_nonzero_ratio"] == pytest.approx(0.4)
    headers = [c[1] for c in COLUMNS]
    assert "MACs kept (compact)" in headers and "MACs kept (non-zero)" in headers
    md = markdown(list(rows.values()))
    assert "| 0.2814 | 0.5000 |" in md


def test_the_summary_names_each_count():
    from prunelab.results import _macs_row

    assert _macs_row({"dense": 2_293_000, "compact": 645_270, "nonzero": 1_146_600}) == (
        "645.27K compact / 1.15M non-zero / 2.29M dense (as executed)")
    assert _macs_row({"dense": 100, "effective": 40}) == "40 non-zero / 100 dense (as executed)"
