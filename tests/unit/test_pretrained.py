"""init_from (prunelab.pretrained) and epochs=0 post-training pruning (prunelab.posttrain): the
three forms of trained weights load the same network, key and shape mismatches are one line,
the file's content is part of the run's identity, BatchNorm is recalibrated to the data, and an
epochs=0 run writes a run directory that measure reads."""

import argparse
import hashlib
import json
import subprocess
import sys

import pytest
import torch
from helpers import FAST, compose_config, run_cli
from torch import nn

from prunelab.errors import ConfigError
from prunelab.posttrain import at_epoch_zero, recalibrate_batchnorm
from prunelab.pretrained import init_identity, load_init, strip_prefix
from prunelab.pruning import Magnitude, OneShot
from prunelab.results import config_hash, run_config_diff
from prunelab.runs import load_run

#: The dense run's settings (LeNet-300-100 on 400 MNIST samples, 2 epochs).
DENSE = [*FAST, "pruner=none", "sparsity=0"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A finished dense run and the same weights as the other files init_from takes."""
    tmp = tmp_path_factory.mktemp("pretrained")
    proc = run_cli("prunelab.train", [*DENSE, f"hydra.run.dir={tmp / 'dense'}"], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_run(tmp / "dense").net.state_dict()
    torch.save(state, tmp / "plain.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp / "wrapped.pt")
    # another LightningModule's checkpoint: the network under `model.`, and a loss module beside it
    torch.save({"state_dict": {**{f"model.{k}": v for k, v in state.items()},
                               "criterion.weight": torch.ones(10)}, "epoch": 1},
               tmp / "other.ckpt")
    return tmp, state


def assembled(*overrides):
    from prunelab.assemble import assemble

    return assemble(compose_config("train", *DENSE, *overrides))


def same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_dir_its_checkpoint_and_its_state_dict_give_the_same_starting_weights(dense):
    tmp, state = dense
    assert not same(assembled().net.state_dict(), state)  # initialized: other weights
    for init in (tmp / "dense", tmp / "dense" / "checkpoints" / "best.ckpt", tmp / "plain.pt",
                 tmp / "wrapped.pt"):
        parts = assembled(f"init_from={init}")
        assert same(parts.net.state_dict(), state), init
        assert not [w for w in parts.warnings if w.startswith("init_from")]
    # another module's checkpoint: `model.` stripped; its loss weights are unexpected keys
    parts = assembled(f"init_from={tmp / 'other.ckpt'}", "init_strict=false")
    assert same(parts.net.state_dict(), state)
    assert parts.warnings[0] == (f"init_from={tmp / 'other.ckpt'}: 1 unexpected key "
                                 f"(criterion.weight)")


def test_prefix_stripping_picks_the_prefix_that_names_the_network():
    names = {"features.0.weight", "classifier.weight"}
    state = {"net.features.0.weight": 1, "net.classifier.weight": 2, "val_acc.total": 3}
    assert strip_prefix(state, names) == ({"features.0.weight": 1, "classifier.weight": 2},
                                          ["val_acc.total"])
    assert strip_prefix({"features.0.weight": 1}, names) == ({"features.0.weight": 1}, [])
    assert strip_prefix({"model.x": 1}, names) == ({"model.x": 1}, [])  # no prefix helps


def mlp(hidden=(300, 100)):
    from prunelab.models import build_model

    torch.manual_seed(0)
    return build_model("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=list(hidden))


def test_non_strict_lists_missing_and_unexpected_keys_and_loads_the_rest(dense, tmp_path):
    _, state = dense
    partial = {k: v for k, v in state.items() if k != "classifier.bias"}
    partial.update({"extra.weight": torch.zeros(3), "extra.bias": torch.zeros(3)})
    torch.save(partial, tmp_path / "partial.pt")
    net = mlp()
    before = net.classifier.bias.detach().clone()
    warns = load_init(net, {"init_from": str(tmp_path / "partial.pt"), "init_strict": False})
    assert warns == [f"init_from={tmp_path / 'partial.pt'}: 1 missing key (classifier.bias), "
                     f"2 unexpected keys (extra.weight, extra.bias)"]
    assert torch.equal(net.features[0].weight, state["features.0.weight"])
    assert torch.equal(net.classifier.bias, before)  # missing: left as initialized


def test_strict_refuses_missing_and_unexpected_keys_in_one_line(dense, tmp_path):
    _, state = dense
    many = {k: v for k, v in state.items() if not k.endswith("bias")}
    torch.save(many, tmp_path / "weights_only.pt")
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError) as err:
        load_init(net, {"init_from": str(tmp_path / "weights_only.pt"), "init_strict": True})
    assert str(err.value) == (
        f"init_from={tmp_path / 'weights_only.pt'}: 3 missing keys (features.0.bias, "
        f"features.2.bias, classifier.bias); init_strict=false loads the keys that fit and "
        f"leaves the others as initialized")
    assert same(net.state_dict(), before)  # refused: nothing loaded


def test_shapes_that_do_not_fit_are_refused_naming_both_shapes(tmp_path):
    torch.save(mlp(hidden=(32, 16)).state_dict(), tmp_path / "small.pt")
    for strict in (True, False):
        with pytest.raises(ConfigError) as err:
            load_init(mlp(), {"init_from": str(tmp_path / "small.pt"), "init_strict": strict})
        assert str(err.value) == (
            f"init_from={tmp_path / 'small.pt'}: shapes do not fit: features.0.weight (32, 784) "
            f"vs (300, 784), features.0.bias (32,) vs (300,), features.2.weight (16, 32) vs "
            f"(100, 300), ... (saved vs this network's); allowed: weights of the same model and "
            f"data shape")


def test_files_that_are_not_weights_are_one_line_errors(tmp_path):
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.ckpt")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pt")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other_model.pt")
    (tmp_path / "empty_run").mkdir()
    cases = {
        "pickled.ckpt": "needs pickle to load (pickled object argparse.Namespace); prunelab "
                        "loads checkpoints with weights_only=True",
        "notes.txt": "is not a readable checkpoint",
        "no_tensors.pt": "holds no named tensors",
        "missing.pt": "does not exist; allowed: a prunelab run directory, a Lightning .ckpt or "
                      "a state_dict .pt file",
        "empty_run": "no checkpoints/best.ckpt or checkpoints/last.ckpt there",
        "other_model.pt": "none of its 1 tensors names a parameter or buffer of this network",
    }
    for name, text in cases.items():
        with pytest.raises(ConfigError) as err:
            load_init(mlp(), {"init_from": str(tmp_path / name), "init_strict": False})
        msg = str(err.value)
        assert msg.startswith(f"init_from={str(tmp_path / name)!r}") and text in msg, msg
        assert "\n" not in msg


def test_the_files_content_is_part_of_the_runs_identity(dense, tmp_path):
    tmp, _ = dense
    best = tmp / "dense" / "checkpoints" / "best.ckpt"
    cfg = compose_config("train", "init_from=" + str(tmp / "dense"))
    ident = init_identity(cfg)
    assert ident.init_from_sha256 == hashlib.sha256(best.read_bytes()).hexdigest()
    assert "init_from_sha256" not in cfg  # a copy: the caller's config is unchanged
    plain_cfg = compose_config("train")
    assert init_identity(plain_cfg) is plain_cfg  # no init_from: nothing added
    from omegaconf import OmegaConf

    a = OmegaConf.to_container(ident, resolve=True)
    b = {**a, "init_from_sha256": "0" * 64}
    assert config_hash(a) != config_hash(b)
    assert run_config_diff(a, b) == [f"init_from_sha256 ({a['init_from_sha256']!r} vs "
                                     f"{'0' * 64!r})"]
    # .hydra/config.yaml (written before the run hashes the file) lacks it: not a difference
    hydra_saved = {k: v for k, v in a.items() if k != "init_from_sha256"}
    assert run_config_diff(hydra_saved, a) == []
    # runs written before these keys existed keep their identity
    plain = OmegaConf.to_container(compose_config("train"), resolve=True)
    older = {k: v for k, v in plain.items()
             if k not in ("init_from", "init_strict", "calibration_batches")}
    assert config_hash(plain) == config_hash(older) and run_config_diff(older, plain) == []
    assert config_hash({**plain, "calibration_batches": 5}) != config_hash(plain)
    assert config_hash({**plain, "init_strict": False}) == config_hash(plain)
    hardware = {k: v for k, v in plain["hardware"].items() if k != "memory_format"}
    assert config_hash({**plain, "hardware": hardware}) == config_hash(plain)
    assert config_hash({**plain, "hardware": {**hardware, "memory_format": "channels_last"}}) \
        != config_hash(plain)


def test_a_sensitivity_run_from_before_pruner_score_keeps_its_identity(tmp_path):
    import yaml
    from omegaconf import OmegaConf

    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"target_sparsity": 0.5, "granularity": "unstructured",
                                       "layers": {"layers.0.weight": 0.5}}))
    now = OmegaConf.to_container(compose_config(
        "train", "pruner=sensitivity", f"pruner.profile={profile}"), resolve=True)
    older = {**now, "pruner": {k: v for k, v in now["pruner"].items()
                               if k not in ("score", "score_batches", "seed")}}
    assert config_hash(older) == config_hash(now) and run_config_diff(older, now) == []
    for key, value in (("score", "taylor"), ("score", "random")):
        assert config_hash({**now, "pruner": {**now["pruner"], key: value}}) != config_hash(now)
    # the seed counts only when the score is random, score_batches only when it is taylor
    random = {**now["pruner"], "score": "random"}
    assert config_hash({**now, "pruner": {**random, "seed": 1}}) != \
        config_hash({**now, "pruner": random})
    assert config_hash({**now, "pruner": {**now["pruner"], "score_batches": 3}}) == config_hash(now)


def test_batchnorm_recalibration_gives_the_running_statistics_of_the_data():
    torch.manual_seed(0)
    mean, std = torch.tensor([3.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 1.0])
    batches = [(torch.randn(256, 3) * std + mean, None) for _ in range(4)]
    batches += [(torch.full((256, 3), 100.0), None)]  # beyond the limit: must not count
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3))
        net[0].bias.zero_()
    bn = net[1]
    bn.running_mean.fill_(7.0)  # stale statistics, e.g. of the network before pruning
    bn.momentum = 0.3
    assert recalibrate_batchnorm(net, batches, limit=4) == 4
    data = torch.cat([x for x, _ in batches[:4]])
    assert torch.allclose(bn.running_mean, data.mean(0), atol=1e-5)
    per_batch_var = torch.stack([x.var(0, unbiased=True) for x, _ in batches[:4]]).mean(0)
    assert torch.allclose(bn.running_var, per_batch_var, rtol=1e-4)
    assert torch.allclose(bn.running_var, std ** 2, rtol=0.15)
    assert bn.momentum == 0.3 and not net.training and not net[1].training
    assert recalibrate_batchnorm(mlp(), batches, limit=4) == 0  # no BatchNorm: nothing to do


def test_epochs_zero_prunes_every_event_at_once_and_says_so():
    method = Magnitude()
    schedule, notes = at_epoch_zero(OneShot(at_epoch=3), 0.9, method)
    assert schedule.events(0.9) == {0: 0.9}
    assert notes == ["epochs=0: schedule=oneshot has its pruning at epoch 3; with no training all "
                     "pruning happens at once at epoch 0, to sparsity=0.9 on the loaded weights"]
    assert at_epoch_zero(OneShot(at_epoch=0), 0.9, method)[1] == []
    parts = assembled("epochs=0", "pruner=magnitude", "sparsity=0.9", "schedule=gradual",
                      "schedule.start_epoch=1",
                      "schedule.end_epoch=3")
    assert parts.callback.events == {0: 0.9}
    assert [w for w in parts.warnings if w.startswith("epochs=0")] == [
        "epochs=0: schedule=gradual has its 3 pruning events (epochs 1..3); with no training all "
        "pruning happens at once at epoch 0, to sparsity=0.9 on the loaded weights",
        "epochs=0 without init_from: the network is pruned and tested as initialized "
        "(untrained); give init_from=<trained weights> (or model.weights=)"]


def test_epochs_zero_run_end_to_end_and_measure_reads_it(dense):
    """Post-training pruning with a gradient method (taylor: scores from training batches) on
    the dense run's weights: results.json at the target, a checkpoint measure reads."""
    tmp, state = dense
    run = tmp / "post"
    proc = run_cli("prunelab.train", [*FAST, f"init_from={tmp / 'dense'}", "epochs=0",
                                      "pruner=taylor", "sparsity=0.8", f"hydra.run.dir={run}"], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((run / "results.json").read_text())
    assert res["sparsity"]["global"] == pytest.approx(0.8, abs=1e-4)
    assert res["epochs"] == 0 and res["epochs_run"] == 0
    best = tmp / "dense" / "checkpoints" / "best.ckpt"
    assert res["init_from_sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    post = res["post_training"]
    assert post["val_acc"] == pytest.approx(res["best_val_acc"]) and post["batchnorm_batches"] == 0
    assert "prunelab: post-training pruning (epochs=0): val acc" in proc.stdout
    loaded = load_run(run)  # the loaded weights, pruned: kept weights are the dense run's
    w, m = loaded.net.features[0].weight, loaded.masks["features.0.weight"]
    assert torch.equal(w[m], state["features.0.weight"][m]) and bool((w[~m] == 0).all())
    measured = subprocess.run([sys.executable, "-m", "prunelab.measure", f"run={run}", "runs=3",
                               "warmup=1", "rounds=1", "quantize=false", "sparse=false"],
                              cwd=tmp, capture_output=True, text=True, timeout=300)
    assert measured.returncode == 0, measured.stderr[-2000:]
    report = json.loads((run / "deploy" / "measure.json").read_text())
    assert report["variants"]["dense"]["test_acc"] == pytest.approx(res["test_acc"], abs=1e-6)


def test_the_recipe_experiment_requires_init_from():
    from prunelab.pretrained import init_value

    with pytest.raises(ConfigError, match="init_from is required by this experiment"):
        init_value(compose_config("train", "experiment=finetune_pruned"))
    cfg = compose_config("train", "experiment=finetune_pruned", "init_from=runs/dense")
    assert init_value(cfg) == "runs/dense" and cfg.epochs == 3 and cfg.schedule.at_epoch == 0


def test_a_finished_run_from_other_weights_names_the_changed_file(tmp_path):
    """The same command after the init_from file changed: refused naming the file's hash, not a
    bare config hash (its .hydra/config.yaml has the same path)."""
    import json

    from omegaconf import OmegaConf

    from prunelab.errors import ConfigError
    from prunelab.jobs import finished_results

    (tmp_path / "results.json").write_text(json.dumps(
        {"config_hash": "0123456789abcdef", "init_from_sha256": "a" * 64}))
    cfg = OmegaConf.create({"init_from": "dense.pt", "init_from_sha256": "b" * 64, "seed": 0})
    with pytest.raises(ConfigError, match=r"init_from_sha256 \(aaaaaaaaaaaa\.\.\. vs "
                                          r"bbbbbbbbbbbb\.\.\.: the file at init_from='dense.pt' "
                                          r"changed\)"):
        finished_results(cfg, tmp_path)
