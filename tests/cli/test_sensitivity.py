"""Sensitivity analysis: profile maths, and the CLI end to end on a small run."""

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from prunelab.analysis.sensitivity import SensitivityError, analyze, make_profile


def rows_for(curves):
    return [{"layer": layer, "sparsity": r, "val_acc": 0.9 - d, "drop": d}
            for layer, pts in curves.items() for r, d in pts]


CURVES = {  # drop in accuracy when pruning the layer alone to each ratio
    "robust": [(0.5, 0.0), (0.8, 0.001), (0.9, 0.01)],
    "middle": [(0.5, 0.002), (0.8, 0.02), (0.9, 0.05)],
    "fragile": [(0.5, 0.03), (0.8, 0.2), (0.9, 0.5)],
}
SIZES = {"robust": 1000, "middle": 500, "fragile": 100}


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.8])
def test_profile_reaches_target_exactly_and_orders_by_sensitivity(target):
    prof = make_profile(rows_for(CURVES), SIZES, target)
    total = sum(prof[n] * SIZES[n] for n in SIZES) / sum(SIZES.values())
    assert total == pytest.approx(target, abs=1e-9)
    assert prof["robust"] >= prof["middle"] >= prof["fragile"]
    assert all(0 <= s <= 0.9 for s in prof.values())


def test_profile_unreachable_target_is_an_error():
    with pytest.raises(SensitivityError, match="target_sparsity=0.95 cannot be reached"):
        make_profile(rows_for(CURVES), SIZES, 0.95)


def run(module, args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sensitivity_cli_end_to_end(tmp_path):
    run_dir = tmp_path / "dense"
    p = run("prunelab.train", ["debug=fast", "pruner=none", "measure.latency=false",
                               f"hydra.run.dir={run_dir}"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    out = tmp_path / "sens"
    p = run("prunelab.sensitivity", [f"run={run_dir}", "ratios=[0.5,0.9]", "target_sparsity=0.6",
                                     f"hydra.run.dir={out}"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(out / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    layers = ["features.0.weight", "features.2.weight", "classifier.weight"]
    assert [(r["layer"], float(r["sparsity"])) for r in rows] == [
        (n, s) for n in layers for s in (0.5, 0.9)]
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out / "sensitivity.png").shape[0] > 100
    prof = yaml.safe_load((out / "profile.yaml").read_text())
    assert prof["target_sparsity"] == 0.6 and set(prof["layers"]) == set(layers)
    sizes = {"features.0.weight": 784 * 300, "features.2.weight": 300 * 100,
             "classifier.weight": 100 * 10}
    total = sum(prof["layers"][n] * sizes[n] for n in layers) / sum(sizes.values())
    assert total == pytest.approx(0.6, abs=1e-5)
    assert "pruner=sensitivity pruner.profile=" in p.stdout
    # and the profile drives a run: per-layer sparsities as profiled
    pruned = tmp_path / "pruned"
    p = run("prunelab.train", ["debug=fast", "pruner=sensitivity", f"pruner.profile={out}/profile.yaml",
                               "measure.latency=false", f"hydra.run.dir={pruned}"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((pruned / "results.json").read_text())
    assert res["target_sparsity"] == 0.6
    for n in layers:
        assert res["sparsity"]["per_layer"][n] == pytest.approx(prof["layers"][n], abs=1e-3)
    assert res["sparsity"]["global"] == pytest.approx(0.6, abs=1e-3)


def test_analyze_prunes_one_layer_at_a_time_and_restores_the_weights():
    import torch
    from torch import nn

    from prunelab.metrics import accuracy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 8)
    y = net(x).argmax(1)  # the unpruned net is always right
    loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    base, rows = analyze(net, loader, ["1.weight", "3.weight"], [0.5, 0.99])
    assert base == 1.0
    assert [(r["layer"], r["sparsity"]) for r in rows] == [
        ("1.weight", 0.5), ("1.weight", 0.99), ("3.weight", 0.5), ("3.weight", 0.99)]
    for r in rows:
        assert r["drop"] == pytest.approx(base - r["val_acc"])
    assert rows[1]["val_acc"] < 1.0  # 99% of a layer gone: accuracy falls
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # the row's accuracy is the network's with that layer alone pruned
    w = net[1].weight.detach().clone()
    keep = w.abs() > w.abs().flatten().kthvalue(int(0.5 * w.numel())).values
    with torch.no_grad():
        net[1].weight.mul_(keep)
    assert rows[0]["val_acc"] == accuracy(net, loader)


def test_help_shows_the_options_and_examples(tmp_path):
    p = run("prunelab.sensitivity", ["--help"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "python -m prunelab.sensitivity run=outputs/runs/<dense run>" in p.stdout
    assert "checkpoint=best" in p.stdout and "best | last" in p.stdout
    assert "schema/" not in p.stdout and "== Config ==" not in p.stdout
    assert not any(tmp_path.iterdir())
