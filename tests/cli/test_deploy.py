"""Deployment (prunelab.deploy, the measure and export commands): measured variants of a run,
int8 zeros, ONNX round trip, the compact checkpoint, bad input."""

import copy
import json

import pytest
import torch

from prunelab.compress.quantize import (
    count_int8_zeros,
    decode_int8_sparse,
    encode_int8_sparse,
    int8_weights,
    quantize_int8,
)
from prunelab.compress.sparse import SparseLinear, sparsify
from prunelab.models import build_model
from prunelab.pruning import Magnitude

from helpers import FAST, run_cli as cli


@pytest.fixture(scope="module")
def runs(trained_runs):
    return trained_runs


def pruned_model(sparsity, model="mlp"):
    torch.manual_seed(0)
    net = build_model(model, input_shape=(1, 28, 28), num_classes=10).eval()
    p = Magnitude()
    masks = p.prepare(net)
    masks.update(p.compute_masks(masks.params, masks.as_dict(), sparsity))
    masks.apply_()
    return net


def onnx_initializers(q):
    """The quantized model's initializers as numpy arrays, read with onnx itself."""
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(q.onnx_bytes).graph.initializer}


def test_int8_keeps_every_pruned_weight_at_zero():
    import numpy as np

    net = pruned_model(0.9)
    q, mode = quantize_int8(net, (1, 28, 28))
    assert mode == "dynamic"
    inits = onnx_initializers(q)
    ints = int8_weights(q)
    pruned = 0
    for name, p in net.named_parameters():
        if not name.endswith("weight"):
            continue
        # onnxruntime's MatMulInteger holds the weight transposed: (in, out), int8, symmetric
        stored = inits[f"{name}_Transposed_quantized"]
        assert stored.dtype == np.int8 and stored.shape == tuple(p.shape[::-1])
        assert not inits[f"{name}_Transposed_zero_point"].any()  # zero point 0: 0.0 -> int8 0
        zero = (p == 0).numpy()
        assert zero.sum() > 0.8 * zero.size and not stored.T[zero].any()
        assert int((stored == 0).sum()) >= int(zero.sum())
        assert name not in inits  # no float copy of a quantized weight is left in the model
        layer = name.rsplit(".", 1)[0]
        assert torch.equal(ints[layer]["int8"], torch.from_numpy(stored.T.copy()))
        pruned += int(zero.sum())
    zeros = count_int8_zeros(q)
    assert zeros["zeros"] >= pruned and zeros["total"] == 266_200
    # the sparse file holds the same model: decoded byte for byte
    encoded = encode_int8_sparse(q)
    assert set(encoded["weights"]) == {f"{n}_Transposed_quantized" for n in ints_names(net)}
    assert decode_int8_sparse(encoded) == q.onnx_bytes
    # no exporter metadata (source files and lines) ships in the int8 model
    import onnx

    assert not any(n.metadata_props for n in onnx.load_from_string(q.onnx_bytes).graph.node)


def ints_names(net):
    return [n for n, p in net.named_parameters() if n.endswith("weight")]


def test_int8_sparse_file_keeps_dense_weights_as_they_are():
    """Unpruned weights: a bitmask would cost more than it saves, so none is encoded."""
    torch.manual_seed(0)
    net = build_model("mlp", input_shape=(1, 28, 28), num_classes=10).eval()
    q, _ = quantize_int8(net, (1, 28, 28))
    encoded = encode_int8_sparse(q)
    assert encoded["weights"] == {} and decode_int8_sparse(encoded) == q.onnx_bytes


def test_static_int8_for_conv_nets_counts_zeros_per_channel(tmp_path):
    import numpy as np
    import onnx

    from prunelab.compress.quantize import load_int8_sparse, save_int8_sparse

    net = pruned_model(0.8, model="lenet5")
    q, mode = quantize_int8(net, (1, 28, 28), [torch.randn(8, 1, 28, 28) for _ in range(2)])
    assert mode == "static"
    inits = onnx_initializers(q)
    for name, p in net.named_parameters():
        if name.endswith("weight"):  # int8 per output channel, every pruned position int8 0
            stored = inits[f"{name}_quantized"]
            assert stored.dtype == np.int8 and stored.shape == tuple(p.shape)
            assert inits[f"{name}_scale"].shape == (p.shape[0],)
            assert not inits[f"{name}_zero_point"].any() and not stored[(p == 0).numpy()].any()
    ops = {n.op_type for n in onnx.load_from_string(q.onnx_bytes).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert count_int8_zeros(q)["global"] >= 0.8 - 1e-6
    x = torch.randn(4, 1, 28, 28)
    assert (q(x) - net(x)).abs().max() < 0.5
    # the sparse file: far smaller than the ONNX file, and the same model back
    size = save_int8_sparse(q, tmp_path / "q.pt")
    assert size < 0.5 * len(q.onnx_bytes)
    assert torch.equal(load_int8_sparse(tmp_path / "q.pt")(x), q(x))


def test_quantize_int8_refuses_what_cannot_work():
    from prunelab.compress.quantize import QuantizationError

    net = pruned_model(0.5, model="lenet5")
    with pytest.raises(QuantizationError, match="calibration batches"):
        quantize_int8(net, (1, 28, 28))
    with pytest.raises(QuantizationError, match="at least one calibration batch"):
        quantize_int8(net, (1, 28, 28), [])
    with pytest.raises(QuantizationError, match="mode='int4'; allowed: auto, dynamic, static"):
        quantize_int8(net, (1, 28, 28), mode="int4")


def test_onnx_export_uses_the_dynamo_exporter(monkeypatch, capsys):
    """torch.onnx.export(dynamo=True), no fallback; a dynamic batch; the same function."""
    from prunelab.compress import onnx_model

    calls = []
    real = torch.onnx.export

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dynamo"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", spy)
    net = pruned_model(0.5, model="lenet5")
    m = onnx_model.OnnxModule(onnx_model.export_onnx(net, (1, 28, 28)))
    assert calls == [True] and capsys.readouterr().err == ""
    for b in (1, 7):
        x = torch.randn(b, 1, 28, 28)
        with torch.no_grad():
            assert (m(x) - net(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("failure, reason", [
    (RuntimeError("cannot trace this network"), "cannot trace this network"),
    (ModuleNotFoundError("No module named 'onnxscript'"),
     "No module named 'onnxscript' (pip install 'prunelab[deploy]')"),
])
def test_onnx_export_falls_back_with_the_reason(monkeypatch, capsys, failure, reason):
    from prunelab.compress import onnx_model

    def fail(net, x):
        raise failure

    monkeypatch.setattr(onnx_model, "_dynamo_export", fail)
    net = pruned_model(0.5)
    with pytest.warns(DeprecationWarning):  # torch's own notice about its legacy exporter
        data = onnx_model.export_onnx(net, (1, 28, 28))
    err = capsys.readouterr().err.strip().splitlines()
    expected = (f"prunelab: warning: torch.onnx.export(dynamo=True) cannot export MLP: {reason}; "
                "using the deprecated TorchScript exporter (dynamo=False) instead")
    assert err == [expected]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert (onnx_model.OnnxModule(data)(x) - net(x)).abs().max() <= 1e-4


def test_sparse_linear_matches_dense_and_choice_is_measured():
    net = pruned_model(0.95)
    x = torch.randn(3, 1, 28, 28)
    ref = net(x)
    layer = SparseLinear(net.features[0])
    h = torch.flatten(x, 1)
    assert torch.allclose(layer(h), net.features[0](h), atol=1e-5)
    one = h[:1]  # one sample takes the matrix-vector path
    assert layer(one).shape == (1, 300)
    assert torch.allclose(layer(one), net.features[0](one), atol=1e-5)
    assert torch.allclose(layer(h[0]), net.features[0](h[0]), atol=1e-5)  # no batch dimension
    assert layer(h[0]).shape == (300,)
    three = h.reshape(3, 1, 784)  # leading dimensions kept, as nn.Linear keeps them
    assert layer(three).shape == (3, 1, 300)
    assert torch.allclose(layer(three), net.features[0](three), atol=1e-5)
    model, res = sparsify(net, batch_sizes=(1, 8), warmup=2, runs=5)
    choices = res.layers
    assert len(choices) == 3 and res.model_ms is None  # no input shape: no whole-model check
    for c in choices:  # every decision follows its own measurement
        assert c.sparse == all(c.sparse_ms[b] < c.dense_ms[b] for b in (1, 8))
        swapped = isinstance(model.get_submodule(c.name), SparseLinear)
        assert swapped == c.sparse
    assert torch.allclose(model(x), ref, atol=1e-5)


@pytest.mark.parametrize("model_ms", [{1: 1.0, 64: 1.0}, {1: 3.0, 64: 3.0}, {1: 1.0, 64: 3.0}])
def test_sparsify_keeps_the_layers_only_if_the_whole_model_is_faster(monkeypatch, model_ms):
    """Every layer measures faster on CSR alone; the whole-model timing (dense 2 ms) decides
    whether they stay: only if the model is faster at every batch size."""
    import prunelab.compress.sparse as sparse_mod

    seen = []

    def fake_timing(models, input_shape, batch_sizes, runs, warmup, rounds, threads):
        whole = tuple(input_shape) == (1, 28, 28)
        if whole:  # the dense copy and the swapped model, told apart
            seen.append({k: sum(isinstance(m, SparseLinear) for m in v.modules())
                         for k, v in models.items()})
            seen.append(rounds)
        return {"dense": {f"batch_{b}": 2.0 for b in batch_sizes},
                "sparse": {f"batch_{b}": model_ms[b] if whole else 1.0 for b in batch_sizes}}

    monkeypatch.setattr(sparse_mod, "time_alternating", fake_timing)
    net = pruned_model(0.95)
    x = torch.randn(4, 1, 28, 28)
    ref = net(x)
    model, res = sparsify(net, batch_sizes=[1, 64], input_shape=(1, 28, 28), rounds=4)
    assert seen == [{"dense": 0, "sparse": 3}, 4]
    keep = all(ms < 2.0 for ms in model_ms.values())
    assert res.model_ms == {"dense": {1: 2.0, 64: 2.0}, "sparse": model_ms}
    assert res.reverted is (not keep)
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == (3 if keep else 0)
    assert all(c.sparse is keep for c in res.layers)
    assert res.as_dict()["model_speedup"] == {b: 2.0 / ms for b, ms in model_ms.items()}
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_sparsify_puts_the_model_back_if_the_whole_model_timing_fails(monkeypatch):
    """Every layer measures faster on CSR (faked, so that the whole model is timed, whatever
    the machine's load); the whole-model timing then fails on a wrong input shape."""
    import prunelab.compress.sparse as sparse_mod

    real = sparse_mod.time_alternating

    def layers_faster(models, input_shape, batch_sizes, *args):
        if len(input_shape) == 1:  # one layer, timed alone
            return {"dense": {f"batch_{b}": 2.0 for b in batch_sizes},
                    "sparse": {f"batch_{b}": 1.0 for b in batch_sizes}}
        return real(models, input_shape, batch_sizes, *args)

    monkeypatch.setattr(sparse_mod, "time_alternating", layers_faster)
    net = pruned_model(0.95)
    with pytest.raises(RuntimeError):
        sparsify(net, batch_sizes=[1], runs=2, warmup=1, input_shape=(1, 27, 28))
    assert not any(isinstance(m, SparseLinear) for m in net.modules())


def test_measure_cli_compares_variants(runs, tmp_path):
    from prunelab.compress.compact import load_compact
    from prunelab.deploy import load

    proc = cli("prunelab.measure", [f"run={runs / 'structured'}", "runs=3", "rounds=1",
                                    "warmup=1", "eval_batches=2", "onnx=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # only its outputs: no .hydra/, log or outputs/ here
    res = json.loads((runs / "structured" / "deploy" / "measure.json").read_text())
    v = res["variants"]
    assert {"dense", "compact", "int8"} <= set(v)
    # the same function (up to float rounding: each may run in a different memory format)
    assert v["compact"]["test_acc"] == pytest.approx(v["dense"]["test_acc"], abs=0.005)
    assert v["compact"]["bytes"] < 0.5 * v["dense"]["bytes"]
    assert v["compact"]["macs_reduction"] > 2
    assert v["int8"]["of"] == "compact" and v["int8"]["bytes"] < v["compact"]["bytes"] / 3
    for k in v:
        if "same_as" in v[k]:  # a sparse variant with CSR on no layer: the dense model
            assert k == "sparse" and not any(c["sparse"] for c in v[k]["layers"])
            assert "latency_ms" not in v[k] and "macs_reduction" not in v[k]
            continue
        assert set(v[k]["latency_ms"]) == {"batch_1", "batch_64"}
        assert (runs / "structured" / "deploy" / v[k]["file"]).stat().st_size == v[k]["bytes"]
    deploy = runs / "structured" / "deploy"
    assert (deploy / v["int8"]["onnx_file"]).stat().st_size == v["int8"]["onnx_bytes"]
    # the compact network has few zeros left: the size is the smaller file's, whichever it is
    assert v["int8"]["bytes"] == min(v["int8"]["onnx_bytes"], v["int8"]["sparse_file_bytes"])
    assert v["int8"]["runtime"] == "onnxruntime" and v["int8"]["mode"] == "static"
    assert "compact |" in proc.stdout and "int8 |" in proc.stdout
    # the float conv variants were timed in both memory formats and run in the faster one
    for k in ("dense", "compact"):
        ms = v[k]["memory_format_ms"]
        for b in ("batch_1", "batch_64"):
            faster = ms["channels_last"][b] < ms["contiguous"][b]
            if b in v[k].get("memory_format_refused", {}):  # timings disturbed: the default
                faster = False
            assert v[k]["memory_format"][b] == ("channels_last" if faster else "contiguous")
    assert "memory_format" not in v["int8"]
    assert "memory format @1/64 (channels_last speed vs contiguous): dense " in proc.stdout
    # onnx=true: the float variants also exported, checked against PyTorch and timed on onnxruntime
    for k in ("dense", "compact"):
        assert set(v[k]["onnxruntime_latency_ms"]) == {"batch_1", "batch_64"}
        assert v[k]["onnxruntime_max_abs_diff"] <= 1e-4
        assert f"{k} on onnxruntime:" in proc.stdout
    for b in ("batch_1", "batch_64"):
        assert v["compact"]["onnxruntime_speedup"][b] == pytest.approx(
            v["dense"]["onnxruntime_latency_ms"][b] / v["compact"]["onnxruntime_latency_ms"][b])
    assert "onnxruntime_latency_ms" not in v["int8"]
    # the compact file is an ordinary checkpoint that load_compact rebuilds: the same function
    small = load_compact(runs / "structured" / "deploy" / v["compact"]["file"])
    dense = load(str(runs / "structured")).net
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        assert (small(x) - dense(x)).abs().max() <= 1e-4
    assert sum(p.numel() for p in small.parameters()) == (
        v["compact"]["compaction"]["params_after"])


def test_measure_cli_on_unstructured_run_counts_int8_zeros(runs):
    proc = cli("prunelab.measure", [f"run={runs / 'unstructured'}", "runs=3", "rounds=1",
                                    "warmup=1", "eval_batches=2", "batch_sizes=[1]"], runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((runs / "unstructured" / "deploy" / "measure.json").read_text())
    results = json.loads((runs / "unstructured" / "results.json").read_text())
    v = res["variants"]
    # 90 % magnitude pruning leaves some hidden neurons without an outgoing weight: compacted
    assert {"dense", "sparse", "int8", "compact"} <= set(v)
    assert v["compact"]["macs"] < v["dense"]["macs"] and v["int8"]["of"] == "compact"
    removed = v["compact"]["compaction"]["params_before"] - v["compact"]["compaction"]["params_after"]
    assert v["int8"]["int8_zeros"]["zeros"] >= results["sparsity"]["zeros"] - removed
    assert v["int8"]["bytes"] * 8 <= v["dense"]["bytes"]  # 90% sparse int8: under 1/8 of fp32
    # the CSR decision is recorded per layer and for the whole model, and printed
    sp = v["sparse"]
    assert {c["name"] for c in sp["layers"]} >= {"features.0"}
    if any(c["sparse"] for c in sp["layers"]) or sp["reverted"]:
        assert set(sp["model_speedup"]) == {"1"}
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("sparse: CSR on "))
    for c in sp["layers"]:
        assert c["name"] in line


def test_onnx_export_round_trip(runs, tmp_path):
    import onnxruntime as ort

    from prunelab.compress.compact import compact, load_compact
    from prunelab.deploy import load

    proc = cli("prunelab.export", [f"run={runs / 'structured'}", "format=onnx", "compact=true",
                                   "runs=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # only its outputs, under <run>/export
    path = runs / "structured" / "export" / "model_compact.onnx"
    assert path.is_file() and "onnxruntime vs PyTorch" in proc.stdout
    run = load(str(runs / "structured"))
    x = torch.randn(5, 1, 28, 28)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert (got - run.net(x)).abs().max() <= 1e-4
    # the compact graph really is smaller: its weight initializers hold fewer numbers
    import onnx

    n_onnx = sum(int(torch.tensor(t.dims).prod()) for t in onnx.load(str(path)).graph.initializer)
    assert n_onnx < 0.5 * sum(p.numel() for p in run.net.parameters())
    # the compact PyTorch model beside it (save_compact): rebuilt by load_compact, same outputs
    small = load_compact(runs / "structured" / "export" / "model_compact.pt")
    with torch.no_grad():
        assert (small(x) - got).abs().max() <= 1e-4
    expected = compact(run.net, (1, 28, 28))[1].params_after
    assert sum(p.numel() for p in small.parameters()) == expected
    before = sum(p.numel() for p in run.net.parameters())
    assert f"compact=true: {expected:,} of {before:,} parameters kept" in proc.stdout


@pytest.mark.slow
def test_onnx_int8_export(runs):
    proc = cli("prunelab.export", [f"run={runs / 'unstructured'}", "quantize=int8", "runs=3",
                                   "batch_sizes=[1]"], runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((runs / "unstructured" / "export" / "model_int8.json").read_text())
    assert res["bytes"] < res["dense_bytes"] / 3
    # checked on the test set (random inputs lie outside what int8 was calibrated for)
    assert abs(res["test_acc"] - res["pytorch_test_acc"]) <= 0.02
    assert res["max_abs_diff"] is None and res["argmax_agreement"] is None
    assert res["pytorch_test_acc"] == pytest.approx(
        json.loads((runs / "unstructured" / "results.json").read_text())["test_acc"], abs=1e-4)
    assert "int8 onnxruntime test accuracy" in proc.stdout and "check batch" not in proc.stdout
    # measure's int8 (onnxruntime, symmetric weights): every pruned weight is int8 0
    results = json.loads((runs / "unstructured" / "results.json").read_text())
    assert res["int8_mode"] == "dynamic"
    assert res["int8_zeros"]["zeros"] >= results["sparsity"]["zeros"]


def test_export_compact_of_a_run_without_a_dead_channel_is_one_line(runs):
    import dataclasses

    from prunelab.deploy import load
    from prunelab.deploy.loading import compact_run
    from prunelab.deploy.options import DeployError
    from prunelab.models import build_model

    run = load(str(runs / "unstructured"))
    dense = dataclasses.replace(run, net=build_model("mlp", run.input_shape, 10).eval())
    with pytest.raises(DeployError, match="has no whole channel at zero"):
        compact_run(dense)


@pytest.mark.parametrize("args, message", [
    (["formt=onnx"], "formt: no such option"),
    (["atol=-1"], "atol=-1.0 must be a number >= 0"),
    (["runs=0"], "runs=0 must be a number >= 1"),
    (["quantize=int4"], "quantize='int4'; allowed: none, int8"),
    (["format=tflite"], "format='tflite'; allowed: onnx, executorch"),
])
def test_export_bad_input(runs, args, message):
    before = sorted(p.name for p in (runs / "unstructured").iterdir())
    proc = cli("prunelab.export", [f"run={runs / 'unstructured'}", *args], runs)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunelab: error:") and message in lines[0]
    assert sorted(p.name for p in (runs / "unstructured").iterdir()) == before


@pytest.mark.slow
def test_export_missing_run(tmp_path):
    proc = cli("prunelab.export", [f"run={tmp_path / 'nope'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"prunelab: error: run='{tmp_path / 'nope'}' does not exist; "
                                   f"allowed: a prunelab run directory or a .ckpt file")


@pytest.mark.slow
def test_train_with_a_teacher_records_it(runs):
    out = runs / "student"
    proc = cli("prunelab.train", [*FAST, "pruner=magnitude", "sparsity=0.95",
                                  f"distill.teacher={runs / 'unstructured'}", "distill.alpha=0.5",
                                  f"hydra.run.dir={out}"], runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["distill"]["alpha"] == 0.5 and res["distill"]["teacher"].endswith("best.ckpt")
    bad = cli("prunelab.train", [*FAST, f"distill.teacher={runs / 'nope'}",
                                 f"hydra.run.dir={runs / 'student2'}"], runs)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("prunelab: error: distill.teacher=")
    assert not (runs / "student2" / "results.json").exists()


def test_quantization_aware_finetuning_keeps_pruned_weights_at_int8_zero():
    from prunelab.compress.quantize import qat_int8

    net = pruned_model(0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=gen)
    y = net(x).argmax(1)  # learnable targets: the float model's own predictions
    q = qat_int8(net, (1, 28, 28), [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)],
                 epochs=2, lr=1e-4)
    zeros = count_int8_zeros(q)
    pruned = sum(int((p == 0).sum()) for n, p in net.named_parameters() if n.endswith("weight"))
    assert zeros["zeros"] >= pruned and zeros["total"] == 266_200
    for name, w in int8_weights(q).items():  # every pruned position is int8 0
        assert bool((w["int8"][dict(net.named_parameters())[f"{name}.weight"] == 0] == 0).all())
    assert float((q(x).argmax(1) == y).float().mean()) >= 0.9


def compose_measure(overrides):
    """The measure command's config as Hydra composes it, and the chosen hardware option."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from prunelab.cli import CONF_DIR
    from prunelab.config import register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="measure"):
        cfg = compose("measure", overrides=overrides, return_hydra_config=True)
    choice = cfg.hydra.runtime.choices.get("hardware")
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_object(cfg), choice


def test_measure_takes_threads_and_batch_sizes_from_a_hardware_profile():
    from prunelab.deploy import DeployError, MeasureConf, apply_profile

    conf, name = compose_measure(["hardware=edge_cpu"])  # the hardware config group
    assert isinstance(conf, MeasureConf) and name == "edge_cpu"
    assert apply_profile(conf, name) == "edge_cpu"
    assert conf.threads == 1 and conf.batch_sizes == [1]
    conf, name = compose_measure(["hardware=edge_cpu", "threads=2", "batch_sizes=[8]"])
    apply_profile(conf, name)
    assert conf.threads == 2 and conf.batch_sizes == [8]  # set on the command line: kept
    conf, name = compose_measure(["hardware=edge_cpu", "hardware.batch_sizes=[4,16]"])
    apply_profile(conf, name)
    assert conf.threads == 1 and conf.batch_sizes == [4, 16]  # the profile's own keys
    conf, name = compose_measure([])  # no profile: the CPU, batch sizes 1 and 64
    assert conf.hardware is None and not name
    assert apply_profile(conf, name) == "cpu" and conf.batch_sizes == [1, 64]
    assert conf.threads is None
    conf = MeasureConf(hardware="edge_cpu")  # library callers may name a profile
    apply_profile(conf)
    assert conf.threads == 1 and conf.batch_sizes == [1]
    with pytest.raises(DeployError, match="hardware='phone'; known: cpu, edge_cpu, gpu, gpu_2to4"):
        apply_profile(MeasureConf(hardware="phone"))


def test_sparsify_force_swaps_every_candidate_layer():
    from prunelab.compress.sparse import SparseLinear, sparsify

    net = pruned_model(0.95)
    x = torch.randn(4, 1, 28, 28)
    ref = net(x)
    model, res = sparsify(net, batch_sizes=[1], runs=3, warmup=1, force=True,
                          input_shape=(1, 28, 28))
    assert len(res.layers) == 3 and all(c.sparse for c in res.layers)
    assert res.model_ms is None and not res.reverted  # forced: no whole-model veto
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 3
    assert torch.allclose(model(x), ref, atol=1e-5)


CL, CONTIG = "channels_last", "contiguous"


@pytest.mark.parametrize("setting,timed_faster,expect", [
    ("measured", {1: True, 64: True}, {1: CL, 64: CL}),
    ("measured", {1: False, 64: True}, {1: CONTIG, 64: CL}),  # chosen per batch size
    ("measured", {1: False, 64: False}, {1: CONTIG, 64: CONTIG}),
    ("contiguous", None, {1: CONTIG, 64: CONTIG}),
    ("channels_last", None, {1: CL, 64: CL}),
])
def test_memory_format_follows_the_measurement(monkeypatch, setting, timed_faster, expect):
    import prunelab.deploy as deploy
    import prunelab.deploy.memory_format as memory_format

    timed = []

    def fake_timing(models, input_shape, batch_sizes, runs, warmup, rounds, threads):
        timed.append(models)
        return {"contiguous": {f"batch_{b}": 2.0 for b in batch_sizes},
                "channels_last": {f"batch_{b}": 1.0 if timed_faster[b] else 3.0
                                  for b in batch_sizes}}

    monkeypatch.setattr(memory_format, "time_alternating", fake_timing)
    torch.manual_seed(0)
    cnn = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).eval()
    mlp = build_model("mlp", input_shape=(1, 28, 28), num_classes=10).eval()
    q = quantize_int8(cnn, (1, 28, 28), [torch.randn(8, 1, 28, 28)])[0]
    models = {"dense": cnn, "sparse": mlp, "int8": q}
    info = {k: {} for k in models}
    conf = deploy.MeasureConf(memory_format=setting, batch_sizes=[1, 64])
    deploy.choose_memory_format(conf, models, info, (1, 28, 28))
    assert info["dense"]["memory_format"] == {f"batch_{b}": f for b, f in expect.items()}
    assert len(timed) == (1 if setting == "measured" else 0)  # only the conv net is timed
    assert timed == [] or set(timed[0]) == {"contiguous", "channels_last"}
    assert models["sparse"] is mlp and "memory_format" not in info["sparse"]  # no conv: as is
    assert models["int8"] is q and "memory_format" not in info["int8"]  # own kernels
    chosen = models["dense"]
    cl_batches = {b for b, f in expect.items() if f == "channels_last"}
    if cl_batches:
        assert isinstance(chosen, deploy.ChannelsLast) and chosen.batches == cl_batches
    else:
        assert chosen is cnn
    with torch.inference_mode():
        for b in (1, 64, 5):  # channels_last where chosen, the model as it is elsewhere
            x = torch.randn(b, 1, 28, 28)
            assert torch.allclose(chosen(x), cnn(x), atol=1e-5)
    assert all(p.is_contiguous() for p in cnn.parameters())  # the original is not converted


def test_channels_last_over_a_conv_net_with_csr_layers():
    """A CNN whose Linear layers run on CSR: the channels_last copy shares the sparse buffers."""
    from prunelab.deploy import ChannelsLast

    net = pruned_model(0.95, model="lenet5")
    sp, res = sparsify(copy.deepcopy(net), batch_sizes=[1], runs=2, warmup=1, force=True)
    assert any(c.sparse for c in res.layers)
    cl = ChannelsLast(sp, [64])
    conv = next(m for m in cl.channels_last.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for b in (64, 3):
            x = torch.randn(b, 1, 28, 28)
            assert torch.allclose(cl(x), net(x), atol=1e-4)


@pytest.mark.parametrize("run, arg, message", [
    ("structured", "memory_format=nhwc",
     "memory_format='nhwc'; allowed: measured, contiguous, channels_last"),
    ("unstructured", "sparse_layers=some", "sparse_layers='some'; allowed: measured, all"),
    ("unstructured", "qat_epochs=-1",
     "qat_epochs=-1 must be an integer >= 0 (0: no int8_qat variant)"),
    ("structured", "checkpoint=worst", "checkpoint='worst'; allowed: best, last"),
])
def test_measure_rejects_an_unknown_value(runs, run, arg, message):
    def tree():
        return {str(p.relative_to(runs / run)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in (runs / run).rglob("*")}

    before = tree()
    proc = cli("prunelab.measure", [f"run={runs / run}", arg], runs)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"prunelab: error: {message}"]
    assert tree() == before  # refused before anything is built, timed or written
