"""Models beyond the zoo on the command line, as a user runs them: a torchvision model, the
user's own nn.Module from the working directory, and a bad model name (one line, nothing
written). The three commands run side by side."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

#: A run shrunk to seconds (64 training samples, one pruning step, no timing, no logger).
TINY = ["data=synthetic", "data.num_samples=160", "data.subset=64", "data.batch_size=32",
        "data.val_size=32", "data.num_test_samples=64", "data.eval_batch_size=64", "epochs=2",
        "schedule=oneshot", "measure.latency=false", "logger=none",
        "trainer.enable_progress_bar=false"]

USER_NET = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, input_shape, num_classes, width=16):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("any_model")
    (tmp / "user_nets.py").write_text(textwrap.dedent(USER_NET))
    args = {"torchvision": ["model=torchvision", "model.name=resnet18"],
            "custom": ["model=custom", "model._target_=user_nets.TinyNet", "+model.width=8"],
            "unknown": ["model=torchvision", "model.name=resnet81"]}
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "prunelab.train", *TINY, *a, f"hydra.run.dir={tmp / name}"],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, a in args.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        out[name] = (proc.returncode, stdout, stderr)
    return tmp, out


@pytest.mark.parametrize(("name", "label"), [("torchvision", "torchvision/resnet18"),
                                             ("custom", "custom/TinyNet")])
def test_external_model_trains_prunes_and_is_recorded(runs, name, label):
    tmp, out = runs
    code, stdout, stderr = out[name]
    assert code == 0, stderr[-3000:]
    assert f"model={label} data=synthetic pruner=magnitude" in stdout
    res = json.loads((tmp / name / "results.json").read_text())
    assert res["model"] == label
    assert res["sparsity"]["global"] == pytest.approx(0.5, abs=1e-4)


def test_unknown_model_name_is_one_line_and_writes_nothing(runs):
    tmp, out = runs
    code, _, stderr = out["unknown"]
    assert code == 2
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]] and lines[0].startswith(
        "prunelab: error: unknown model=torchvision model.name='resnet81'; closest: resnet18, ")
    assert not (tmp / "unknown").exists()


UNTRACEABLE = '''
import torch
from torch import nn


class BranchyNet(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean((2, 3))
        if h.sum() > -1e9:
            h = torch.relu(self.fc1(h))
        return self.fc2(h)
'''

MEASURE = ["runs=2", "warmup=1", "rounds=1", "batch_sizes=[1]", "quantize=false", "sparse=false",
           "eval_batches=1", "memory_format=contiguous"]


def _run_all(tmp, commands):
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    procs = {k: subprocess.Popen([sys.executable, "-m", *c], cwd=tmp, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        out[k] = (p.returncode, stdout, stderr)
    return out


def _structured(tmp, name, model_args, then):
    out = _run_all(tmp, {name: ["prunelab.train", *TINY, *model_args, "pruner=structured",
                                "sparsity=0.3", f"hydra.run.dir={tmp / name}"]})
    code, _, err = out[name]
    assert code == 0, err[-3000:]
    out.update(_run_all(tmp, then))
    return tmp, out


@pytest.fixture(scope="module")
def untraceable(tmp_path_factory):
    """Structured pruning of a user network torch.fx cannot trace, then measure and
    ``export compact=true`` side by side."""
    tmp = tmp_path_factory.mktemp("untraceable")
    (tmp / "user_nets.py").write_text(textwrap.dedent(UNTRACEABLE))
    run = tmp / "branchy"
    return _structured(tmp, "branchy", ["model=custom", "model._target_=user_nets.BranchyNet"], {
        "measure": ["prunelab.measure", f"run={run}", *MEASURE],
        "export": ["prunelab.export", f"run={run}", "compact=true", "quantize=none", "runs=2",
                   "batch_sizes=[1]"]})


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """Structured pruning of torchvision's mobilenet_v2, then measure (an ONNX export of it
    takes 30 s: left to the export tests of the zoo)."""
    tmp = tmp_path_factory.mktemp("mobilenet")
    return _structured(tmp, "mobilenet", ["model=torchvision", "model.name=mobilenet_v2"],
                       {"measure": ["prunelab.measure", f"run={tmp / 'mobilenet'}", *MEASURE]})


@pytest.mark.slow
def test_measure_compacts_a_torchvision_model(mobilenet):
    tmp, out = mobilenet
    code, stdout, stderr = out["measure"]
    assert code == 0, stderr[-3000:]
    res = json.loads((tmp / "mobilenet" / "deploy" / "measure.json").read_text())
    compact = res["variants"]["compact"]
    assert compact["macs"] < res["variants"]["dense"]["macs"]
    assert compact["compaction"]["params_after"] < compact["compaction"]["params_before"]
    from prunelab.compress.compact import load_compact  # rebuilt from its model_config

    small = load_compact(tmp / "mobilenet" / "deploy" / compact["file"])
    assert sum(p.numel() for p in small.parameters()) == compact["compaction"]["params_after"]


def test_an_untraceable_network_is_measured_without_its_compact_variant(untraceable):
    tmp, out = untraceable
    code, stdout, stderr = out["measure"]
    assert code == 0, stderr[-3000:]
    res = json.loads((tmp / "branchy" / "deploy" / "measure.json").read_text())
    assert "cannot be traced by torch.fx" in res["variants"]["compact"]["skipped"]
    assert "latency_ms" in res["variants"]["dense"]
    assert "compact | skipped: BranchyNet cannot be traced by torch.fx" in stdout
    # asked explicitly: one line, exit 2, nothing written
    code, _, stderr = out["export"]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("prunelab: error: compact=true: run=") and "cannot be traced" in lines[0]
    assert not (tmp / "branchy" / "export").exists()
