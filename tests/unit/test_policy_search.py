"""Policy search internals: the space and its profiles, structured profiles applied exactly, the
front, parameter specs, and the study across processes (two workers, a killed worker)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from prunelab.errors import ConfigError
from prunelab.models import build_model
from prunelab.policy_search import front as fr
from prunelab.policy_search.space import build_space, parse_params
from prunelab.policy_search.study import SearchError, open_storage, open_study

WORKER = Path(__file__).parents[1] / "cli" / "search_worker.py"


def lenet5():
    torch.manual_seed(0)
    return build_model("lenet5", (1, 28, 28), 10)


def test_unstructured_space_profile_reaches_the_policy_sparsity():
    net = lenet5()
    space = build_space(net, {}, "unstructured", 0.9, 0.1)
    assert space.grid() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    ratios = {n: 0.5 if i % 2 else 0.0 for i, n in enumerate(space.names)}
    prof = space.profile(ratios)
    zeros = sum(ratios[n] * space.elements[n] for n in space.names)
    assert prof["target_sparsity"] == pytest.approx(zeros / space.total, abs=1e-6)
    assert prof["granularity"] == "unstructured" and prof["layers"] == ratios
    assert space.profile(space.uniform(0.0)) is None  # nothing pruned: no profile


def test_channel_space_names_each_unit_once_and_profiles_every_weight_of_it():
    net = build_model("resnet20", (3, 32, 32), 10)
    space = build_space(net, {}, "channels", 0.9, 0.1)
    weights = [w for ws in space.weights.values() for w in ws]
    assert len(weights) == len(set(weights))
    tied = [ws for ws in space.weights.values() if len(ws) > 1]
    assert tied, "the residual stages tie several convolutions into one unit"
    prof = space.profile(space.uniform(0.5))
    assert prof["granularity"] == "structured"
    assert all(prof["layers"][w] == 0.5 for w in weights)


def test_structured_profile_removes_exactly_the_policy_channels(tmp_path):
    from prunelab.pruning.methods import Sensitivity

    net = lenet5()
    space = build_space(net, {}, "channels", 0.9, 0.05)
    ratios = dict(zip(space.names, [0.5, 0.3, 0.75]))
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(space.profile(ratios)))
    method = Sensitivity(profile=str(path))
    masks = method.prepare(net)
    params = dict(net.named_parameters())
    prunable = method.resolve(net)
    new = method.compute_masks({n: params[n] for n in prunable},
                               {n: masks[n] for n in prunable},
                               space.profile(ratios)["target_sparsity"])
    for name, ratio in ratios.items():
        rows = new[name].reshape(new[name].shape[0], -1)
        dead = int((~rows.any(1)).sum())
        assert dead == round(ratio * rows.shape[0]), name
        assert bool((rows.all(1) | ~rows.any(1)).all()), "whole channels only"
        norms = params[name].detach().abs().reshape(rows.shape[0], -1).sum(1)
        assert norms[~rows.any(1)].max() <= norms[rows.any(1)].min()  # smallest L1 norms go


@pytest.mark.parametrize("granularity", ["unstructured", "channels"])
def test_the_score_within_each_layer_is_the_searched_method(tmp_path, granularity):
    """``pruner.score=taylor``: each layer still goes to the policy's ratio, and what goes is
    the smallest accumulated |w * dL/dw| (given here), not the smallest |w|."""
    from prunelab.pruning.methods import Sensitivity

    net = lenet5()
    space = build_space(net, {}, granularity, 0.9, 0.05)
    ratios = dict(zip(space.names, [0.5, 0.3, 0.75, 0.2]))
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(space.profile(ratios)))
    params = dict(net.named_parameters())
    gen = torch.Generator().manual_seed(1)
    stats = {n: {"wg": torch.rand(p.shape, generator=gen)} for n, p in params.items()}
    masks = {}
    for score in ("magnitude", "taylor"):
        method = Sensitivity(profile=str(path), score=score)
        assert ("gradients" in method.needs) == (score == "taylor")
        prunable = {n: params[n] for n in method.resolve(net)}
        old = method.prepare(net)
        masks[score] = method.compute_masks(prunable, {n: old[n] for n in prunable},
                                            space.profile(ratios)["target_sparsity"], stats=stats)
    profile = space.profile(ratios)["layers"]
    for name, ratio in profile.items():
        new, wg = masks["taylor"][name], stats[name]["wg"]
        if granularity == "unstructured":
            assert int((~new).sum()) == round(ratio * new.numel()), name
            assert wg[~new].max() <= wg[new].min(), name  # the smallest |w * dL/dw| go
        else:
            rows = new.reshape(new.shape[0], -1)
            dead = ~rows.any(1)
            assert int(dead.sum()) == round(ratio * rows.shape[0]), name
            score = wg.reshape(rows.shape[0], -1).sum(1)  # a channel's: its elements' sum
            assert score[dead].max() <= score[~dead].min(), name
    assert any(not torch.equal(masks["taylor"][n], masks["magnitude"][n]) for n in masks["taylor"])


def test_a_policy_that_prunes_nothing_leaves_the_method_settings_out(tmp_path):
    from prunelab.policy_search.trials import trial_command

    params = {"pruner.score": "taylor", "optimizer.lr": 0.01}
    dense = trial_command([], tmp_path / "run", None, 1, [], params, tmp_path / "t")
    assert "pruner=none" in dense and "optimizer.lr=0.01" in dense
    assert not any(a.startswith("pruner.score") for a in dense)  # pruner=none has no score
    pruned = trial_command([], tmp_path / "run", tmp_path / "p.yaml", 1, [], params, tmp_path / "t")
    assert "pruner=sensitivity" in pruned and "pruner.score=taylor" in pruned


def test_an_unknown_score_is_one_line(tmp_path):
    from prunelab.pruning.methods import Sensitivity
    from prunelab.pruning.params import PruningConfigError

    space = build_space(lenet5(), {}, "unstructured", 0.9, 0.05)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(space.profile(space.uniform(0.5))))
    with pytest.raises(PruningConfigError, match=r"pruner.score='l2'; allowed: magnitude, "
                                                 r"taylor, random"):
        Sensitivity(profile=str(path), score="l2")


def test_params_specs_and_their_errors():
    parsed = parse_params({"optimizer.lr": "log(1e-4,1e-2)", "epochs": "int(1,3)",
                           "pruner.norm": "choice(1,2)", "x": "float(0, 0.5)"})
    assert parsed["optimizer.lr"] == ("log", [1e-4, 1e-2]) and parsed["epochs"] == ("int", [1, 3])
    assert parsed["pruner.norm"] == ("choice", [1, 2])  # typed as YAML reads them
    for spec, why in [("normal(0,1)", "allowed: float"), ("log(0,1)", "lo > 0"),
                      ("int(1.5,3)", "integers"), ("float(2,1)", "lo < hi")]:
        with pytest.raises(ConfigError, match=why):
            parse_params({"k": spec})


def test_front_marks_the_non_dominated_and_chooses_spread_points():
    rows = [{"val_acc": a, "macs": m} for a, m in
            [(0.9, 10), (0.8, 5), (0.85, 5), (0.7, 1), (0.6, 2), (0.95, 20)]]
    fr.mark_front(rows, ["val_acc", "macs"], [1, -1])
    assert [r["on_front"] for r in rows] == [True, False, True, True, False, True]
    chosen = fr.choose([r for r in rows if r["on_front"]], ["val_acc", "macs"], 2)
    assert [r["macs"] for r in chosen] == [1, 20]  # the two ends of the front


def test_chosen_against_uniform_states_points_and_cost():
    finals = [{"kind": "final:chosen", "name": "c", "test_acc": 0.99, "macs": 30.0},
              {"kind": "final:uniform", "name": "u", "test_acc": 0.98, "macs": 40.0}]
    line, = fr.compare_with_uniform(finals, "macs")
    assert "c 99.00 % (+1.00 points)" in line and "macs 30 (-25.0 %)" in line


def test_a_study_with_other_objectives_is_refused(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=None)
    open_study(storage, "s", ["maximize", "minimize"],
               {"objectives": ["val_acc", "macs"], "step": 0.1}, None)
    with pytest.raises(SearchError, match=r"has objectives \['val_acc', 'macs'\].*not "
                                          r"\['val_acc', 'params'\]"):
        open_study(storage, "s", ["maximize", "minimize"], {"objectives": ["val_acc", "params"]},
                   None)
    with pytest.raises(SearchError, match="other settings .*step: 0.1 vs 0.05"):
        open_study(storage, "s", ["maximize", "minimize"],
                   {"objectives": ["val_acc", "macs"], "step": 0.05}, None)


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path):
    with pytest.raises(SearchError, match=r"storage='sqlite:////nonexistent/dir/s.db' cannot be "
                                          r"opened"):
        open_storage("sqlite:////nonexistent/dir/s.db", heartbeat=None)


def _worker(url, n, delay, log):
    return subprocess.Popen([sys.executable, str(WORKER), url, str(n), str(delay), str(log)],
                            cwd=log.parent, stderr=subprocess.PIPE, text=True)


def _trials(url):
    import optuna

    return optuna.load_study(study_name="s", storage=url).get_trials()


def test_two_processes_on_one_storage_finish_the_study_without_loss_or_duplicates(tmp_path):
    from optuna.trial import TrialState

    url, log = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "log"
    workers = [_worker(url, 8, 0.3, log) for _ in range(2)]
    for w in workers:
        assert w.wait(timeout=120) == 0, w.stderr.read()[-2000:]
    done = [ln.split() for ln in log.read_text().splitlines() if ln.endswith("done")]
    complete = [t for t in _trials(url) if t.state == TrialState.COMPLETE]
    assert len(complete) == 8 and len(done) == 8
    assert len({d[0] for d in done}) == 8  # every trial ran once, in its own directory
    assert {d[2] for d in done} == {str(w.pid) for w in workers}  # both worked on the study
    assert not [t for t in _trials(url) if t.state == TrialState.RUNNING]


def test_a_killed_search_resumes_and_retries_its_running_trial_in_place(tmp_path):
    from optuna.trial import TrialState

    url, log = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "log"
    first = _worker(url, 4, 3.0, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or "0001" not in log.read_text()):
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)  # trial 1 was running
    first.wait()
    second = _worker(url, 4, 0.1, log)
    assert second.wait(timeout=120) == 0, second.stderr.read()[-2000:]
    trials = _trials(url)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    killed = next(t for t in trials if t.number == 1)
    assert killed.state == TrialState.FAIL
    retry = next(t for t in complete if t.system_attrs.get("failed_trial") == 1)
    assert retry.params == killed.params and retry.user_attrs["run_dir"] == "trials/0001"
    done_dirs = [ln.split()[0] for ln in log.read_text().splitlines() if ln.endswith("done")]
    assert sorted(done_dirs) == ["trials/0000", "trials/0001", *sorted(
        t.user_attrs["run_dir"] for t in complete if t.number > 1 and t is not retry)]


@pytest.mark.parametrize("args, message", [
    (["n_trials=0"], "n_trials=0 must be an integer >= 1"),
    (["objectives=[val_acc,latency]"], "objectives=[...,latency] needs granularity=channels"),
    (["objectives=[]"], "objectives=[]: name at least one"),
    (["params={lr:'normal(0,1)'}"], "params.lr='normal(0,1)'; allowed: float(lo,hi), log(lo,hi)"),
    (["budgets={macs:0}"], "budgets.macs=0 must be a number > 0"),
    (["budgets={params:10}"], "budgets.params: not a cost objective of this search; allowed: macs"),
    (["granularity=layers"], "granularity='layers'; allowed: unstructured, channels, none"),
    (["max_ratio=1.0"], "max_ratio=1.0 must be a number in (0, 1)"),
    (["final_seeds=[]"], "final_seeds=[] must be a non-empty list of integers"),
    (["run=null"], "run= is required"),
    (["sampler=cmaes"], "sampler='cmaes'; allowed: auto, tpe, nsga2, random"),
    (["population=1"], "population=1 must be an integer >= 2"),
    (["objectives=[macs]"], "objectives=['macs'] needs val_acc"),
    (["granularity=channels", "objectives=[val_acc,latency]", "hardware.runtime=tflite"],
     "hardware.runtime='tflite'; allowed: eager, executorch, onnxruntime"),
])
def test_settings_are_checked_with_one_line_each(compose, args, message):
    from prunelab.policy_search.engine import check

    cfg = compose("search", "run=some/run", *args)
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_latency_on_a_gpu_profile_without_a_gpu_is_refused(compose):
    from prunelab.policy_search.engine import check

    if torch.cuda.is_available():
        pytest.skip("a GPU is there")
    cfg = compose("search", "run=r", "granularity=channels", "objectives=[val_acc,latency]",
                  "hardware=gpu")
    with pytest.raises(ConfigError, match="hardware=gpu but no CUDA GPU is available here"):
        check(cfg)


@pytest.mark.parametrize("value", [
    "plain", "0.5", "true", "null", "a b", "C:\\dir", "x#y", "\u00e9", "${epochs_frac:0.75}", "it's",
    "end\\", 1e-4, -3, True, None, [1, "a", "${x}"], {"a": 1, "b": [1, 2]}, "/tmp/a=b,c",
    "1e-3", "-inf"])
def test_trial_overrides_read_back_as_the_values_hydra_was_given(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from prunelab.policy_search.trials import _value

    assert OverridesParser.create().parse_override(f"k={_value(value)}").value() == value


def test_a_trial_directory_is_reused_only_for_the_same_command_and_policy(tmp_path):
    from prunelab.policy_search.trials import TrialFailed, run_trial

    out = tmp_path / "0000"
    cmd = [sys.executable, "-c", f"import pathlib; p = pathlib.Path({str(out)!r}); "
           "p.mkdir(); (p / 'results.json').write_text('{\"best_val_acc\": 0.5}')", "a=1"]
    assert run_trial(cmd, out, tmp_path / "log", {"layers": {"w": 0.5}})["best_val_acc"] == 0.5
    assert run_trial(cmd, out, tmp_path / "log", {"layers": {"w": 0.5}})["best_val_acc"] == 0.5
    with pytest.raises(TrialFailed, match="holds a run of another command or policy"):
        run_trial(cmd, out, tmp_path / "log", {"layers": {"w": 0.6}})


def test_n_jobs_threads_fill_the_study_to_exactly_n_trials(tmp_path):
    from optuna.trial import TrialState

    from prunelab.policy_search.study import fill, make_sampler

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=None)
    study = open_study(storage, "s", ["maximize"], {"objectives": ["val_acc"]},
                       make_sampler("random", 1, 0, None))
    calls = []

    def objective(trial):
        calls.append(trial.number)
        time.sleep(0.05)
        return trial.suggest_float("ratio:a", 0.0, 0.9, step=0.05)

    fill(study, objective, 7, 3, None, 3)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 7 and len(calls) == 7
    assert TrialState.RUNNING not in states


def test_without_optuna_the_search_says_how_to_install_it(compose, monkeypatch):
    from prunelab.policy_search.engine import check

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(ConfigError, match=r"needs Optuna >= 4: pip install 'prunelab\[search\]'"):
        check(compose("search", "run=r"))
