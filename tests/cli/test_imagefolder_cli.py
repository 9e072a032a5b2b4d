"""``data=imagefolder`` and ``data=custom`` as a user runs them: a folder of PNG files trains,
prunes and writes results.json; a run SIGKILLed after an epoch resumes (``resume=<run>``) to the
uninterrupted run's weights bit for bit (which read the images with a DataLoader worker: the
order and augmentation do not depend on it); ``measure`` runs on it; a LightningDataModule of the
user's own, from a module in the launch directory, trains with its input shape and classes
inferred; a folder whose train/ and val/ classes differ is one line, exit 2, nothing written.
All processes start in two rounds of three."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from test_resume import kill_when_due, start_train, weights

TRAIN = ["data=imagefolder", "data.image_size=16", "data.batch_size=8", "data.in_memory=false",
         "model=lenet5", "pruner=magnitude", "sparsity=0.5", "epochs=3", "logger=none",
         "measure.latency=false", "trainer.enable_progress_bar=false"]

USER_MODULE = '''
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Shapes(TensorDataset):
    classes = ["low", "mid", "high", "top"]


class ShapesData(pl.LightningDataModule):
    """No input_shape / num_classes attributes: prunelab infers them."""

    def __init__(self, size=8, n=64):
        super().__init__()
        self.size, self.n = size, n

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 4, (self.n,), generator=g)
        x = torch.randn(self.n, 1, self.size, self.size, generator=g) + y.view(-1, 1, 1, 1)
        self.train, self.val = Shapes(x[:48], y[:48]), Shapes(x[48:], y[48:])

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True,
                          generator=torch.Generator().manual_seed(1))

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=16)

    def test_dataloader(self):
        return DataLoader(self.val, batch_size=16)
'''


def write_tree(root, splits=(("train", 8), ("val", 3)), classes=("ant", "bee", "cat")):
    rng = np.random.default_rng(0)
    for split, n in splits:
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 80, (12, 12, 3)).astype(np.uint8)
                img[..., k % 3] += 150
                Image.fromarray(img).save(root / split / name / f"{i}.png")


def start(module, args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("imagefolder")
    write_tree(base / "images")
    write_tree(base / "mismatch", splits=(("train", 1),))
    write_tree(base / "mismatch", splits=(("val", 1),), classes=("ant", "bee", "dog"))
    user = base / "user"
    user.mkdir()
    (user / "shapes_data.py").write_text(textwrap.dedent(USER_MODULE))
    args = [*TRAIN, f"data.root={base / 'images'}"]
    # round 1: the uninterrupted run (one DataLoader worker); the same command (no worker)
    # SIGKILLed once its first last.ckpt is written; a user's own data module by _target_
    first = {
        "ref": start("prunelab.train", [*args, "data.num_workers=1",
                                         f"hydra.run.dir={base / 'ref'}"], base),
        "custom": start("prunelab.train", [
            "data=custom", "data._target_=shapes_data.ShapesData", "+data.size=8", "model=mlp",
            "pruner=magnitude", "sparsity=0.5", "epochs=2", "logger=none",
            "measure.latency=false", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={user / 'run'}"], user),
    }
    killed = start_train([*args, "data.num_workers=0", f"hydra.run.dir={base / 'killed'}"], base)
    kill_when_due({1: killed}, {1: base / "killed" / "checkpoints" / "last.ckpt"})
    got = {k: wait(p) for k, p in first.items()}
    assert got["ref"][0] == 0, got["ref"][2][-3000:]
    assert not (base / "killed" / "results.json").exists(), "finished before the kill"
    got["killed_epoch"] = torch.load(base / "killed" / "checkpoints" / "last.ckpt",
                                     weights_only=True)["epoch"]
    # round 2: the resume, measure on the uninterrupted run, bad input
    second = {
        "resume": start_train([f"resume={base / 'killed'}"], base),
        "measure": start("prunelab.measure", [
            f"run={base / 'ref'}", "runs=2", "rounds=1", "warmup=1", "batch_sizes=[1]",
            "quantize=false", "sparse=false", "memory_format=contiguous"], base),
        "mismatch": start("prunelab.train", [*TRAIN, f"data.root={base / 'mismatch'}",
                                             f"hydra.run.dir={base / 'refused'}"], base),
    }
    got.update({k: wait(p) for k, p in second.items()})
    return base, got


def test_train_on_an_image_folder_prunes_and_writes_results(runs):
    base, got = runs
    _, out, _ = got["ref"]
    line = next(ln for ln in out.splitlines() if ln.startswith("prunelab: data: "))
    assert "24/9/9 train/val/test images of 3 classes" in line
    assert "streamed from disk by 1 DataLoader workers" in line
    res = json.loads((base / "ref" / "results.json").read_text())
    assert res["data"] == "imagefolder" and res["model"] == "lenet5"
    assert res["sparsity"]["global"] == pytest.approx(0.5, abs=0.01)
    assert res["test_acc"] > 0.5  # three colours: learnable in three epochs (chance: 1/3)
    ckpt = torch.load(base / "ref" / "checkpoints" / "best.ckpt", weights_only=True)
    first = next(v for k, v in ckpt["state_dict"].items() if k.endswith("weight"))
    assert first.shape[1] == 3  # RGB input


def test_killed_run_resumes_to_the_uninterrupted_run(runs):
    base, got = runs
    assert got["killed_epoch"] in (0, 1)  # stopped before the last epoch's end
    code, out, err = got["resume"]
    assert code == 0, err[-3000:]
    assert f"prunelab: resuming {base / 'killed'} from last.ckpt" in out
    ref, resumed = (weights(base / d / "checkpoints" / "last.ckpt") for d in ("ref", "killed"))
    assert ref.keys() == resumed.keys()
    for key in ref:
        assert torch.equal(ref[key], resumed[key]), key
    a, b = (json.loads((base / d / "results.json").read_text()) for d in ("ref", "killed"))
    assert (a["test_acc"], a["best_val_acc"]) == (b["test_acc"], b["best_val_acc"])


def test_measure_runs_on_an_image_folder_run(runs):
    base, got = runs
    code, out, err = got["measure"]
    assert code == 0, err[-3000:]
    assert "prunelab: data: " in out  # the test set read again, streamed
    res = json.loads((base / "ref" / "deploy" / "measure.json").read_text())
    results = json.loads((base / "ref" / "results.json").read_text())
    assert res["variants"]["dense"]["test_acc"] == pytest.approx(results["test_acc"])


def test_custom_datamodule_by_target(runs):
    base, got = runs
    code, _, err = got["custom"]
    assert code == 0, err[-3000:]
    run = base / "user" / "run"
    res = json.loads((run / "results.json").read_text())
    assert res["sparsity"]["global"] == pytest.approx(0.5, abs=0.01)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    linears = [v for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.dim() == 2]
    assert linears[0].shape[1] == 8 * 8 and linears[-1].shape[0] == 4  # inferred: 1x8x8, 4


def test_class_folders_that_differ_are_one_line(runs):
    base, got = runs
    code, _, err = got["mismatch"]
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "only in train/: cat; only in val/: dog" in lines[0], err
    assert not (base / "refused").exists()
