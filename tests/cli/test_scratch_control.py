"""control=scratch (Liu et al. 2019): the pruned run's final architecture trained from a fresh
initialization beside it; a rerun skips both runs."""

import json

import pytest
import torch
from helpers import FAST, run_cli

from prunelab.runs import load_run


@pytest.mark.slow  # long (a minute on 2 cores): pytest -m slow
def test_scratch_control_trains_the_final_mask_from_fresh_weights_beside_the_run(tmp_path):
    run_dir = tmp_path / "run"
    args = [*FAST, "pruner=magnitude", "sparsity=0.8", "control=scratch",
            f"hydra.run.dir={run_dir}"]
    p = run_cli("prunelab.train", args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    sub = run_dir / "control_scratch"
    ctl = json.loads((sub / "results.json").read_text())
    c = res["control"]
    assert c["kind"] == "scratch" and c["architecture"] == "mask" and c["dir"] == "control_scratch"
    assert c["test_acc"] == ctl["test_acc"] and c["epochs"] == ctl["epochs"] == res["epochs"]
    assert ctl["pruner"] == "fixed_mask" and ctl["seed"] == c["init_seed"] != res["seed"]
    assert f"control=scratch (mask, {c['epochs']} epochs, fresh init)" in p.stdout
    # the same architecture: the control's weights are zero exactly where the pruned run's are
    pruned, control = load_run(run_dir), load_run(sub)
    assert set(pruned.masks) == set(control.masks)
    for name, m in pruned.masks.items():
        assert torch.equal(m, control.masks[name])
        w = dict(control.net.named_parameters())[name]
        assert (w[~m] == 0).all() and (w[m] != 0).any()
        assert not torch.equal(w, dict(pruned.net.named_parameters())[name])  # other weights
    # a rerun: both runs are finished, nothing is trained again
    before = (sub / "results.json").stat().st_mtime_ns
    p = run_cli("prunelab.train", args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "already has this run's results.json; skipped" in p.stdout
    assert (sub / "results.json").stat().st_mtime_ns == before
    # the sweep report shows the pruned run once, with the control's accuracy beside it
    from prunelab.analysis.sweep import collect, markdown, summarize
    rows = collect(tmp_path)
    assert [r["run_dir"] for r in rows] == [str(run_dir)]
    table = markdown(summarize(rows)).splitlines()
    assert "| scratch acc |" in table[0]
    assert f"| {100 * c['test_acc']:.2f} |" in table[2]
