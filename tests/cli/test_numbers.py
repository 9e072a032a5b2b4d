"""The numbers of a finished run agree wherever they are reported: ``train``'s results.json and
``measure`` give one dense size for the same weights, and the compact-model MACs in results.json
are the MACs torch's FlopCounterMode counts on the compact network of that run."""

import json
import os
import subprocess
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode



def test_train_and_measure_report_one_dense_size(trained_runs, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = {name: subprocess.Popen(  # both runs measured side by side
        [sys.executable, "-m", "prunelab.measure", f"run={trained_runs / name}",
         f"out={tmp_path / name}", "runs=3", "rounds=1", "warmup=1", "eval_batches=1",
         "batch_sizes=[1]", "quantize=false", "sparse=false", "memory_format=contiguous"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name in ("structured", "unstructured")}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        run, out = trained_runs / name, tmp_path / name
        results = json.loads((run / "results.json").read_text())
        dense = json.loads((out / "measure.json").read_text())["variants"]["dense"]
        assert dense["bytes"] == results["size_bytes"]["dense_bytes"], name
        # and the files themselves are the same bytes
        assert (out / "model_dense.pt").read_bytes() == (run / "model_dense.pt").read_bytes()


def test_results_json_compact_macs_are_the_compact_networks(trained_runs):
    from prunelab.compress.compact import compact
    from prunelab.deploy import load

    results = json.loads((trained_runs / "structured" / "results.json").read_text())
    macs = results["macs"]
    run = load(str(trained_runs / "structured"))
    small, report = compact(run.net, run.input_shape)
    assert report.channels_after < report.channels_before
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        small.eval()(torch.zeros(1, *run.input_shape))
    assert macs["compact"] == counter.get_total_flops() // 2  # 2 FLOPs per MAC
    assert macs["compact"] < macs["nonzero"] == macs["effective"] < macs["dense"]
    # an unstructured run removes only the neurons none of whose outgoing weights survived: its
    # compact network is a little smaller than its dense one, far above its non-zero MACs
    unstructured = json.loads((trained_runs / "unstructured" / "results.json").read_text())
    macs = unstructured["macs"]
    assert macs["nonzero"] < 0.2 * macs["dense"] < macs["compact"] <= macs["dense"]
