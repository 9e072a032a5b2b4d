"""Sweep reports group seeds of the same configuration, and only those."""

import json

import pytest

from prunelab.report import collect, markdown, summarize, write_report
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


def test_seedless_hash_ignores_only_seeds():
    cfg = {"seed": 1, "data": {"seed": 1, "subset": None}, "pruner": {"seed": 1, "name": "m"},
           "regularizer": None}
    other_seed = {"seed": 2, "data": {"seed": 2, "subset": None}, "pruner": {"seed": 2, "name": "m"},
                  "regularizer": None}
    other_reg = dict(cfg, regularizer={"weight": 1e-5})
    assert config_hash(cfg, seedless=True) == config_hash(other_seed, seedless=True)
    assert config_hash(cfg) != config_hash(other_seed)
    assert config_hash(cfg, seedless=True) != config_hash(other_reg, seedless=True)


def test_report_cli_errors_on_empty_directory(tmp_path, capsys):
    from prunelab.report import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2
    assert "prunelab: error: no results.json under" in capsys.readouterr().err


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
    from prunelab.report import collect_failures

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
