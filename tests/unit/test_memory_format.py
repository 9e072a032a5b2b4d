"""``hardware.memory_format=channels_last``: the network trains in NHWC, bound to the same masks,
pruned to the same elements as in the default layout, with the pruned weights exactly zero in its
checkpoint (the bad value is one line: tests/cli/test_bad_input.py)."""

import json

import pytest
import torch
from helpers import FAST, compose_config, run_cli
from torch import nn

from prunelab.runs import load_run

#: LeNet-5 pruned once at epoch 0 (from the seeded initial weights, so both layouts score the
#: same values), then trained 2 epochs on 400 samples.
ARGS = [*FAST, "model=lenet5", "pruner=magnitude", "sparsity=0.8", "schedule=oneshot",
        "schedule.at_epoch=0"]


def test_the_convolutions_are_laid_out_before_the_masks_bind():
    from prunelab.assemble import assemble

    parts = assemble(compose_config("train", *ARGS, "hardware.memory_format=channels_last"))
    convs = {n + ".weight": m.weight for n, m in parts.net.named_modules()
             if isinstance(m, nn.Conv2d)}
    assert convs
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs.values())
    assert not convs["features.2.weight"].is_contiguous()  # (one input channel: both layouts)
    bound = parts.callback.masks.params
    assert all(bound[n] is w for n, w in convs.items())  # the masks multiply these tensors


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory_format")
    for fmt in ("contiguous", "channels_last"):
        proc = run_cli("prunelab.train", [*ARGS, f"hardware.memory_format={fmt}",
                                          f"hydra.run.dir={tmp / fmt}"], tmp)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp


def test_channels_last_prunes_the_same_elements_and_keeps_them_zero(runs):
    nhwc, nchw = load_run(runs / "channels_last"), load_run(runs / "contiguous")
    assert nhwc.masks.keys() == nchw.masks.keys()
    for name, mask in nhwc.masks.items():
        assert torch.equal(mask, nchw.masks[name]), name
    weights = dict(nhwc.net.named_parameters())
    for name, mask in nhwc.masks.items():
        assert not weights[name][~mask.bool()].any(), name  # what forward multiplies is zero
    results = {f: json.loads((runs / f / "results.json").read_text()) for f in
               ("channels_last", "contiguous")}
    assert nhwc.config.hardware.memory_format == "channels_last"
    # the same function up to float rounding: the two trainings end close together
    assert abs(results["channels_last"]["test_acc"] - results["contiguous"]["test_acc"]) < 0.05


def test_latency_aware_times_candidates_in_the_default_layout():
    from prunelab.models import build_model
    from prunelab.pruning.methods.latency_aware import LatencyModel

    net = build_model("lenet5", (1, 28, 28), 10).to(memory_format=torch.channels_last)
    timed = LatencyModel(net, (1, 28, 28), [], batch=1, threads=1, runs=1).model
    assert all(p.is_contiguous() for p in timed.parameters())  # as measure and export run it
