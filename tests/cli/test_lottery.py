"""Lottery tickets: masks, rewinding, fresh optimizers, controls, resume after kill -9, bad input."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import compose_config

from prunelab.cli import experiments, known_options
from prunelab.errors import ConfigError
from prunelab.pruning.methods.imp import imp_masks, layer_fractions, random_masks
from prunelab.tickets import LotteryRun, load, read_levels
from prunelab.tickets.settings import group_hash

#: a tiny synthetic problem: a level trains in well under a second
TINY = ["data=synthetic", "data.input_shape=[1,8,8]", "data.num_samples=640", "data.val_size=128",
        "data.num_test_samples=128", "data.batch_size=64", "model=mlp", "model.hidden=[32,16]",
        "epochs=2", "logger=none", "trainer.enable_progress_bar=false"]
P = 0.2


def compose_lottery(*overrides):
    return compose_config("lottery", *overrides)


# -- mask maths --------------------------------------------------------------------------------------
def test_imp_density_is_exact_per_tensor_and_masks_only_shrink():
    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(300, 784, generator=gen), "b": torch.randn(100, 300, generator=gen),
               "out": torch.randn(10, 100, generator=gen)}
    own = {"out": 0.1}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    for level in range(1, 13):
        new = imp_masks({n: w * masks[n] for n, w in weights.items()}, masks, level, P, own, "layer")
        for n, m in new.items():
            assert not bool((m & ~masks[n]).any()), "a mask grew"
            expected = (1 - own.get(n, P)) ** level * m.numel()
            assert abs(int(m.sum()) - expected) <= 1, (n, level)
        masks = new
    # the pruned weights are the smallest ones of the remaining weights
    w = weights["a"]
    assert w[~masks["a"]].abs().max() <= w[masks["a"]].abs().min()


def test_imp_global_scope_keeps_the_output_layer_on_its_own_rate():
    gen = torch.Generator().manual_seed(1)
    weights = {"a": torch.randn(50, 40, generator=gen) * 3, "b": torch.randn(30, 50, generator=gen),
               "out": torch.randn(10, 30, generator=gen)}
    old = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    new = imp_masks(weights, old, 2, 0.5, {"out": 0.1}, "global")
    shared = new["a"].numel() + new["b"].numel()
    assert int(new["a"].sum() + new["b"].sum()) == round(0.25 * shared)
    assert int(new["out"].sum()) == round(0.81 * 300)
    # one threshold across a and b: a (larger weights) keeps more
    assert new["a"].float().mean() > new["b"].float().mean()


def test_layer_fractions_globs_then_output_then_default():
    names = ["features.0.weight", "classifier.0.weight", "classifier.4.weight"]
    assert layer_fractions(names, "classifier.4", {"features.*": 0.1}, 0.05) == {
        "features.0.weight": 0.1, "classifier.4.weight": 0.05}


def test_random_masks_keep_counts_and_nest():
    gen = torch.Generator().manual_seed(2)
    like = {"a": torch.rand(20, 30, generator=gen) > 0.6}
    old = {"a": torch.rand(20, 30, generator=gen) > 0.2}
    new = random_masks(like, old, torch.Generator().manual_seed(3))
    assert int(new["a"].sum()) == int(like["a"].sum())
    assert not bool((new["a"] & ~old["a"]).any())


# -- a run, looked at from inside ---------------------------------------------------------------------
class Probe(pl.Callback):
    """Records, at the start of every level's training, the weights forward uses, a forward
    output and the optimizer's state; at level 0 also the weights at iteration ``step``."""

    def __init__(self, step=None):
        self.starts, self.step, self.at_step = [], step, None

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        net = pl_module.net
        x = torch.randn(4, *next(iter(trainer.datamodule.train_dataloader()))[0].shape[1:],
                        generator=torch.Generator().manual_seed(0))
        self.starts.append({
            "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "out": net(x).detach(), "x": x,
            "opt_state": len(opt.state), "lr": opt.param_groups[0]["lr"],
        })

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.step is not None and trainer.global_step == self.step and self.at_step is None:
            self.at_step = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}


@pytest.fixture(scope="module")
def ticket_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lottery") / "ticket"
    # the probe looks at Lightning batches, one optimizer step each (not data.steps_per_batch's
    # default, auto: groups of 8 here)
    cfg = compose_lottery(*TINY, "lottery.levels=3", f"lottery.prune_fraction={P}",
                          "lottery.output_fraction=0.1", "lottery.rewind_step=7",
                          "data.steps_per_batch=1")
    probe = Probe(step=7)
    rows = LotteryRun(cfg, run_dir, callbacks=[probe], log=lambda s: None).run()
    return cfg, run_dir, probe, rows


def test_each_level_starts_from_rewind_weights_times_mask(ticket_run):
    cfg, run_dir, probe, rows = ticket_run
    assert [r["level"] for r in rows] == [0, 1, 2, 3]
    rewind = load(run_dir / "rewind.pt")
    # the rewind weights are the weights at iteration 7 of level 0, not θ0
    assert probe.at_step is not None
    for k, v in rewind.items():
        assert torch.equal(v, probe.at_step[k]), k
    assert not torch.equal(rewind["features.0.weight"], load(run_dir / "init.pt")["features.0.weight"])
    assert len(probe.starts) == 4
    for level in range(1, 4):
        mask = load(run_dir / f"level_{level:02d}" / "mask.pt")
        seen = probe.starts[level]
        for k, v in rewind.items():
            expected = v * mask[k] if k in mask else v
            assert torch.equal(seen["state"][k], expected), (level, k)
        # and forward computes with exactly those weights
        net = torch.func.functional_call
        from prunelab.models import build_model

        model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[32, 16])
        expected_state = {k: (v * mask[k] if k in mask else v) for k, v in rewind.items()}
        assert torch.allclose(seen["out"], net(model, expected_state, (seen["x"],)), atol=0)


def test_optimizer_and_lr_are_fresh_at_every_level(ticket_run):
    cfg, _, probe, _ = ticket_run
    for seen in probe.starts:
        assert seen["opt_state"] == 0
        assert seen["lr"] == pytest.approx(cfg.optimizer.lr)


def test_density_after_level_l_and_nested_masks(ticket_run):
    _, run_dir, _, rows = ticket_run
    prev = None
    for level in range(4):
        mask = load(run_dir / f"level_{level:02d}" / "mask.pt")
        end = load(run_dir / f"level_{level:02d}" / "end.pt")
        for name, m in mask.items():
            rate = 0.1 if name.startswith("classifier") else P
            expected = (1 - rate) ** level * m.numel()
            nonzero = int((end[name] != 0).sum())  # counted from the trained weights
            assert abs(nonzero - expected) <= 1, (level, name, nonzero, expected)
            if prev is not None:
                assert not bool((m & ~prev[name]).any())
        prev = mask
    assert rows[3]["density"] == pytest.approx(
        sum(int(m.sum()) for m in prev.values()) / sum(m.numel() for m in prev.values()))
    assert rows[3]["sparsity_end_weights"] == pytest.approx(1 - rows[3]["density"], abs=1e-3)
    for r in rows:
        assert r["best_val_iteration"] is not None and 0 < r["best_val_iteration"] <= r["iterations"]
        assert 0 < r["test_acc"] <= 1
        assert r["warnings"] == []  # the module's training warnings (none: the loss never blew up)


def test_summary_table_and_plot_after_every_level(ticket_run):
    _, run_dir, _, _ = ticket_run
    md = (run_dir / "summary.md").read_text()
    assert md.count("| mlp | none |") == 4
    png = (run_dir / "lottery.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_controls_use_the_ticket_masks(ticket_run, tmp_path):
    cfg, ticket_dir, _, rows = ticket_run
    base = [*TINY, "lottery.levels=3", f"lottery.prune_fraction={P}", "lottery.output_fraction=0.1",
            "lottery.rewind_step=7", f"lottery.masks_from={ticket_dir}"]
    reinit = LotteryRun(compose_lottery(*base, "lottery.control=random_reinit"), tmp_path / "rr",
                        log=lambda s: None)
    rr_rows = reinit.run()
    rand = LotteryRun(compose_lottery(*base, "lottery.control=random_mask"), tmp_path / "rm",
                      log=lambda s: None)
    rand.run()
    assert not (tmp_path / "rr" / "ticket").exists()  # masks came from the finished ticket run
    rewind = load(ticket_dir / "rewind.pt")
    assert rr_rows[0]["test_acc"] == rows[0]["test_acc"]  # level 0 is the dense run, shared
    prev = None
    for level in range(1, 4):
        ticket_mask = load(ticket_dir / f"level_{level:02d}" / "mask.pt")
        rr_mask = load(tmp_path / "rr" / f"level_{level:02d}" / "mask.pt")
        rr_start = load(tmp_path / "rr" / f"level_{level:02d}" / "start.pt")
        rm_mask = load(tmp_path / "rm" / f"level_{level:02d}" / "mask.pt")
        rm_start = load(tmp_path / "rm" / f"level_{level:02d}" / "start.pt")
        for n, m in ticket_mask.items():
            assert torch.equal(rr_mask[n], m)
            assert torch.equal(rr_start[n] != 0, m)  # same mask, new values
            assert not torch.equal(rr_start[n], rewind[n] * m)
            assert int(rm_mask[n].sum()) == int(m.sum())  # same per-layer sparsity ...
            assert torch.equal(rm_start[n], rewind[n] * rm_mask[n])  # ... from the rewind weights
            if prev is not None:
                assert not bool((rm_mask[n] & ~prev[n]).any())
        assert any(not torch.equal(rm_mask[n], ticket_mask[n]) for n in ticket_mask)
        prev = rm_mask


def test_control_without_masks_from_trains_its_own_ticket(ticket_run, tmp_path):
    _, ticket_dir, _, _ = ticket_run
    cfg = compose_lottery(*TINY, "lottery.levels=2", f"lottery.prune_fraction={P}",
                          "lottery.output_fraction=0.1", "lottery.rewind_step=7",
                          "lottery.control=random_reinit")
    LotteryRun(cfg, tmp_path / "rr", log=lambda s: None).run()
    own = tmp_path / "rr" / "ticket"
    assert json.loads((own / "lottery.json").read_text())["internal"] is True
    assert [r["level"] for r in read_levels(own)] == [0, 1]  # level 2's mask needs level 1 only
    # deterministic on CPU: the same masks as the separate ticket run of the same seed
    pairs = [(own / "level_01" / "mask.pt", ticket_dir / "level_01" / "mask.pt"),
             (tmp_path / "rr" / "level_02" / "mask.pt", ticket_dir / "level_02" / "mask.pt")]
    for a, b in pairs:
        ma, mb = load(a), load(b)
        assert all(torch.equal(ma[n], mb[n]) for n in mb)


def test_lottery_report_combines_seeds(tmp_path):
    from prunelab.analysis.sweep import write_report

    for seed in (0, 1):
        cfg = compose_lottery(*TINY, "lottery.levels=1", f"seed={seed}")
        LotteryRun(cfg, tmp_path / f"seed={seed}", log=lambda s: None).run()
    # the same run again in another directory (one seed, not a third): counted once, and named
    shutil.copytree(tmp_path / "seed=0", tmp_path / "zagain,seed=0")
    curves = write_report(tmp_path, quiet=True)
    assert [(c["control"], c["level"], c["seeds"]) for c in curves] == [("none", 0, 2),
                                                                        ("none", 1, 2)]
    accs = [r["test_acc"] for s in (0, 1) for r in read_levels(tmp_path / f"seed={s}")
            if r["level"] == 1]
    assert curves[1]["test_acc_mean"] == pytest.approx(sum(accs) / 2)
    assert "- `zagain,seed=0` repeats `seed=0`" in (tmp_path / "lottery_report.md").read_text()
    assert (tmp_path / "lottery_report.csv").is_file()
    assert (tmp_path / "lottery.png").read_bytes()[:4] == b"\x89PNG"


# -- configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", ["lth_lenet300", "lth_conv2"])
def test_paper_experiments_compose(experiment):
    cfg = compose_lottery(f"experiment={experiment}")
    assert cfg.data.batch_size == 60 and cfg.lottery.output_fraction == 0.1
    assert cfg.optimizer.lr == {"lth_lenet300": 1.2e-3, "lth_conv2": 2e-4}[experiment]


def test_lth_conv2_runs_on_synthetic_cifar_shapes(tmp_path):
    cfg = compose_lottery("experiment=lth_conv2", "data=synthetic", "data.num_samples=256",
                          "data.val_size=64", "data.num_test_samples=64", "data.batch_size=60",
                          "epochs=1", "lottery.levels=1", "logger=none",
                          "trainer.enable_progress_bar=false", "hardware.memory_format=channels_last")
    run = LotteryRun(cfg, tmp_path, log=lambda s: None)
    rows = run.run()
    first = run._new_net().features[0].weight  # every level's network trains in NHWC
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    mask = load(tmp_path / "level_01" / "mask.pt")
    conv = mask["features.0.weight"]
    assert abs(int(conv.sum()) - 0.9 * conv.numel()) <= 1  # conv layers: 10% per level
    assert abs(int(mask["classifier.0.weight"].sum()) - 0.8 * mask["classifier.0.weight"].numel()) <= 1
    assert (rows[1]["model"], rows[1]["data"]) == ("conv2", "synthetic")  # outside Hydra too


def test_a_finished_run_with_another_config_is_refused(ticket_run):
    cfg, run_dir, _, _ = ticket_run
    other = compose_lottery(*TINY, "lottery.levels=3", "lottery.prune_fraction=0.3",
                            "lottery.output_fraction=0.1", "lottery.rewind_step=7")
    with pytest.raises(ConfigError, match=r"lottery.prune_fraction \(0.2 vs 0.3\)"):
        LotteryRun(other, run_dir).run()


# -- as a user runs it: kill -9 and resume, bad input --------------------------------------------------
def run_lottery(args, cwd, **kw):
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, "-m", "prunelab.lottery", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_killed_in_level_2_resumes_there_and_keeps_levels_0_and_1(tmp_path):
    run_dir = tmp_path / "run"
    # small batches: a level takes a few hundred steps, so the kill lands inside level 2
    args = [*TINY, "data.batch_size=8", "epochs=6", "lottery.levels=3", f"hydra.run.dir={run_dir}"]
    ref_dir = tmp_path / "uninterrupted"  # the same command, not killed: the resumed run's twin
    ref = run_lottery([*args[:-1], f"hydra.run.dir={ref_dir}"], tmp_path)
    proc = run_lottery(args, tmp_path)
    level2 = run_dir / "level_02"
    deadline = time.time() + 240
    while not (level2 / "checkpoints" / "last.ckpt").exists():  # after level 2's first epoch
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (level2 / "results.json").exists(), "level 2 finished before the kill"
    before = {lvl: file_hashes(run_dir / lvl) for lvl in ("level_00", "level_01")}
    mtimes = {p: p.stat().st_mtime_ns for p in (run_dir / "level_00").rglob("*")}

    proc = run_lottery(args, tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "levels 0, 1 finished; resuming at level 2" in out
    assert "level 2: resuming from" in out  # from level 2's own last checkpoint
    assert "[none] level 0:" not in out and "[none] level 1:" not in out
    for lvl, hashes in before.items():
        assert file_hashes(run_dir / lvl) == hashes, lvl
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "level_00").rglob("*")} == mtimes
    rows = read_levels(run_dir)
    assert [r["level"] for r in rows] == [0, 1, 2, 3]
    assert {(r["model"], r["data"]) for r in rows} == {("mlp", "synthetic")}  # Hydra's choices
    assert len({r["group_hash"] for r in rows}) == 1  # one identity across the resume
    # the resumed run is the uninterrupted one: every level's final weights bit for bit
    _, ref_err = ref.communicate(timeout=600)
    assert ref.returncode == 0, ref_err[-3000:]
    ref_rows = read_levels(ref_dir)
    for lvl in ("level_00", "level_01", "level_02", "level_03"):
        a, b = load(ref_dir / lvl / "end.pt"), load(run_dir / lvl / "end.pt")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), lvl
    for r, q in zip(rows, ref_rows):
        assert (r["test_acc"], r["best_val_acc"], r["density"]) == (
            q["test_acc"], q["best_val_acc"], q["density"])


def test_resume_with_a_different_config_names_the_keys_and_overwrites_nothing(ticket_run, tmp_path):
    _, run_dir, _, _ = ticket_run
    before = file_hashes(run_dir)
    proc = run_lottery([*TINY, "lottery.levels=3", "lottery.prune_fraction=0.3", "seed=4",
                        f"resume={run_dir}"], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    line = err.strip().splitlines()
    assert len(line) == 1 and "holds a lottery run with a different config" in line[0]
    assert "lottery.prune_fraction (0.2 vs 0.3)" in line[0] and "seed (0 vs 4)" in line[0]
    after = file_hashes(run_dir)
    after.pop("lottery.log", None)
    before.pop("lottery.log", None)
    assert after == before


def test_group_hash_ignores_seeds_and_control_and_is_the_one_runs_wrote_before():
    """Reports average the levels of one group_hash: the value must not change between versions
    (a resumed run would split in two), nor with the seed or the control."""
    config = {"seed": 0, "data.seed": 0, "lottery.control": "none", "lottery.prune_fraction": 0.2,
              "model._target_": "prunelab.models.mlp.MLP", "model.hidden": [300, 100],
              "optimizer.lr": 0.0012, "epochs": 5}
    old = {k: v for k, v in config.items() if k not in ("seed", "data.seed", "lottery.control")}
    expected = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()
    assert group_hash(config) == expected[:16]
    assert group_hash({**config, "seed": 3, "data.seed": 3,
                       "lottery.control": "random_mask"}) == group_hash(config)
    assert group_hash({**config, "lottery.prune_fraction": 0.3}) != group_hash(config)
    # a key added later, at its default, leaves the identity of earlier runs alone
    assert group_hash({**config, "hardware.memory_format": "contiguous"}) == group_hash(config)
    assert group_hash({**config, "hardware.memory_format": "channels_last"}) != group_hash(config)


def test_help_lists_the_lottery_groups_and_experiments_only(tmp_path):
    proc = run_lottery(["--help"], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "python -m prunelab.lottery experiment=lth_lenet300 seed=0" in out  # the examples
    assert "lottery.masks_from=outputs/lottery" in out
    assert "schema/" not in out and "$APP_CONFIG_GROUPS" not in out
    words = set(out.replace(",", " ").split())
    for name in experiments("train"):
        assert name not in words, name
    for name in experiments("lottery"):
        assert name in words, name
    for group in ("data", "model", "optimizer", "lr_scheduler", "hardware", "trainer", "logger"):
        for option in known_options(group):  # the template's lists follow conf/<group>/
            assert option in words, (group, option)
    assert not any(tmp_path.iterdir())  # --help writes nothing
