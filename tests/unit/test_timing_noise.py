"""Timings taken while other work shares the cores are told apart, re-measured, and marked
(``"noisy": true`` and a warning) when they stay disturbed; a choice between kernels or memory
formats is not made on them. The load is made here: forward passes that sleep on some calls
(a preempted process looks the same to the clock)."""

import time

import pytest
import torch
from torch import nn

from prunelab.metrics.timing import (
    NOISY_MEDIAN_OVER_MIN,
    Timings,
    measure_latency,
    retime_noisy,
    time_alternating,
    timing_noise,
)


class Sleeper(nn.Module):
    """A forward pass that sleeps ``seconds`` on the calls ``disturbed(i)`` picks (i counts
    calls), and returns at once on the others."""

    def __init__(self, seconds: float, disturbed=lambda i: True):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.seconds, self.disturbed, self.calls = seconds, disturbed, 0

    def forward(self, x):
        self.calls += 1
        if self.disturbed(self.calls):
            time.sleep(self.seconds)
        return x


def under_load():
    """Two calls in three are held up 5 ms: what a busy machine does to a 10 us model."""
    return Sleeper(0.005, lambda i: i % 3 != 0)


# -- the rule, on made-up run times (no clock involved) ------------------------------------------
def test_clean_timings_are_not_flagged():
    assert timing_noise([1.00, 1.02, 0.98, 1.05, 1.01, 0.99, 1.10, 1.03, 1.00]) is None
    assert timing_noise([0.07, 0.09, 0.08, 0.12, 0.075, 0.08]) is None  # tiny, 1.7x spread
    assert timing_noise([5.0, 50.0]) is None  # too few runs to judge


def test_the_issue_case_is_flagged():
    """A batch-1 median of 178 ms with a fastest run of 0.28 ms (and an IQR of 193 ms)."""
    runs = [0.28, 0.3, 0.31, 150.0, 178.0, 180.0, 200.0, 240.0, 300.0]
    reason = timing_noise(runs)
    assert reason is not None and "fastest run (0.28 ms)" in reason and "IQR" in reason


def test_median_far_above_the_fastest_run_is_flagged():
    median = NOISY_MEDIAN_OVER_MIN * 1.0 + 0.5
    assert "fastest run" in timing_noise([1.0, median, median + 1])
    assert timing_noise([1.0, NOISY_MEDIAN_OVER_MIN - 0.5, NOISY_MEDIAN_OVER_MIN]) is None


def test_wide_spread_is_flagged_with_enough_runs():
    wide = [10.0, 10.0, 10.0, 11.0, 12.0, 18.0, 19.0, 20.0]  # IQR 8.25 of median 11.5
    assert "IQR" in timing_noise(wide)
    assert timing_noise(wide[:7]) is None  # 7 runs: the IQR is not judged, min/median 1.2x


# -- real timings, disturbed and quiet --------------------------------------------------------------
def test_latency_under_load_is_remeasured_then_marked_noisy(capsys):
    result = measure_latency(under_load(), (4,), batch_sizes=(1,), warmup=1, min_runs=10,
                             max_runs=10, max_rounds=3)["batch_1"]
    assert result["noisy"] is True and result["rounds"] == 3 and result["runs"] == 10
    assert "fastest run" in result["noise"] and "cores" in result["load"]
    assert result["median_ms"] > NOISY_MEDIAN_OVER_MIN * result["min_ms"]
    err = capsys.readouterr().err
    assert err.startswith("prunelab: warning: latency at batch 1: timings disturbed")
    assert 'still so after 3 rounds; the figure is marked "noisy": true' in err


def test_latency_disturbed_once_is_remeasured_and_clean():
    """Only the first round is disturbed: the second round is the figure, unmarked."""
    model = Sleeper(0.005, lambda i: 2 <= i <= 10 and i % 3 != 0)  # calls 1 (warm-up) .. 10
    result = measure_latency(model, (4,), batch_sizes=(1,), warmup=1, min_runs=9, max_runs=9,
                             max_rounds=3)["batch_1"]
    assert result["noisy"] is False and result["rounds"] == 2 and "noise" not in result
    assert result["median_ms"] < 2.0


def test_quiet_latency_is_not_flagged(capsys):
    """A steady 20 ms forward: even on a busy machine a sleep does not vary by a factor."""
    result = measure_latency(Sleeper(0.02), (4,), batch_sizes=(1,), warmup=1, min_runs=8,
                             max_runs=8, max_rounds=3)["batch_1"]
    assert result["noisy"] is False and "noise" not in result
    assert 19.0 <= result["min_ms"] <= result["median_ms"]
    assert "prunelab: warning" not in capsys.readouterr().err


def test_time_alternating_lists_the_disturbed_medians():
    lat = time_alternating({"loaded": under_load(), "quiet": Sleeper(0.02)}, (4,), [1, 2],
                           runs=6, warmup=1, rounds=2, threads=None)
    assert isinstance(lat, Timings) and set(lat) == {"loaded", "quiet"}
    assert set(lat.noisy) == {"loaded"} and set(lat.noisy["loaded"]) == {"batch_1", "batch_2"}


# -- choices are re-timed, then refused ----------------------------------------------------------
def fake_timer(noisy_calls, faster="channels_last"):
    """A stand-in for time_alternating: ``faster`` measures 1 ms, the other 2 ms; the calls
    whose number is in ``noisy_calls`` report every median disturbed."""
    calls = []

    def timer(models, input_shape, batch_sizes, runs, warmup, rounds, threads):
        calls.append((list(batch_sizes), rounds))
        out = Timings({k: {f"batch_{b}": 1.0 if k == faster else 2.0 for b in batch_sizes}
                       for k in models})
        if len(calls) in noisy_calls:
            out.noisy = {k: {f"batch_{b}": "made up" for b in batch_sizes} for k in models}
        return out
    return timer, calls


def test_retime_noisy_times_the_disturbed_sizes_again_in_more_rounds():
    timer, calls = fake_timer({1})
    lat = retime_noisy(timer, {"a": None, "b": None}, (4,), [1, 64], 5, 1, 2, None)
    assert calls == [([1, 64], 2), ([1, 64], 4)] and lat.noisy == {}
    timer, calls = fake_timer({1, 2})
    lat = retime_noisy(timer, {"a": None}, (4,), [1], 5, 1, 1, None)
    assert calls == [([1], 1), ([1], 3)] and lat.noisy == {"a": {"batch_1": "made up"}}


@pytest.mark.parametrize("noisy_calls,expect", [
    (set(), "channels_last"),      # clean: the faster one
    ({1}, "channels_last"),        # disturbed, then clean on the second timing: chosen on that
    ({1, 2}, "contiguous"),        # disturbed twice: refused, the default kept
])
def test_memory_format_is_not_chosen_on_noisy_timings(monkeypatch, capsys, noisy_calls, expect):
    import prunelab.deploy as deploy
    import prunelab.deploy.memory_format as memory_format
    from prunelab.models import build_model

    timer, calls = fake_timer(noisy_calls)
    monkeypatch.setattr(memory_format, "time_alternating", timer)
    cnn = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).eval()
    models, info = {"dense": cnn}, {"dense": {}}
    deploy.choose_memory_format(deploy.MeasureConf(memory_format="measured", batch_sizes=[1]),
                                models, info, (1, 28, 28))
    assert info["dense"]["memory_format"] == {"batch_1": expect}
    assert len(calls) == (2 if noisy_calls else 1)
    err = capsys.readouterr().err
    if noisy_calls == {1, 2}:
        assert info["dense"]["memory_format_refused"] == {"batch_1": "made up"}
        assert models["dense"] is cnn
        assert ("prunelab: warning: memory format of dense at batch 1: timings disturbed by "
                "other work (made up; load average") in err
        assert "not chosen on them: contiguous kept" in err
    else:
        assert "memory_format_refused" not in info["dense"] and err == ""


@pytest.mark.parametrize("noisy_calls,kept", [(set(), True), ({2, 3}, False)])
def test_csr_is_not_chosen_on_noisy_whole_model_timings(monkeypatch, capsys, noisy_calls, kept):
    """Every layer measures faster on CSR; the whole-model timings (calls 2 and 3) are
    disturbed: the model stays dense and says why."""
    import prunelab.compress.sparse as sparse_mod
    from prunelab.compress.sparse import SparseLinear, sparsify

    timer, _ = fake_timer(noisy_calls, faster="sparse")
    monkeypatch.setattr(sparse_mod, "time_alternating", timer)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    with torch.no_grad():
        net[1].weight.mul_(torch.rand(8, 16) > 0.9)
    model, res = sparsify(net, batch_sizes=[1], input_shape=(1, 4, 4))
    assert any(isinstance(m, SparseLinear) for m in model.modules()) is kept
    assert res.reverted is (not kept) and (res.noisy is None) is kept
    if not kept:
        assert res.as_dict()["noisy"].startswith("dense at batch_1: made up")
        assert "CSR for the whole model: timings disturbed" in capsys.readouterr().err


def test_a_layer_timed_noisy_stays_dense(monkeypatch, capsys):
    import prunelab.compress.sparse as sparse_mod
    from prunelab.compress.sparse import sparsify

    timer, _ = fake_timer({1, 2}, faster="sparse")
    monkeypatch.setattr(sparse_mod, "time_alternating", timer)
    net = nn.Sequential(nn.Linear(16, 8))
    with torch.no_grad():
        net[0].weight.mul_(torch.rand(8, 16) > 0.9)
    _, res = sparsify(net, batch_sizes=[1])
    assert [c.sparse for c in res.layers] == [False] and res.layers[0].noisy
    assert res.as_dict()["layers"][0]["noisy"] == res.layers[0].noisy
    assert "CSR for 0: timings disturbed" in capsys.readouterr().err


def test_the_sweep_report_names_noisy_latencies():
    from prunelab.analysis.sweep import markdown, summarize

    def res(pruner, noisy):
        detail = {"batch_1": {"median_ms": 178.0, "min_ms": 0.28, "noisy": noisy}}
        return {"data": "mnist", "model": "mlp", "pruner": pruner, "target_sparsity": 0.5,
                "seed": 0, "test_acc": 0.9, "sparsity": {"global": 0.5, "per_layer": {}},
                "macs": {"dense": 10, "effective": 5}, "wall_time_s": 1.0, "group_hash": pruner,
                "latency_ms": {"batch_1": 178.0}, "latency_detail": detail}

    rows = summarize([res("magnitude", True), res("random", False)])
    assert {r["pruner"]: r["latency_noisy"] for r in rows} == {"magnitude": True, "random": False}
    md = markdown(rows)
    assert "**Latency measured while other work shared the cores**" in md
    assert md.rstrip().endswith("mlp magnitude @0.5")
    assert "shared the cores" not in markdown(summarize([res("random", False)]))
