"""The GPU profiles end to end: training with hardware=gpu / gpu_2to4 and measuring on the GPU.

Skipped without a CUDA GPU (CI has none); on CPU-only machines the measure side of the profiles'
one-line errors is tested instead."""

import json

import pytest
import torch
from helpers import run_cli as cli

CUDA = torch.cuda.is_available()
FAST = ["debug=fast", "data.subset=2000", "epochs=2", "measure.latency=false",
        "trainer.enable_progress_bar=false", "logger=none"]


def checkpoint_zeros(path, name):
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    w = state[name]
    return float((w == 0).float().mean())


@pytest.mark.skipif(CUDA, reason="CPU-only behaviour")
@pytest.mark.parametrize("profile", ["gpu", "gpu_2to4"])
def test_gpu_profiles_without_a_gpu_are_one_line_errors(profile, tmp_path):
    from prunelab.deploy import DeployError, MeasureConf, apply_profile

    message = (f"hardware={profile} but no CUDA GPU is available here; allowed: hardware=cpu or "
               f"hardware=edge_cpu")
    with pytest.raises(DeployError, match=message):
        apply_profile(MeasureConf(hardware=profile))
    # the command refuses it before loading the run (which does not exist here) or timing
    proc = cli("prunelab.measure", [f"run={tmp_path / 'nope'}", f"hardware={profile}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"prunelab: error: {message}"]
    assert list(tmp_path.iterdir()) == []
    # (prunelab.train's refusal of these profiles is in test_bad_input.py)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_train_on_gpu_in_bf16_keeps_pruned_weights_at_zero(tmp_path):
    run = tmp_path / "gpu"
    proc = cli("prunelab.train", [*FAST, "hardware=gpu", "pruner=magnitude", "sparsity=0.7",
                                  "schedule=oneshot", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run / "results.json").read_text())
    assert abs(res["sparsity"]["global"] - 0.7) < 1e-3
    assert res["test_acc"] > 0.75  # chance is 0.1
    assert abs(checkpoint_zeros(run / "checkpoints" / "last.ckpt", "net.features.0.weight")
               - 0.7) < 1e-3
    proc = cli("prunelab.measure", [f"run={run}", "hardware=gpu", "runs=5", "rounds=1",
                                    "warmup=2", "eval_batches=4"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run / "deploy" / "measure.json").read_text())
    v = res["variants"]
    assert res["target"] == "gpu" and set(v) == {"dense", "bf16"}  # CSR and int8 are CPU kernels
    assert abs(v["bf16"]["test_acc"] - v["dense"]["test_acc"]) <= 0.02
    assert v["bf16"]["bytes"] < 0.6 * v["dense"]["bytes"]
    assert "bf16 |" in proc.stdout
    # CPU-only options are refused on a GPU profile, and nothing is overwritten
    before = (run / "deploy" / "measure.json").read_bytes()
    for bad in ("onnx=true", "qat_epochs=1", "sparse_layers=all", "memory_format=channels_last"):
        proc = cli("prunelab.measure", [f"run={run}", "hardware=gpu", bad], tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1].startswith(
            f"prunelab: error: {bad} runs on the CPU only")
    assert (run / "deploy" / "measure.json").read_bytes() == before


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_2to4_train_then_measure_semi_structured(tmp_path):
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparsity needs compute capability >= 8.0")
    run = tmp_path / "nm"
    proc = cli("prunelab.train", [*FAST, "hardware=gpu_2to4", "pruner=nm", "model.hidden=[512,256]",
                                  "schedule=oneshot", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert abs(checkpoint_zeros(run / "checkpoints" / "last.ckpt", "net.features.0.weight")
               - 0.5) < 1e-6
    args = [f"run={run}", "hardware=gpu_2to4", "runs=5", "rounds=1", "warmup=2", "eval_batches=4"]
    # measured choice: at batch 1 and 64 these small layers run slower as 2:4 and stay dense
    proc = cli("prunelab.measure", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run / "deploy" / "measure.json").read_text())
    v = res["variants"]
    assert res["target"] == "gpu_2to4" and res["device"] == torch.cuda.get_device_name()
    where = v["2to4"] if "2to4" in v else v["fp16"]
    timed = {t["name"]: t for t in where.get("timings", where.get("semi_structured_timings"))}
    skipped = where.get("skipped", where.get("semi_structured_skipped"))
    assert set(timed) == {"features.0", "features.2"}  # the eligible layers, each timed
    for name, t in timed.items():  # kept as 2:4 exactly where it measured faster
        faster = all(t["sparse_ms"][k] < t["dense_ms"][k] for k in t["dense_ms"])
        assert faster == (name in v.get("2to4", {}).get("converted", []))
        assert faster or "measured slower" in skipped[name]
    if "2to4" not in v:
        assert "no Linear layer runs as 2:4" in proc.stderr
    # sparse_layers=all: every eligible layer as 2:4, whatever the timing
    proc = cli("prunelab.measure", [*args, "sparse_layers=all"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    v = json.loads((run / "deploy" / "measure.json").read_text())["variants"]
    assert set(v) == {"dense", "fp16", "2to4"}
    # 784 -> 512 -> 256 are converted; the 256 -> 10 classifier is not (10 is not a multiple of 16)
    assert v["2to4"]["converted"] == ["features.0", "features.2"]
    assert "multiples of 16" in v["2to4"]["skipped"]["classifier"]
    assert abs(v["2to4"]["test_acc"] - v["fp16"]["test_acc"]) <= 0.01
    assert v["2to4"]["bytes"] < v["fp16"]["bytes"] < v["dense"]["bytes"]
    assert "2to4 |" in proc.stdout
    # sparse=false: no 2:4 variant
    proc = cli("prunelab.measure", [*args, "sparse=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    v = json.loads((run / "deploy" / "measure.json").read_text())["variants"]
    assert set(v) == {"dense", "fp16"}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_semi_structured_choice_is_measured_per_layer():
    from prunelab.compress import to_semi_structured
    from prunelab.pruning.granularity import nm_mask

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
                              torch.nn.Linear(4096, 64))
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.weight.mul_(nm_mask(m.weight.abs(), torch.ones_like(m.weight, dtype=torch.bool),
                                  2, 4, 2))
    _, report = to_semi_structured(net, torch.randn(8, 4096), batch_sizes=[16384], runs=5,
                                   warmup=2)
    assert {t["name"] for t in report.timings} == {"0", "2"}
    for t in report.timings:  # the decision follows the timing, both ways
        faster = t["sparse_ms"]["batch_16384"] < t["dense_ms"]["batch_16384"]
        assert (t["name"] in report.converted) == faster
        assert faster or "measured slower" in report.skipped[t["name"]]
