"""``measure``'s variants in-process (so that a DeprecationWarning from prunelab's own code fails
here, see pyproject's filterwarnings): a sparse variant with no layer on CSR is the dense model
(no speedup, no MACs reduction); the sparse variant's MACs count only its CSR layers; the int8
variants are onnxruntime models whose pruned weights are int8 0."""

import json

import pytest
import torch
from torch import nn

import prunelab.compress.sparse as sparse_mod
from prunelab.deploy import MeasureConf, load, measure_run


@pytest.fixture(scope="module")
def runs(trained_runs):
    return trained_runs


def fake_sparsify(on_csr, reverted=False):
    """A stand-in for :func:`sparsify` that decides without timing: the Linear layers named in
    ``on_csr`` on CSR (left as they are: only the decision is recorded), the others dense."""
    def sparsify(model, batch_sizes=(1,), **_):
        layers = [sparse_mod.LayerChoice(n, tuple(m.weight.shape), 0.9,
                                         {b: 1.0 for b in batch_sizes},
                                         {b: 0.5 if reverted else 2.0 for b in batch_sizes},
                                         n in on_csr)
                  for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        result = sparse_mod.SparsifyResult(layers, reverted=reverted)
        if reverted:
            result.model_ms = {"dense": {b: 1.0 for b in batch_sizes},
                               "sparse": {b: 1.1 for b in batch_sizes}}
        return model, result
    return sparsify


def conf(run, out, **kw):
    return MeasureConf(run=str(run), out=str(out), runs=3, rounds=1, warmup=1, eval_batches=2,
                       batch_sizes=[1], **kw)


def test_sparse_variant_with_no_layer_on_csr_is_the_dense_model(runs, tmp_path, monkeypatch,
                                                                  capsys):
    """The issue's case: the layers faster alone, the whole model not (``reverted``): CSR on no
    layer. The variant is recorded as the dense model, with no timing, speedup, MACs or size
    of its own, and the table says so; the int8 variant runs on onnxruntime."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from prunelab.compress.quantize import load_int8_sparse

    monkeypatch.setattr(sparse_mod, "sparsify", fake_sparsify(set(), reverted=True))
    res = measure_run(conf(runs / "unstructured", tmp_path))
    sp = res["variants"]["sparse"]
    assert sp["same_as"] == "dense" and sp["reverted"] is True
    own = {"latency_ms", "speedup", "macs", "macs_reduction", "test_acc", "bytes", "file",
           "size_ratio"}
    assert not own & set(sp)
    written = json.loads((tmp_path / "measure.json").read_text())["variants"]["sparse"]
    assert written["same_as"] == "dense" and not own & set(written)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("sparse |"))
    assert row == ("sparse | same as dense: CSR on no layer (not timed again, no speedup, "
                   "no MACs reduction)")
    assert "the sparse variant is the dense model" in out
    # int8: the ONNX model quantized by onnxruntime, timed and evaluated on onnxruntime
    v = res["variants"]["int8"]
    # of the compact network: the neurons none of whose outgoing weights survived are removed
    assert v["runtime"] == "onnxruntime" and v["mode"] == "dynamic" and v["of"] == "compact"
    assert set(v["latency_ms"]) == {"batch_1"}
    assert v["test_acc"] == pytest.approx(res["variants"]["dense"]["test_acc"], abs=0.05)
    assert f"int8 runs on onnxruntime (its ONNX model, {v['onnx_bytes'] / 1e3:.1f} KB)" in out
    model = onnx.load(str(tmp_path / v["onnx_file"]))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    from prunelab.compress.compact import load_compact

    net = load_compact(tmp_path / res["variants"]["compact"]["file"])  # what int8 is made of
    for name, p in net.named_parameters():
        if name.endswith("weight"):
            stored = inits[f"{name}_Transposed_quantized"]
            assert stored.dtype == np.int8 and not stored.T[(p == 0).numpy()].any()
    assert v["int8_zeros"]["zeros"] >= sum(int((p == 0).sum()) for n, p in
                                           net.named_parameters() if n.endswith("weight"))
    # the reported size is the sparse file's, and that file gives the same model back
    assert (tmp_path / v["file"]).stat().st_size == v["bytes"] < v["onnx_bytes"] / 3
    x = torch.randn(5, 1, 28, 28)
    from prunelab.compress.onnx_model import OnnxModule

    same = OnnxModule((tmp_path / v["onnx_file"]).read_bytes())
    assert torch.equal(load_int8_sparse(tmp_path / v["file"])(x), same(x))


@pytest.mark.parametrize("on_csr", [{"features.0"}, set()])
def test_sparse_variant_counts_only_its_csr_layers_macs(runs, tmp_path, monkeypatch, on_csr):
    from prunelab.deploy.variants import float_variants
    from prunelab.metrics import count_macs

    monkeypatch.setattr(sparse_mod, "sparsify", fake_sparsify(on_csr))
    run = load(str(runs / "unstructured"))
    models, info, _ = float_variants(conf(runs / "unstructured", tmp_path), run, tmp_path, False)
    if not on_csr:  # measured slower everywhere: the dense model, not a second one to time
        assert "sparse" not in models and info["sparse"]["same_as"] == "dense"
        return
    macs = count_macs(run.net, run.input_shape)["per_layer"]
    assert models["sparse"] is not models["dense"]
    expected = macs["features.0"]["effective"] + sum(
        v["dense"] for n, v in macs.items() if n != "features.0")
    assert info["sparse"]["macs"] == expected
    assert info["sparse"]["macs"] > count_macs(run.net, run.input_shape)["effective"]


def test_quantization_aware_int8_variant(runs, tmp_path):
    """qat_epochs=1 on a few batches: int8_qat runs on onnxruntime, every pruned weight int8 0."""
    res = measure_run(conf(runs / "unstructured", tmp_path, qat_epochs=1, qat_batches=4,
                           sparse=False, quantize=False))
    v = res["variants"]
    assert set(v) == {"dense", "compact", "int8_qat"}
    q = v["int8_qat"]
    assert q["mode"] == "qat" and q["runtime"] == "onnxruntime" and q["qat_epochs"] == 1
    from prunelab.compress.compact import load_compact

    net = load_compact(tmp_path / v["compact"]["file"])  # what int8_qat is made of
    pruned = sum(int((p == 0).sum()) for n, p in net.named_parameters() if n.endswith("weight"))
    assert pruned > 0 and q["int8_zeros"]["zeros"] >= pruned
    assert q["test_acc"] >= v["dense"]["test_acc"] - 0.1
