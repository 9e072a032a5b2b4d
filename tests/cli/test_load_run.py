"""Loading a finished run as a user would: ``prunelab.load_run`` and Lightning's
``ClassifierModule.load_from_checkpoint``; checkpoints are read with ``weights_only=True``."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

import prunelab
from prunelab.module import ClassifierModule
from prunelab.runs import RunError

from helpers import FAST, run_cli as cli


@pytest.fixture(scope="module")
def run_dir(trained_runs):
    return trained_runs / "unstructured"


class Planted:
    """Unpickling this (with plain pickle) would create the directory ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_load_run_gives_the_trained_network(run_dir):
    run = prunelab.load_run(run_dir)
    assert isinstance(run, prunelab.LoadedRun)
    assert run.checkpoint == run_dir / "checkpoints" / "best.ckpt"
    assert run.run_dir == run_dir
    assert not run.net.training
    assert run.config.model._target_ and float(run.config.sparsity) == 0.9
    # the network reproduces the run's own test accuracy (results.json, from best.ckpt)
    res = json.loads((run_dir / "results.json").read_text())
    dm = run.datamodule
    dm.setup("test")
    correct = seen = 0
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            correct += int((run.net(x).argmax(1) == y).sum())
            seen += len(y)
    assert seen == 400
    assert correct / seen == pytest.approx(res["test_acc"], abs=1e-6)


def test_load_run_matches_lightning_load_from_checkpoint(run_dir):
    run = prunelab.load_run(run_dir)
    from_file = prunelab.load_run(run.checkpoint)
    module = ClassifierModule.load_from_checkpoint(run.checkpoint, map_location="cpu").eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        expected = run.net(x)
        assert torch.equal(module.net(x), expected)
        assert torch.equal(module(x), expected)
        assert torch.equal(from_file.net(x), expected)
    # the optimizer and the LR schedule default to the run config's
    opts = module.configure_optimizers()
    assert isinstance(opts["optimizer"], torch.optim.Adam)
    assert opts["optimizer"].param_groups[0]["lr"] == pytest.approx(float(run.config.optimizer.lr))
    assert isinstance(opts["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    last = prunelab.load_run(run_dir, checkpoint="last")
    assert last.checkpoint.name == "last.ckpt"


def test_masks_are_the_zeros_of_the_weights(run_dir):
    run = prunelab.load_run(run_dir)
    params = dict(run.net.named_parameters())
    assert run.masks and set(run.masks) <= set(params)
    kept = total = 0
    for name, mask in run.masks.items():
        assert mask.dtype == torch.bool and mask.shape == params[name].shape
        assert torch.equal(params[name].detach() == 0, ~mask), name
        kept += int(mask.sum())
        total += mask.numel()
    assert 1 - kept / total == pytest.approx(0.9, abs=1e-3)


def test_checkpoint_that_needs_pickle_is_refused(run_dir, tmp_path):
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu",
                      weights_only=True)
    planted = tmp_path / "planted"
    ckpt["hyper_parameters"]["extra"] = Planted(planted)
    bad = tmp_path / "x.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(RunError) as err:
        prunelab.load_run(bad)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"run={str(bad)!r} needs pickle to load")
    assert "(pickled object os.makedirs)" in msg
    assert msg.endswith("prunelab loads checkpoints with weights_only=True")
    assert not planted.exists()  # nothing was unpickled
    with pytest.raises(pickle.UnpicklingError):  # Lightning's loader (torch's default) too
        ClassifierModule.load_from_checkpoint(bad)
    assert not planted.exists()


def test_teacher_that_needs_pickle_is_one_line(tmp_path):
    planted = tmp_path / "planted"
    bad = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {"model": {}}},
                "x": Planted(planted)}, bad)
    proc = cli("prunelab.train", [*FAST, f"distill.teacher={bad}",
                                  f"hydra.run.dir={tmp_path / 'student'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"prunelab: error: distill.teacher={str(bad)!r} needs pickle")
    assert not planted.exists()
    assert not (tmp_path / "student" / "results.json").exists()


def test_unreadable_file_and_missing_checkpoint(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(RunError, match=r"is not a readable checkpoint") as err:
        prunelab.load_run(junk)
    assert "\n" not in str(err.value) and str(junk) in str(err.value)

    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunError) as err:
        prunelab.load_run(empty)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"run={str(empty)!r}: no checkpoints/best.ckpt or checkpoints/last.ckpt")

    with pytest.raises(RunError, match="does not exist"):
        prunelab.load_run(tmp_path / "nowhere")
    with pytest.raises(RunError, match="allowed: best, last"):
        prunelab.load_run(empty, checkpoint="first")


def test_state_without_config_is_not_a_prunelab_checkpoint(tmp_path):
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(RunError, match="is not a prunelab checkpoint"):
        prunelab.load_run(plain)


def test_import_prunelab_is_cheap():
    code = ("import sys, prunelab; heavy = {'torch', 'omegaconf', 'hydra'} & set(sys.modules); "
            "assert not heavy, heavy; assert 'load_run' in dir(prunelab)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
