"""``python -m prunelab.search``: a search end to end on a small trained run (trials are ordinary
runs whose weights follow the policy, the front, the policy files a train run takes as they
are, a rerun that resumes), the bad inputs, and (slow) the latency objective in ExecuTorch with
final retrains, the search_lr experiment, two search processes on one storage, a killed search."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import FAST, run_cli

from prunelab.config import load_profile

TRIALS = ["proxy_epochs=0", "baselines.uniform=[0.5]", "final_epochs=0"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A dense LeNet-5 trained in seconds: what every trial starts from."""
    tmp = tmp_path_factory.mktemp("search")
    p = run_cli("prunelab.train", [*FAST, "model=lenet5", "pruner=none", "sparsity=0",
                                   f"hydra.run.dir={tmp / 'dense'}"], tmp)
    assert p.returncode == 0, p.stderr[-2000:]
    return tmp / "dense"


def search(args, cwd, timeout=600):
    return run_cli("prunelab.search", args, cwd, timeout=timeout)


def rows(out):
    with open(out / "pareto.csv") as f:
        return list(csv.DictReader(f))


def test_search_runs_trials_as_runs_writes_the_front_and_resumes(dense, tmp_path):
    out = tmp_path / "s"
    args = [f"run={dense}", "n_trials=2", *TRIALS, "baselines.sensitivity=false",
            "params={pruner.score: 'choice(magnitude,taylor)'}", f"hydra.run.dir={out}"]
    p = search(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    table = rows(out)
    trials = [r for r in table if r["kind"] == "trial"]
    assert len(trials) == 2 and {r["kind"] for r in table} == {"trial", "uniform"}
    for r in trials:  # each trial is a run whose pruned weights follow its policy exactly
        res = json.loads((out / "trials" / f"{int(r['number']):04d}" / "results.json").read_text())
        policy = yaml.safe_load((out / "trials" / f"{int(r['number']):04d}.policy.yaml").read_text())
        for w, ratio in policy["layers"].items():
            assert res["sparsity"]["per_layer"][w] == pytest.approx(ratio, abs=2e-3), w
        assert float(r["val_acc"]) == pytest.approx(res["best_val_acc"])
        assert int(r["macs"]) == res["macs"]["nonzero"]
    front = [(float(r["val_acc"]), int(r["macs"])) for r in trials if r["on_front"] == "True"]
    for r in trials:
        a, m = float(r["val_acc"]), int(r["macs"])
        dominated = any(fa >= a and fm <= m and (fa, fm) != (a, m) for fa, fm in front)
        assert (r["on_front"] == "True") == (not dominated)
    assert (out / "pareto.png").stat().st_size > 0 and "## Front" in (out / "report.md").read_text()
    import optuna

    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}")
    distinct = {tuple(sorted(t.params.items())) for t in study.trials  # a repeat is not rerun
                if t.state.name == "COMPLETE"}
    assert len(list((out / "trials").glob("*/results.json"))) == len(distinct)
    for r in trials:  # the method that ranks within each layer is searched with the policy
        run_cfg = yaml.safe_load((out / "trials" / f"{int(r['number']):04d}" / ".hydra" /
                                  "config.yaml").read_text())
        assert run_cfg["pruner"]["score"] == study.trials[int(r["number"])].params["pruner.score"]
    # taken as is by pruner=sensitivity: the trials above are train runs given such a file
    assert load_profile(out / "best_policy_0.yaml")["layers"]
    before = sorted(p.name for p in (out / "trials").iterdir())
    again = search(args, tmp_path)  # the study is full: no new trial, the same front
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in (out / "trials").iterdir()) == before
    assert rows(out) == table
    report = (out / "report.md").read_text()
    (out / "report.md").unlink()
    (out / "pareto.png").unlink()
    r = run_cli("prunelab.report", [str(out)], tmp_path)  # drawn again from search.json
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "report.md").read_text() == report and (out / "pareto.png").is_file()


@pytest.mark.parametrize("args, message", [  # the others (storage too): tests/unit/test_policy_search.py
    (["objectives=[val_acc,flops]"], "objectives: unknown objective 'flops'; allowed: val_acc, "
                                     "macs, params, size, latency"),
    pytest.param(["granularity=channels", "objectives=[val_acc,latency]",
                  "budgets={latency:0.00001}"],
                 "budgets.latency=1e-05 is below the smallest reachable latency of this network "
                 "on eager", marks=pytest.mark.slow),  # times the network: -m slow
])
def test_bad_input_is_one_line_and_writes_nothing(dense, tmp_path, args, message):
    out = tmp_path / "s"
    p = search([f"run={dense}", *args, f"hydra.run.dir={out}"], tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not out.exists()


@pytest.mark.slow  # the message itself: tests/unit/test_policy_search.py
def test_a_study_of_other_objectives_on_the_storage_is_refused_and_left_alone(dense, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="search", storage=url, directions=["maximize", "minimize"]
                        ).set_user_attr("prunelab", {"objectives": ["val_acc", "params"]})
    p = search([f"run={dense}", f"storage={url}", f"hydra.run.dir={tmp_path / 's'}"], tmp_path)
    assert p.returncode == 2
    assert ("study 'search' in the storage has objectives ['val_acc', 'params'] (maximize, "
            "minimize), not ['val_acc', 'macs']: use another study_name= or storage=") in p.stderr
    assert not optuna.load_study(study_name="search", storage=url).trials
    assert not (tmp_path / "s").exists()


def test_run_is_required_for_a_policy_search(tmp_path):
    p = search([f"hydra.run.dir={tmp_path / 's'}"], tmp_path)
    assert p.returncode == 2 and "run= is required" in p.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # ExecuTorch timing and final retrains: `python -m pytest -m slow`
def test_latency_search_in_executorch_retrains_and_measures_the_chosen(dense, tmp_path):
    pytest.importorskip("executorch")
    out = tmp_path / "lat"
    p = search([f"run={dense}", "granularity=channels", "objectives=[val_acc,latency]",
                "hardware=edge_cpu", "hardware.runtime=executorch", "n_trials=3",
                "proxy_epochs=0", "baselines.uniform=[0.5]", "final_epochs=1", "final_points=1",
                "final_seeds=[0,1]", f"hydra.run.dir={out}"], tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "search.json").read_text())
    finals = {r["name"]: r for r in summary["finals"]}
    assert {r["kind"] for r in finals.values()} == {"final:chosen", "final:uniform"}
    assert all(r["seeds"] == 2 and r["latency"] > 0 for r in finals.values())
    profile = load_profile(out / "best_policy_0.yaml")
    assert profile["granularity"] == "structured"
    assert len(list((out / "final").glob("*/results.json"))) == 4


@pytest.mark.slow
def test_search_lr_experiment_finds_the_best_trial(tmp_path):
    out = tmp_path / "lr"
    p = search(["experiment=search_lr", "n_trials=2", "params={optimizer.lr:'log(1e-4,1e-2)'}",
                'proxy_overrides=["data.subset=400","measure.latency=false","epochs=2"]',
                f"hydra.run.dir={out}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    trials = [json.loads(f.read_text()) for f in out.glob("trials/*/results.json")]
    best = json.loads((out / "search.json").read_text())["chosen"][0]
    assert len(trials) == 2 and best["val_acc"] == max(t["best_val_acc"] for t in trials)
    assert "optimizer.lr=" in (out / "report.md").read_text()


def _popen(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "prunelab.search", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_search_processes_share_one_study(dense, tmp_path):
    import optuna

    out, url = tmp_path / "s", f"sqlite:///{tmp_path / 'shared.db'}"
    args = [f"run={dense}", "n_trials=4", *TRIALS, f"storage={url}", f"hydra.run.dir={out}"]
    procs = [_popen([*args, f"seed={i}"], tmp_path) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="search", storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({t.user_attrs["run_dir"] for t in complete}) == 4
    assert len({t.user_attrs["pid"] for t in complete}) == 2
    assert len(list(out.glob("trials/*/results.json"))) == 4


@pytest.mark.slow
def test_a_killed_search_completes_the_remaining_trials(dense, tmp_path):
    import optuna

    out = tmp_path / "s"
    args = [f"run={dense}", "n_trials=3", *TRIALS, f"hydra.run.dir={out}"]  # + sensitivity
    first = _popen(args, tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "trials" / "0001.log").exists():
        time.sleep(0.5)
    os.kill(first.pid, signal.SIGKILL)  # trial 1 is running: its train child dies with it
    first.communicate()
    p = search(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "were running in a search that died: retried" in p.stdout
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    # trial 1 is retried (as trial 2) in its own directory; trial 3 is the last one
    assert sorted(t.user_attrs["run_dir"] for t in complete) == [
        str(out / "trials" / f"{n:04d}") for n in (0, 1, 3)]
    kinds = {r["kind"] for r in rows(out)}
    assert kinds == {"trial", "uniform", "sensitivity"}  # the sensitivity-profile baseline ran
