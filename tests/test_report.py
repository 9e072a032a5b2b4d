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
    assert (tmp_path / "summary.csv").read_text().count("\n") == 4


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
