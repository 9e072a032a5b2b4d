"""End to end: ``python -m prunelab.train`` as a subprocess, as a user runs it."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

FAST = ["debug=fast", "measure.runs=3", "measure.warmup=1", "trainer.enable_progress_bar=false"]


def run_train(args, cwd, timeout=300):
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "prunelab.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def magnitude_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    run_dir = tmp / "run"
    started = time.perf_counter()
    proc = run_train([*FAST, "pruner=magnitude", "sparsity=0.7", "eval.adversarial=fgsm",
                      "eval.epsilon=0.1", "eval.batches=1", f"hydra.run.dir={run_dir}"], tmp)
    proc.process_s = time.perf_counter() - started
    return proc, run_dir


def test_run_prints_summary(magnitude_run):
    proc, run_dir = magnitude_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "prunelab summary" in out
    assert "model=mlp data=mnist pruner=magnitude schedule=gradual seed=0" in out
    assert "0.7000 of weights (target 0.7000)" in out
    flat = out.replace("\n", "").replace("│", "").replace(" ", "")  # rich wraps long paths
    assert str(run_dir / "results.json").replace(" ", "") in flat


def test_results_json_counts_from_weights(magnitude_run):
    proc, run_dir = magnitude_run
    res = json.loads((run_dir / "results.json").read_text())
    assert res["pruner"] == "magnitude" and res["model"] == "mlp" and res["data"] == "mnist"
    assert res["sparsity"]["global"] == pytest.approx(0.7, abs=1e-5)
    for name, s in res["sparsity"]["per_layer"].items():
        assert s == pytest.approx(0.7, abs=1e-4), name
    assert res["test_acc"] > 0.5 and 0 < res["best_val_acc"] <= 1
    assert res["params"]["total"] == 266_610
    assert res["params"]["total"] - res["params"]["nonzero"] == res["sparsity"]["zeros"]
    assert res["macs"]["effective"] < 0.31 * res["macs"]["dense"]
    assert res["size_bytes"]["sparse_bytes"] < res["size_bytes"]["dense_bytes"]
    assert set(res["latency_ms"]) == {"batch_1", "batch_64"}
    assert all(v > 0 for v in res["latency_ms"].values())
    assert len(res["config_hash"]) == 16 and res["seed"] == 0
    assert res["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    # the run's own time: testing the best checkpoint does not add its clock a second time
    assert 0 < res["train_time_s"] <= res["wall_time_s"] < proc.process_s


@pytest.mark.slow
def test_grouped_batches_give_the_same_run(magnitude_run, tmp_path):
    """The default data.steps_per_batch=auto (Lightning sees groups of 8 batches here) and 1
    (one batch at a time) give the same run."""
    _, ref_dir = magnitude_run
    run_dir = tmp_path / "grouped"
    proc = run_train([*FAST, "pruner=magnitude", "sparsity=0.7", "data.steps_per_batch=1",
                      "measure.latency=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    ref = json.loads((ref_dir / "results.json").read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "sparsity"):
        assert res[key] == ref[key], key
    a = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(ref_dir / "checkpoints" / "last.ckpt", weights_only=False)
    loader = b["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader["steps_per_batch"] == 8  # auto grouped the reference
    assert "steps_per_batch" not in a["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert a["global_step"] == b["global_step"]
    for k, v in b["state_dict"].items():
        assert torch.equal(a["state_dict"][k], v), k


def test_checkpoints_hold_zeros(magnitude_run):
    proc, run_dir = magnitude_run
    res = json.loads((run_dir / "results.json").read_text())
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=False)
        sd = ckpt["state_dict"]
        zeros = sum(int((sd[f"net.{n}"] == 0).sum()) for n in res["sparsity"]["per_layer"])
        total = sum(sd[f"net.{n}"].numel() for n in res["sparsity"]["per_layer"])
        assert zeros == res["sparsity"]["zeros"] and total == res["sparsity"]["prunable"]
        cb = next(v for k, v in ckpt["callbacks"].items() if "PruningCallback" in k)
        for n, m in cb["masks"].items():
            assert (sd[f"net.{n}"][~m] == 0).all()
    assert (run_dir / "csv" / "metrics.csv").is_file()
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "prune/sparsity" in header and "val/acc" in header


@pytest.mark.slow
def test_resume_into_another_directory_is_refused(magnitude_run, tmp_path):
    """A run continues in its own directory (tests/cli/test_resume.py): resume= with another
    hydra.run.dir is one line, and neither directory gets a file."""
    proc, run_dir = magnitude_run
    new_dir = tmp_path / "resumed"
    before = sorted(p.name for p in run_dir.rglob("*"))
    p = run_train([*FAST, "pruner=magnitude", "sparsity=0.7", f"resume={run_dir}",
                   f"hydra.run.dir={new_dir}"], tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().splitlines() == [
        f"prunelab: error: resume='{run_dir}' continues that run in its own directory "
        f"{run_dir}, not in {new_dir}: leave hydra.run.dir out or set it to {run_dir}"]
    assert not new_dir.exists()
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_multirun_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_train(["-m", *FAST, "pruner=magnitude,random", "sparsity=0.5",
                   f"hydra.sweep.dir={sweep}"], tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    # sub-directories named from the overrides (debug/measure overrides included)
    dirs = sorted(d.name for d in sweep.iterdir() if d.is_dir())
    assert len(dirs) == 2
    assert any("pruner=magnitude" in d and "sparsity=0.5" in d for d in dirs)
    assert any("pruner=random" in d for d in dirs)
    results = {json.loads((sweep / d / "results.json").read_text())["pruner"]: d for d in dirs}
    assert set(results) == {"magnitude", "random"}
    # the sweep summary: one row per method
    summary = [ln for ln in (sweep / "report.md").read_text().splitlines() if ln.startswith("|")]
    assert len(summary) == 4 and summary[0].startswith("| data | model | pruner |")
    assert any("| magnitude |" in ln for ln in summary) and any("| random |" in ln for ln in summary)
    assert (sweep / "report.csv").is_file() and (sweep / "acc_vs_sparsity.png").is_file()


@pytest.mark.slow
def test_a_path_in_an_override_names_one_sweep_directory(magnitude_run, tmp_path):
    _, teacher = magnitude_run  # a finished run: a path with separators as an override value
    sweep = tmp_path / "sweep"
    p = run_train(["-m", *FAST, "epochs=2", "schedule=oneshot", "pruner=magnitude", "sparsity=0.5",
                   f"distill.teacher={teacher}", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    dirs = [d for d in sweep.iterdir() if d.is_dir()]
    assert len(dirs) == 1 and (dirs[0] / "results.json").is_file()  # not nested per path part
    assert f"distill.teacher={str(teacher).replace('/', '_')}," in dirs[0].name


@pytest.mark.slow  # -m slow (README): the default suite stays under 10 minutes
def test_compare_methods_experiment_is_one_multirun(tmp_path):
    sweep = tmp_path / "cmp"
    p = run_train(["-m", "experiment=compare_methods", *FAST, "measure.latency=false",
                   "pruner=taylor,snip", "sparsity=0.8",  # the command line narrows the sweep
                   f"hydra.sweep.dir={sweep}"], tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [ln for ln in (sweep / "report.md").read_text().splitlines()[2:] if ln.startswith("|")]
    assert sorted(ln.split("|")[3].strip() for ln in rows) == ["snip", "taylor"]
    for d in sweep.iterdir():
        if d.is_dir():
            res = json.loads((d / "results.json").read_text())
            assert res["sparsity"]["global"] == pytest.approx(0.8, abs=1e-4)


def test_unstructured_50_to_70_percent_on_cpu_warns_it_will_not_be_faster(magnitude_run):
    proc, run_dir = magnitude_run
    res = json.loads((run_dir / "results.json").read_text())
    assert res["hardware"] == "cpu"
    assert len(res["warnings"]) == 1 and "will not run faster on hardware=cpu" in res["warnings"][0]
    assert "prunelab: warning: unstructured sparsity=0.7 will not run faster" in proc.stderr


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_is_reported(tmp_path):
    sweep = tmp_path / "sw"
    p = run_train(["-m", *FAST, "measure.latency=false", "pruner=magnitude",
                   "sparsity=0.5,1.5", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=400)
    assert p.returncode == 1
    assert "prunelab: error: 1 job(s) of the sweep failed" in p.stderr
    ok = [d for d in sweep.iterdir() if (d / "results.json").is_file()]
    assert len(ok) == 1 and "sparsity=0.5" in ok[0].name
    bad = next(d for d in sweep.iterdir() if "sparsity=1.5" in d.name)
    err = json.loads((bad / "error.json").read_text())
    assert err["error"] == "sparsity=1.5 is outside the allowed range [0, 1)"
    md = (sweep / "report.md").read_text()
    assert "**1 job(s) without results:**" in md and "sparsity=1.5 is outside" in md


@pytest.mark.slow  # long (a minute on 2 cores): pytest -m slow
def test_a_killed_job_does_not_stop_the_sweep_and_is_reported(tmp_path):
    """One job's process is SIGKILLed (as by the OOM killer) under the joblib launcher: the other
    job finishes, the killed one has an error.json and the report lists it."""
    sweep = tmp_path / "killed"
    env_path = os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=env_path)
    p = subprocess.run([sys.executable, "-m", "prunelab.train", "-m", *FAST,
                        "measure.latency=false", "model._target_=killer_model.make",
                        "+model.kill=false,true", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "prunelab: error: 1 job(s) of the sweep failed" in p.stderr
    ok = [d for d in sweep.iterdir() if (d / "results.json").is_file()]
    assert len(ok) == 1 and "kill=false" in ok[0].name.lower()
    bad = next(d for d in sweep.iterdir() if "kill=true" in d.name.lower())
    err = json.loads((bad / "error.json").read_text())
    assert err["error"] == "RuntimeError: the job's process was killed by SIGKILL (out of memory?)"
    md = (sweep / "report.md").read_text()
    assert "**1 job(s) without results:**" in md and "killed by SIGKILL" in md


@pytest.mark.slow  # -m slow (README): the default suite stays under 10 minutes
def test_joblib_launcher_splits_the_cores_between_jobs(tmp_path):
    sweep = tmp_path / "jl"
    p = run_train(["-m", *FAST, "measure.latency=false", "pruner=magnitude,random",
                   "sparsity=0.5", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   f"hydra.sweep.dir={sweep}"], tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(f.read_text()) for f in sweep.glob("*/results.json")]
    cpus = os.cpu_count() or 1
    assert len(results) == 2 and all(r["threads"] == max(1, cpus // min(2, cpus)) for r in results)
    assert (sweep / "report.md").is_file()


@pytest.mark.slow
def test_sweep_without_an_objective_fails_each_job_clearly(tmp_path):
    sweep = tmp_path / "noobj"
    p = run_train(["-m", *FAST, "objective=null", "pruner=magnitude", "sparsity=0.5",
                   f"hydra.sweep.dir={sweep}"], tmp_path, timeout=200)
    assert p.returncode == 1
    assert "objective=None: a sweep needs a metric to optimize; allowed: best_val_acc, test_acc" \
        in p.stderr
    assert not list(sweep.glob("*/results.json"))


@pytest.mark.slow  # a launcher plugin end to end: `python -m pytest -m slow`
def test_submitit_local_runs_the_sweep_as_slurm_would(tmp_path):
    sweep = tmp_path / "sl"
    p = run_train(["-m", *FAST, "measure.latency=false", "pruner=magnitude", "sparsity=0.5,0.7",
                   "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                   f"hydra.sweep.dir={sweep}"], tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    sparsities = sorted(json.loads(f.read_text())["target_sparsity"]
                        for f in sweep.glob("*/results.json"))
    assert sparsities == [0.5, 0.7]
    assert list(sweep.glob(".submitit/*"))  # submitit's job folders: the jobs ran through it


def test_accuracy_under_attack_is_measured_and_reported(magnitude_run):
    proc, run_dir = magnitude_run
    adv = json.loads((run_dir / "results.json").read_text())["adversarial"]
    assert adv["attack"] == "fgsm" and adv["epsilon"] == 0.1 and adv["samples"] > 0
    assert 0 <= adv["acc"] < adv["clean_acc"]
    assert "under attack" in proc.stdout


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    """Two gloo ranks with batch 32 each see, batch by batch, the 64 samples one process sees
    with batch 64 (the loader shards every epoch's permutation by rank), so the maths says the
    runs match up to float summation order."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    common = [*FAST, "measure.latency=false", "pruner=magnitude", "sparsity=0.7"]
    procs = {
        "ddp": subprocess.Popen([sys.executable, "-m", "prunelab.train", *common, "trainer=ddp",
                                 "data.batch_size=32", f"hydra.run.dir={tmp_path / 'ddp'}"],
                                cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "one": subprocess.Popen([sys.executable, "-m", "prunelab.train", *common,
                                 "data.batch_size=64", f"hydra.run.dir={tmp_path / 'one'}"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True),
    }
    for name, p in procs.items():
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, (name, err[-3000:])
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    # masks gathered from both ranks after every pruning event, and equal
    assert ddp["ddp"]["world_size"] == 2 and ddp["ddp"]["masks_equal"] is True
    assert ddp["ddp"]["events_checked"] >= 1
    assert ddp["test_acc"] == pytest.approx(one["test_acc"], abs=2e-3)
    assert ddp["test_loss"] == pytest.approx(one["test_loss"], abs=1e-3)
    a = torch.load(tmp_path / "ddp" / "model_dense.pt")
    b = torch.load(tmp_path / "one" / "model_dense.pt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert all(torch.equal(a[k] == 0, b[k] == 0) for k in a if k.endswith("weight"))
    # one results.json, one checkpoint set: written by rank 0 only
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["best.ckpt",
                                                                                  "last.ckpt"]


@pytest.mark.slow  # a launcher plugin end to end: `python -m pytest -m slow`
def test_ddp_inside_a_sweep_starts_the_job_not_the_sweep_on_every_rank(tmp_path):
    """Lightning starts rank 1 by re-running the command line: from a sweep job that must be the
    job's own command and directory, not the whole multirun again."""
    sweep = tmp_path / "sw"
    p = run_train(["-m", *FAST, "measure.latency=false", "trainer=ddp", "data.batch_size=32",
                   "seed=0", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = [d for d in sweep.iterdir() if d.is_dir()]
    assert len(jobs) == 1
    res = json.loads((jobs[0] / "results.json").read_text())
    assert res["ddp"]["world_size"] == 2 and res["ddp"]["masks_equal"] is True
    assert sorted(x.name for x in tmp_path.iterdir()) == ["sw"]  # no stray run directory
    # rank 1 was started as this job, not as another multirun launching the sweep again
    assert (p.stdout + p.stderr).count("Launching 1 jobs locally") == 1


@pytest.mark.slow  # long (a minute on 2 cores): pytest -m slow
def test_rerunning_a_sweep_skips_finished_jobs_and_retries_the_rest(tmp_path):
    sweep = tmp_path / "sw"
    args = ["-m", *FAST, "measure.latency=false", "pruner=magnitude", "sparsity=0.5,0.6",
            f"hydra.sweep.dir={sweep}"]
    p = run_train(args, tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    done = next(d for d in sweep.iterdir() if "sparsity=0.5" in d.name)
    other = next(d for d in sweep.iterdir() if "sparsity=0.6" in d.name)
    before = (done / "results.json").stat().st_mtime_ns
    tree = {p: p.read_bytes() for p in [*done.rglob("*"), sweep / "multirun.yaml"] if p.is_file()}
    (other / "results.json").unlink()  # as if that job had been killed after its last epoch
    p = run_train(args, tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"prunelab: {done} already has this run's results.json; skipped" in p.stdout
    assert f"prunelab: resuming {other} from last.ckpt" in p.stdout  # not trained again
    assert (done / "results.json").stat().st_mtime_ns == before
    # the finished job's files (.hydra/ and the log too) and the sweep's config: as they were
    assert {p: p.read_bytes() for p in tree} == tree
    assert sorted(p for p in done.rglob("*") if p.is_file()) == sorted(
        p for p in tree if p.parent != sweep)
    assert (other / "results.json").is_file()


def test_a_rerun_in_a_killed_runs_directory_with_a_corrupt_checkpoint_is_one_line(tmp_path):
    """#14: a killed job's unreadable last.ckpt (prunelab writes them atomically; a copy cut short
    or a foreign file) is refused in one line naming it; nothing is written or removed."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        (run_dir / "checkpoints" / name).write_bytes(b"stale")
    proc = run_train([*FAST, "measure.latency=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"prunelab: error: {run_dir}/checkpoints/last.ckpt cannot be resumed from: "), lines
    assert "delete it to start the run over" in lines[0]
    assert sorted(p.name for p in run_dir.rglob("*")) == ["best.ckpt", "checkpoints", "last.ckpt"]
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"stale"
