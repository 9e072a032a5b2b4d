"""Slow: the pretrained recipe of docs/pretrained.md on one seed (about 2 minutes on 2 cores).

LeNet-300-100 on MNIST: a 20-epoch dense run (experiment=lenet300_mnist), then from its weights
(init_from=) one-shot pruning to 90 % at epoch 0 and 3 epochs of fine-tuning
(experiment=finetune_pruned: global magnitude, Adam 1e-3 with cosine decay), and the same
pruning without fine-tuning (epochs=0). Run with ``python -m pytest -m slow``."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

COMMON = ["measure.latency=false", "trainer.enable_progress_bar=false", "logger=none"]


def start(args, run_dir, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-m", "prunelab.train", *COMMON,
                             f"hydra.run.dir={run_dir}", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(proc, run_dir):
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    return json.loads((run_dir / "results.json").read_text())


def test_one_shot_90_of_a_trained_lenet300_fine_tuned_3_epochs_matches_dense(tmp_path):
    dense_dir = tmp_path / "dense"
    dense = results(start(["experiment=lenet300_mnist", "pruner=none", "sparsity=0"], dense_dir,
                          tmp_path), dense_dir)
    recipe = ["experiment=finetune_pruned", f"init_from={dense_dir}", "sparsity=0.9"]
    runs = {"post": ["epochs=0"], "tuned": []}  # side by side
    procs = {k: start([*recipe, *a], tmp_path / k, tmp_path) for k, a in runs.items()}
    post, tuned = (results(procs[k], tmp_path / k) for k in runs)
    best = hashlib.sha256((dense_dir / "checkpoints" / "best.ckpt").read_bytes()).hexdigest()
    for res in (post, tuned):
        assert res["sparsity"]["global"] == pytest.approx(0.9, abs=1e-6)
        assert res["init_from_sha256"] == best
    print(f"dense {dense['test_acc']:.4f}, pruned once {post['test_acc']:.4f}, fine-tuned "
          f"{tuned['test_acc']:.4f}")
    assert dense["test_acc"] >= 0.98
    assert post["epochs_run"] == 0 and post["test_acc"] < dense["test_acc"] - 0.01  # it needs it
    # seed 0 measured (1 thread; 2 threads): dense 98.39 %; 98.32 %, pruned to 90 % without
    # fine-tuning 96.57 %; 95.64 %, fine-tuned 3 epochs 98.24 %; 98.18 % (layer-wise
    # pruner=magnitude, 1 thread: 97.60 %, at best 98.10 % with lr 3e-3 and batch 64)
    assert tuned["test_acc"] >= dense["test_acc"] - 0.003
