"""Latency-aware structured pruning: greedy choice against a latency table, budget floor."""

import pytest
import torch

from prunelab.models import build_model
from prunelab.errors import UserError
from prunelab.pruning import Gradual, LatencyAware, OneShot, PruningConfigError
from prunelab.pruning.methods import latency_aware as lat_mod
from prunelab.pruning.methods.latency_aware import LatencyBudgetError, latency_aware_keeps

#: synthetic costs (ms per kept channel) of lenet5's three shrinkable groups
COST = {"features.0": 0.002, "features.2": 0.010, "classifier.0": 0.001}
BASE = 0.05


def fake_build(self, keeps):
    """Stands in for the compacted model: the keeps themselves."""
    return dict(keeps)


def fake_time(self, *models, rounds=3):
    """A deterministic latency model: BASE + sum over groups of cost x kept channels."""
    out = []
    for keeps in models:
        total = BASE
        for gi, g in enumerate(self.groups):
            name = g.producers[0] if g.producers else None
            if name in COST:
                kept = int(keeps[gi].sum()) if gi in keeps else g.size
                total += COST[name] * kept
        out.append(total)
    return out


@pytest.fixture
def lenet5(monkeypatch):
    monkeypatch.setattr(lat_mod.LatencyModel, "build", fake_build)
    monkeypatch.setattr(lat_mod.LatencyModel, "time", fake_time)
    torch.manual_seed(0)
    net = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    names = ["features.0.weight", "features.2.weight", "classifier.0.weight",
             "classifier.2.weight"]
    old = {n: torch.ones(dict(net.named_parameters())[n].shape[0], dtype=torch.bool) for n in names}
    return net, names, old


def test_greedy_meets_the_budget_and_takes_the_cheapest_milliseconds_first(lenet5):
    net, names, old = lenet5
    full = BASE + 20 * COST["features.0"] + 50 * COST["features.2"] + 500 * COST["classifier.0"]
    budget = full - 0.25
    keeps, report = latency_aware_keeps(net, (1, 28, 28), names, ["classifier.2.weight"], old,
                                        budget)
    assert report["met"] and report["achieved_ms"] <= budget
    assert report["dense_ms"] == pytest.approx(full)
    assert "classifier.2.weight" not in keeps  # the output layer is never pruned
    kept = {n: int(k.sum()) for n, k in keeps.items()}
    # features.2 saves 0.010 ms per channel: most of the saving comes from there
    assert kept["features.2.weight"] < 50
    assert all(1 <= kept[n] <= old[n].numel() for n in kept)
    # the removed channels of a layer are its smallest by L1 norm
    w = net.features[2].weight.detach().reshape(50, -1).abs().mean(1)
    k = keeps["features.2.weight"]
    assert w[~k].max() <= w[k].min()


def test_already_pruned_channels_stay_pruned(lenet5):
    net, names, old = lenet5
    old["features.2.weight"][:10] = False
    keeps, _ = latency_aware_keeps(net, (1, 28, 28), names, ["classifier.2.weight"], old, 0.6)
    assert not bool(keeps["features.2.weight"][:10].any())


def test_a_budget_below_the_floor_names_the_closest_reachable(lenet5):
    net, names, old = lenet5
    floor = BASE + COST["features.0"] + COST["features.2"] + COST["classifier.0"]
    with pytest.raises(LatencyBudgetError, match=rf"closest reachable: latency_budget_ms={floor:.3f}"):
        latency_aware_keeps(net, (1, 28, 28), names, ["classifier.2.weight"], old, 0.01)


def test_pruner_preset_masks_whole_channels(lenet5):
    net, _, _ = lenet5
    pruner = LatencyAware(latency_budget_ms=0.5)
    assert pruner.report() is None  # nothing pruned yet
    masks = pruner.prepare(net)
    new = pruner.compute_masks(masks.params, masks.as_dict(), 0.5)
    masks.update(new)
    masks.apply_()
    w = net.features[2].weight.detach().reshape(50, -1)
    rows_zero = (w == 0).all(1)
    assert rows_zero.any() and bool(((w == 0).all(1) | (w != 0).all(1)).all())
    report = pruner.report()
    assert report["met"] and report["achieved_ms"] <= 0.5 and report["budget_ms"] == 0.5
    # results.json: the report under the method's own key and the generic one
    assert pruner.describe() == {"pruner": "latency_aware", "scope": "layer",
                                 "granularity": "structured", "skipped_layers": [],
                                 "method_report": report, "latency_aware": report}


def test_latency_aware_needs_a_budget():
    with pytest.raises(PruningConfigError, match="needs hardware.latency_budget_ms"):
        LatencyAware()
    with pytest.raises(PruningConfigError, match="needs hardware.latency_budget_ms"):
        LatencyAware(latency_budget_ms=0)


def test_check_run_wants_oneshot_and_a_reachable_budget(lenet5):
    net, _, _ = lenet5
    floor = BASE + COST["features.0"] + COST["features.2"] + COST["classifier.0"]
    with pytest.raises(PruningConfigError, match=r"^pruner=latency_aware prunes once: use "
                                                 r"schedule=oneshot \(got schedule=gradual\)$"):
        LatencyAware(latency_budget_ms=0.5).check_run(net, Gradual(1, 2), 0.5)
    with pytest.raises(UserError, match=rf"closest reachable: latency_budget_ms={floor:.3f}"):
        LatencyAware(latency_budget_ms=0.01).check_run(net, OneShot(1), 0.5)
    LatencyAware(latency_budget_ms=0.5).check_run(net, OneShot(1), 0.5)  # reachable: no error


def test_layers_whose_removal_saves_no_time_are_left_whole(lenet5, monkeypatch):
    net, names, old = lenet5
    monkeypatch.setitem(COST, "features.0", 0.0)
    monkeypatch.setitem(COST, "classifier.0", 0.0)
    full = BASE + 50 * COST["features.2"]
    keeps, report = latency_aware_keeps(net, (1, 28, 28), names, ["classifier.2.weight"], old,
                                        full - 0.2)
    kept = {n: int(k.sum()) for n, k in keeps.items()}
    assert kept["features.0.weight"] == 20 and kept["classifier.0.weight"] == 500
    assert kept["features.2.weight"] <= 30 and report["met"]


def test_runtime_must_be_known_and_installed(monkeypatch):
    with pytest.raises(PruningConfigError, match=r"^hardware.runtime='tflite'; allowed: eager, "
                                                 r"executorch, onnxruntime$"):
        LatencyAware(latency_budget_ms=1.0, latency_runtime="tflite")
    from prunelab.compress import executorch_model

    monkeypatch.setattr(executorch_model, "executorch_available", lambda: False)
    with pytest.raises(PruningConfigError, match=r"^hardware.runtime=executorch needs ExecuTorch: "
                                                 r"pip install 'prunelab\[executorch\]'$"):
        LatencyAware(latency_budget_ms=1.0, latency_runtime="executorch")


@pytest.mark.slow  # lowers lenet5 three times: pytest -m slow
@pytest.mark.parametrize("runtime", ["executorch", "onnxruntime"])
def test_the_table_is_timed_in_the_chosen_runtime(runtime):
    """The floor and the whole model timed as ExecuTorch programs / onnxruntime sessions: the
    runtime's calls, not PyTorch's, and one channel per group is faster than all of them."""
    if runtime == "executorch":
        pytest.importorskip("executorch.runtime")
    else:
        pytest.importorskip("onnxruntime")
    from prunelab.graph import channel_groups

    torch.manual_seed(0)
    net = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).eval()
    groups = channel_groups(net, (1, 28, 28))
    model = lat_mod.LatencyModel(net, (1, 28, 28), groups, batch=8, threads=1, runs=20,
                                 runtime=runtime)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    call = model._runtime_call(net, x)
    with torch.no_grad():
        got = call()
        got = torch.as_tensor(got[0])
        assert (got - net(x)).abs().max() <= 1e-4  # it runs this model on this input
    prunable = ["features.0.weight", "features.2.weight", "classifier.0.weight",
                "classifier.2.weight"]
    floor, full = lat_mod.latency_floor(net, (1, 28, 28), prunable, ["classifier.2.weight"],
                                        batch=8, threads=1, runs=20, runtime=runtime)
    assert 0 < floor < full


def test_executorch_refuses_a_model_with_ops_outside_xnnpack():
    pytest.importorskip("executorch.runtime")
    from prunelab.graph import channel_groups

    class Cumsum(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1)).cumsum(1)

    net = Cumsum().eval()
    model = lat_mod.LatencyModel(net, (1, 28, 28), channel_groups(net, (1, 28, 28)), batch=1,
                                 threads=1, runs=5, runtime="executorch")
    with pytest.raises(PruningConfigError, match=r"^hardware.runtime=executorch: XNNPACK does not "
                                                 r"take aten.cumsum.default \(x1\) of Cumsum; "):
        model.measure({})


def test_runtime_calls_of_the_models_timed_last_are_reused(monkeypatch):
    """The table times the whole model beside every width: it is lowered (exported) once, not
    once per width."""
    monkeypatch.setattr("prunelab.metrics.timing.time_in_turn",
                        lambda calls, runs, warmup, rounds: {k: 1.0 for k in calls})
    net = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).eval()
    model = lat_mod.LatencyModel(net, (1, 28, 28), [], batch=1, threads=None, runs=1,
                                 runtime="executorch")
    lowered = []
    monkeypatch.setattr(model, "_runtime_call", lambda m, x: lowered.append(m) or (lambda: None))
    full, a, b = object(), object(), object()
    model.time(full)
    model.time(full, a)
    model.time(full, b)
    model.time(full, a)  # a was evicted by b
    assert lowered == [full, a, b, a]


def test_the_summary_names_the_latency_budget_not_an_unused_sparsity():
    from prunelab.results import summary_rows

    res = {"model": "lenet5", "data": "mnist", "pruner": "latency_aware", "schedule": "oneshot",
           "seed": 0, "sparsity": {"global": 0.0002}, "target_sparsity": 0.5,
           "channel_sparsity": {"global": 0.12}, "test_acc": 0.9, "test_loss": 0.3,
           "best_val_acc": 0.9, "params": {"nonzero": 10, "total": 20},
           "macs": {"dense": 100, "compact": 80, "nonzero": 80}, "wall_time_s": 1.0,
           "results_path": "results.json",
           "latency_aware": {"budget_ms": 0.3, "batch": 1, "achieved_ms": 0.2939, "met": True}}
    row = dict(summary_rows(res))["sparsity"]
    assert row == ("0.0002 of weights (latency budget 0.3 ms at batch 1: 0.294 ms measured, "
                   "met), 0.1200 of channels")
    res["latency_aware"]["met"] = False
    assert "NOT met" in dict(summary_rows(res))["sparsity"]
    del res["latency_aware"]
    assert "(target 0.5000)" in dict(summary_rows(res))["sparsity"]


def test_the_latency_report_survives_a_checkpoint_round_trip(tmp_path):
    pruner = LatencyAware(latency_budget_ms=0.5)
    pruner._report = {"budget_ms": 0.5, "batch": 1, "achieved_ms": 0.41, "met": True,
                      "widths": {"features.0": [20, 12]}}
    torch.save({"method": pruner.state_dict()}, tmp_path / "c.ckpt")
    resumed = LatencyAware(latency_budget_ms=0.5)
    resumed.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["method"])
    assert resumed.report() == pruner.report()
    assert resumed.describe()["latency_aware"] == pruner._report
