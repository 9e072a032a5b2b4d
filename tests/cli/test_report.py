"""Sweep reports group seeds of the same configuration, and only those; the report command."""

import json
import os
import subprocess
import sys

import pytest

from prunelab.analysis.sweep import collect, collect_failures, markdown, summarize, write_report
from prunelab.formatting import count, fixed, markdown_table, nbytes, percent
from prunelab.report import dir_argument
from prunelab.results import config_hash


def fake(run_dir, pruner, acc, seed, group="g1"):
    run_dir.mkdir(parents=True)
    res = {"data": "mnist", "model": "mlp", "pruner": pruner, "granularity": "unstructured",
           "scope": "layer", "schedule": "gradual", "target_sparsity": 0.9, "seed": seed,
           "test_acc": acc, "sparsity": {"global": 0.9}, "channel_sparsity": {"global": 0.0},
           "macs": {"dense": 100, "effective": 10}, "wall_time_s": 1.0, "group_hash": group}
    (run_dir / "results.json").write_text(json.dumps(res))


def test_summary_means_over_seeds_and_keeps_different_configs_apart(tmp_path):
    fake(tmp_path / "a0", "magnitude", 0.98, 0)
    fake(tmp_path / "a1", "magnitude", 0.96, 1)
    fake(tmp_path / "b0", "random", 0.90, 0)
    fake(tmp_path / "c0", "magnitude", 0.50, 0, group="g2")  # e.g. another regularizer
    rows = summarize(collect(tmp_path))
    assert len(rows) == 3
    mag = next(r for r in rows if r["pruner"] == "magnitude" and r["group_hash"] == "g1")
    assert mag["seeds"] == 2 and mag["test_acc_mean"] == pytest.approx(0.97)
    assert mag["test_acc_std"] == pytest.approx(0.0141421, rel=1e-4)
    md = markdown(rows)
    assert "| mnist | mlp | magnitude | 0.9000 | 0.9000 |" in md
    write_report(tmp_path, quiet=True)
    assert (tmp_path / "report.csv").read_text().count("\n") == 4


def test_a_run_repeated_in_two_directories_is_one_seed_and_is_named(tmp_path):
    # c: a's config and seed run again (logger aside); d: a's config hash, but a setting that
    # config_hash leaves out differs (the scratch control's budget): not a repeat
    for name, seed, acc, budget in (("a", 0, 0.90, "epochs"), ("b", 1, 0.91, "epochs"),
                                    ("c", 0, 0.95, "epochs"), ("d", 0, 0.93, "compute")):
        fake(tmp_path / name, "magnitude", acc, seed)
        (tmp_path / name / ".hydra").mkdir()
        (tmp_path / name / ".hydra" / "config.yaml").write_text(
            f"seed: {seed}\ncontrol_budget: {budget}\nlogger: {{name: {name}}}\n")
    (row,) = write_report(tmp_path, quiet=True)
    assert row["seeds"] == 3 and row["test_acc_mean"] == pytest.approx((0.90 + 0.91 + 0.93) / 3)
    md = (tmp_path / "report.md").read_text()
    assert "**1 run(s) repeat a configuration and seed already counted**" in md
    assert "- `c` repeats `a`" in md and "`d` repeats" not in md


def test_seedless_hash_ignores_only_seeds():
    cfg = {"seed": 1, "data": {"seed": 1, "subset": None}, "pruner": {"seed": 1, "name": "m"},
           "regularizer": None}
    other_seed = {"seed": 2, "data": {"seed": 2, "subset": None}, "pruner": {"seed": 2, "name": "m"},
                  "regularizer": None}
    other_reg = dict(cfg, regularizer={"weight": 1e-5})
    assert config_hash(cfg, seedless=True) == config_hash(other_seed, seedless=True)
    assert config_hash(cfg) != config_hash(other_seed)
    assert config_hash(cfg, seedless=True) != config_hash(other_reg, seedless=True)


def report(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "prunelab.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def listing(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("args, message", [
    (["{empty}"], "prunelab: error: no results.json under {empty}"),
    (["dir={empty}"], "prunelab: error: no results.json under {empty}"),
    (["{tmp}/nope"], "prunelab: error: '{tmp}/nope' is not a directory"),
    ([], "prunelab: error: no directory given: python -m prunelab.report <dir>"),
    (["{empty}", "colour=red"], "prunelab: error: colour: no such option"),
])
def test_report_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    fill = {"empty": str(empty), "tmp": str(tmp_path)}
    p = report([a.format(**fill) for a in args], tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message.format(**fill)), p.stderr
    assert listing(tmp_path) == ["empty"]  # no outputs/, .hydra/ or log anywhere


def test_report_cli_positional_and_dir_forms_write_only_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):  # sweep job directories hold '=' and ',' in their names
        fake(sweep / f"pruner=magnitude,seed={seed}", "magnitude", 0.9 + seed / 100, seed)
    runs = listing(sweep)
    p = report([str(sweep)], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| mnist | mlp | magnitude | 0.9000 | 0.9000 | 0.0000 | 90.50 | 0.71 | 2 |" in p.stdout
    written = sorted(set(listing(sweep)) - set(runs))
    assert written == ["acc_vs_macs.png", "acc_vs_sparsity.png", "plots.json", "report.csv",
                       "report.md"]
    assert listing(tmp_path) == sorted(["sweep", *(f"sweep/{f}" for f in listing(sweep))])
    first = (sweep / "report.md").read_text()
    (sweep / "report.md").unlink()
    job = sweep / "pruner=magnitude,seed=0"  # a lone directory whose name holds '=' and ','
    p = report([f"dir={sweep}"], job)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (sweep / "report.md").read_text() == first
    p = report([str(job)], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (job / "report.md").is_file() and "| 1 |" in (job / "report.md").read_text()


def test_dir_argument_rewrites_only_a_positional_directory(tmp_path):
    job = tmp_path / "a=1,b='x'"
    job.mkdir()
    assert dir_argument(["runs/x"]) == ["dir='runs/x'"]
    assert dir_argument([str(job)]) == [f"dir='{tmp_path}/a=1,b=\\'x\\''"]
    assert dir_argument(["dir=runs/x", "--help", "hydra.verbose=true"]) == [
        "dir=runs/x", "--help", "hydra.verbose=true"]
    assert dir_argument(["runs/x", "--cfg", "job", "--info", "config"]) == [
        "dir='runs/x'", "--cfg", "job", "--info", "config"]


def test_report_help_shows_the_examples_and_no_internal_groups(tmp_path):
    p = report(["--help"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "python -m prunelab.report outputs/multirun/<stamp>" in p.stdout
    assert "python -m prunelab.report dir=outputs/lottery" in p.stdout
    assert "schema/" not in p.stdout and "== Config ==" not in p.stdout
    assert listing(tmp_path) == []


def test_formatters():
    assert [count(n) for n in (999, 1234, 2.5e6, 3e9)] == ["999", "1.23K", "2.50M", "3.00G"]
    assert [nbytes(n) for n in (10, 2048, 3.5e6)] == ["10 B", "2.05 KB", "3.50 MB"]
    assert percent(0.98765) == "98.77" and fixed(4, floats_only=True)(0) == "0"
    md = markdown_table([{"a": 0.5, "b": None}], [("a", "A", fixed(2)), ("b", "B", None)],
                        missing="n/a")
    assert md == "| A | B |\n|---|---|\n| 0.50 | n/a |\n"


def full(run_dir, data, pruner, sparsity, acc, seed, layers=("fc1.weight", "fc2.weight")):
    run_dir.mkdir(parents=True)
    res = {"data": data, "model": "mlp", "pruner": pruner, "granularity": "unstructured",
           "scope": "layer", "schedule": "gradual", "target_sparsity": sparsity, "seed": seed,
           "test_acc": acc, "group_hash": f"{data}-{pruner}-{sparsity}",
           "sparsity": {"global": sparsity, "per_layer": {n: sparsity for n in layers}},
           "channel_sparsity": {"global": 0.0}, "params": {"total": 100, "nonzero": 100 * (1 - sparsity)},
           "macs": {"dense": 100, "effective": 100 * (1 - sparsity) + 1},
           "size_bytes": {"dense_bytes": 400, "sparse_bytes": 400 * (1 - sparsity) + 8},
           "latency_ms": {"batch_1": 0.1, "batch_64": 1.0}, "wall_time_s": 1.0}
    (run_dir / "results.json").write_text(json.dumps(res))


def test_plots_are_images_with_one_series_per_method_and_datasets_apart(tmp_path):
    from PIL import Image

    for seed in (0, 1):
        full(tmp_path / f"d{seed}", "mnist", "none", 0.0, 0.98 + seed / 1000, seed)
        for s, acc in ((0.5, 0.975), (0.9, 0.96)):
            full(tmp_path / f"m{s}{seed}", "mnist", "magnitude", s, acc, seed)
            full(tmp_path / f"r{s}{seed}", "mnist", "random", s, acc - 0.05, seed)
    full(tmp_path / "f", "fashion_mnist", "magnitude", 0.5, 0.85, 0)
    write_report(tmp_path, quiet=True)
    series = json.loads((tmp_path / "plots.json").read_text())
    for name in ("acc_vs_sparsity.png", "acc_vs_macs.png", "acc_vs_latency.png",
                 "layer_sparsity.png"):
        with Image.open(tmp_path / name) as im:
            im.verify()
            assert im.format == "PNG"
    assert series["acc_vs_sparsity.png"] == {"fashion_mnist/mlp": ["magnitude"],
                                             "mnist/mlp": ["dense", "magnitude", "random"]}
    assert series["layer_sparsity.png"]["mnist/mlp"] == ["magnitude @0.5", "magnitude @0.9",
                                                         "random @0.5", "random @0.9"]
    md = (tmp_path / "report.md").read_text()
    assert "| fashion_mnist | mlp | magnitude |" in md and "![acc_vs_sparsity]" in md
    rows = {(r["data"], r["pruner"], r["target_sparsity"]): r for r in summarize(collect(tmp_path))}
    assert rows[("mnist", "magnitude", 0.9)]["seeds"] == 2  # datasets never mix
    assert rows[("fashion_mnist", "magnitude", 0.5)]["seeds"] == 1


def test_failed_and_unfinished_jobs_are_listed(tmp_path):
    full(tmp_path / "ok", "mnist", "magnitude", 0.5, 0.97, 0)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "error.json").write_text(json.dumps({"error": "loss is nan"}))
    (tmp_path / "killed" / ".hydra").mkdir(parents=True)
    failures = {f["run_dir"]: f["error"] for f in collect_failures(tmp_path)}
    assert failures == {"bad": "loss is nan",
                        "killed": "unfinished: no results.json (killed or still running)"}
    write_report(tmp_path, quiet=True)
    md = (tmp_path / "report.md").read_text()
    assert "**2 job(s) without results:**" in md and "- `bad`: loss is nan" in md


def test_bad_results_json_is_a_failure_with_its_reason(tmp_path):
    """A corrupt or incomplete results.json (a copy cut short, an old or foreign file) is
    listed as failed with the reason, not silently dropped nor a crash; the good run is in the
    table."""
    full(tmp_path / "ok", "mnist", "magnitude", 0.5, 0.97, 0)
    for name, text in (("cut", '{"test_acc": 0.9, "spar'), ("keys", '{"test_acc": 0.9}'),
                       ("list", "[1, 2]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    failures = {f["run_dir"]: f["error"] for f in collect_failures(tmp_path)}
    assert set(failures) == {"cut", "keys", "list"}
    assert failures["cut"].startswith("bad results.json: not valid JSON (JSONDecodeError")
    assert failures["keys"] == "bad results.json: no sparsity, wall_time_s, sparsity.global"
    assert failures["list"] == "bad results.json: a JSON list, not an object"
    rows = write_report(tmp_path, quiet=True)
    assert [r["seeds"] for r in rows] == [1]
    md = (tmp_path / "report.md").read_text()
    assert "**3 job(s) without results:**" in md and "- `keys`: bad results.json: no" in md
