"""ExecuTorch as a deploy target (issue 17): programs lowered to XNNPACK match PyTorch, int8 keeps
the pruned weights at zero, what XNNPACK does not take is named per op, ``export
format=executorch`` writes one checked program per batch size. Skipped without the extra
(``pip install 'prunelab[executorch]'``), except the one-line error that says how to install it."""

import functools
import json

import pytest
import torch
from torch import nn

from helpers import run_cli as cli
from prunelab.compress.executorch_model import executorch_available
from prunelab.models import build_model
from prunelab.pruning import Magnitude

needs_executorch = pytest.mark.skipif(not executorch_available(),
                                      reason="ExecuTorch not installed (pip install 'prunelab[executorch]')")


def pruned_lenet5(sparsity=0.7):
    torch.manual_seed(0)
    net = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10).eval()
    p = Magnitude()
    masks = p.prepare(net)
    masks.update(p.compute_masks(masks.params, masks.as_dict(), sparsity))
    masks.apply_()
    return net


@pytest.mark.slow  # long (a minute on 2 cores): pytest -m slow
@needs_executorch
def test_float_program_matches_pytorch_at_any_batch_and_int8_keeps_pruned_zeros():
    from prunelab.compress.executorch_model import ExecuTorchModule, lower, quantize_pt2e
    from prunelab.deploy.executorch import executorch_programs, float_zeros

    net = pruned_lenet5()
    low = lower(net, (1, 28, 28), 4)
    assert low.not_delegated == {} and low.delegated_calls >= 1 and low.batch == 4
    module = ExecuTorchModule(low.buffer, 4)
    for b in (1, 4, 9):  # smaller (padded), equal, larger (chunked) than the program's batch
        x = torch.randn(b, 1, 28, 28)
        with torch.no_grad():
            assert (module(x) - net(x)).abs().max() <= 1e-4
    # int8 (PT2E, symmetric per-channel): every pruned weight is an int8 zero in the program's
    # graph; the program's class agrees with float PyTorch on most of a random batch
    calib = [torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    programs, info = executorch_programs(net, (1, 28, 28), [8], calib)
    assert info["float_zeros"] == float_zeros(net) > 0.6 * sum(p.numel() for p in net.parameters())
    assert info["int8_zeros"] >= info["float_zeros"] and info["not_delegated"] == {}
    assert len(programs[8].buffer) < 0.5 * len(low.buffer)  # int8 weights: a quarter of float32
    x = calib[0]
    with torch.no_grad():
        agree = (ExecuTorchModule(programs[8].buffer, 8)(x).argmax(1) == net(x).argmax(1)).float()
    assert agree.mean() >= 0.75
    assert quantize_pt2e is not None


class CumsumHead(nn.Module):
    """A network with an op XNNPACK does not take (cumsum)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)).cumsum(1)


@pytest.mark.slow  # long (a minute on 2 cores): pytest -m slow
@needs_executorch
def test_ops_left_outside_xnnpack_are_named_per_op(capsys):
    from prunelab.compress.executorch_model import ExecuTorchModule, lower
    from prunelab.deploy.executorch import executorch_programs

    net = CumsumHead().eval()
    low = lower(net, (1, 28, 28), 2)
    assert low.not_delegated == {"aten.cumsum.default": 1}
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():  # still runs: the portable operator
        assert (ExecuTorchModule(low.buffer, 2)(x) - net(x)).abs().max() <= 1e-4
    _, info = executorch_programs(net, (1, 28, 28), [1, 2])
    assert info["not_delegated"] == {"aten.cumsum.default": 1}
    assert ("prunelab: warning: XNNPACK does not take aten.cumsum.default (x1); these run as "
            "ExecuTorch's portable operators") in capsys.readouterr().err


@pytest.mark.slow  # half a minute: measure's ExecuTorch variants test the lowering by default
@needs_executorch
def test_export_executorch_compact_writes_checked_programs_per_batch_size(trained_runs, tmp_path):
    from prunelab.compress.compact import load_compact
    from prunelab.compress.executorch_model import ExecuTorchModule

    run = trained_runs / "structured"
    proc = cli("prunelab.export", [f"run={run}", "format=executorch", "compact=true", "runs=3",
                                   "batch_sizes=[1,3]", f"out={tmp_path / 'et'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "et"
    res = json.loads((out / "model_compact_pte.json").read_text())
    assert res["pte"] == {"batch_1": "model_compact_b1.pte", "batch_3": "model_compact_b3.pte"}
    assert res["format"] == "executorch" and res["compact"] is True and res["max_abs_diff"] <= 1e-4
    assert res["not_delegated"] == {} and set(res["latency_ms"]) == {"batch_1", "batch_3"}
    assert res["bytes"]["batch_1"] == (out / "model_compact_b1.pte").stat().st_size
    # the program on disk is the compact network: it runs in ExecuTorch like model_compact.pt
    small = load_compact(out / "model_compact.pt")
    program = ExecuTorchModule((out / "model_compact_b3.pte").read_bytes(), 3)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert (program(x) - small(x)).abs().max() <= 1e-4
    assert res["bytes"]["batch_3"] < 0.5 * res["dense_bytes"]  # channels gone, weights smaller
    assert "ExecuTorch vs PyTorch: max |diff|" in proc.stdout
    assert "batch 3: ExecuTorch " in proc.stdout


@pytest.mark.slow
@needs_executorch
def test_export_executorch_int8_checks_test_accuracy(trained_runs, tmp_path):
    run = trained_runs / "unstructured"
    proc = cli("prunelab.export", [f"run={run}", "format=executorch", "quantize=int8", "runs=3",
                                   "batch_sizes=[2]", f"out={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "model_int8_pte.json").read_text())
    results = json.loads((run / "results.json").read_text())
    assert res["int8_zeros"] >= res["float_zeros"] >= results["sparsity"]["zeros"]
    assert abs(res["test_acc"] - res["pytorch_test_acc"]) <= 0.02
    assert "int8 ExecuTorch test accuracy" in proc.stdout



@pytest.mark.slow
@needs_executorch
def test_measure_on_edge_cpu_adds_the_int8_executorch_variants(trained_runs, tmp_path):
    """hardware=edge_cpu turns the ExecuTorch variants on (the extra is installed); int8 ones keep
    every pruned weight at int8 zero and stay within two points of PyTorch's accuracy."""
    run = trained_runs / "structured"
    proc = cli("prunelab.measure", [f"run={run}", "hardware=edge_cpu", "sparse=false", "runs=3",
                                    "rounds=1", "warmup=1", "eval_batches=2", f"out={tmp_path}"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    v = json.loads((tmp_path / "measure.json").read_text())["variants"]
    assert {"et_dense", "et_compact", "et_int8", "et_compact_int8"} <= set(v)
    for name, of in (("et_int8", "dense"), ("et_compact_int8", "compact")):
        assert v[name]["int8_zeros"] >= v[name]["float_zeros"]
        assert abs(v[name]["test_acc"] - v[of]["test_acc"]) <= 0.02
        assert v[name]["bytes"] < v[f"et_{of}"]["bytes"] / 2


def test_format_executorch_without_the_extra_says_how_to_install(monkeypatch):
    from prunelab.compress import executorch_model
    from prunelab.config import ExportConf
    from prunelab.deploy.options import DeployError, check_export_options

    monkeypatch.setattr(executorch_model, "executorch_available", lambda: False)
    with pytest.raises(DeployError) as err:
        check_export_options(ExportConf(run="x", format="executorch"))
    assert str(err.value) == ("format=executorch needs ExecuTorch: "
                              "pip install 'prunelab[executorch]'")


@needs_executorch
def test_measure_times_executorch_variants_beside_eager(trained_runs, tmp_path):
    run = trained_runs / "structured"
    proc = cli("prunelab.measure", [f"run={run}", "executorch=true", "quantize=false",
                                    "sparse=false", "batch_sizes=[2]", "runs=3", "rounds=1",
                                    "warmup=1", "eval_batches=2", f"out={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "measure.json").read_text())
    v = res["variants"]
    assert {"dense", "compact", "et_dense", "et_compact"} <= set(v) and "et_int8" not in v
    for name, of in (("et_dense", "dense"), ("et_compact", "compact")):
        et = v[name]
        assert et["runtime"] == "executorch" and et["of"] == of and et["max_abs_diff"] <= 1e-4
        assert et["file"] == f"model_{name}_b2.pte" and (tmp_path / et["file"]).is_file()
        assert et["bytes"] == (tmp_path / et["file"]).stat().st_size
        assert et["test_acc"] == pytest.approx(v[of]["test_acc"], abs=0.005)  # float: same classes
        assert et["latency_ms"]["batch_2"] > 0 and et["macs"] == v[of]["macs"]
    ratio = v["et_dense"]["latency_ms"]["batch_2"] / v["et_compact"]["latency_ms"]["batch_2"]
    assert v["et_compact"]["executorch_speedup"]["batch_2"] == pytest.approx(ratio)
    assert v["et_compact"]["bytes"] < v["et_dense"]["bytes"]  # the channels are gone
    assert "et_compact runs on ExecuTorch (XNNPACK): speedup against et_dense" in proc.stdout


def test_measure_executorch_on_a_gpu_profile_is_refused():
    from prunelab.config import MeasureConf
    from prunelab.deploy.options import DeployError, check_measure_options

    conf = MeasureConf(run="x", executorch=True, batch_sizes=[1])
    with pytest.raises(DeployError, match=r"^executorch=true runs on the CPU only .* not on "
                                          r"hardware=gpu; allowed there: onnx=false, "
                                          r"executorch=false"):
        check_measure_options(conf, "gpu", "gpu")


@pytest.mark.slow
@needs_executorch
@pytest.mark.parametrize("name", __import__("prunelab.models", fromlist=["list_models"]).list_models())
def test_every_zoo_model_lowers_and_matches_pytorch(name):
    """Every zoo model (dense and, where channels can go, compact) as an XNNPACK program: within
    1e-4 of PyTorch; nothing left outside the delegate, except in the ViT (XNNPACK 1.5.1 leaves
    its LayerNorms, the attention's masking ops and the token mean to portable operators)."""
    from prunelab.compress.compact import compact
    from prunelab.compress.executorch_model import ExecuTorchModule, lower
    from prunelab.pruning import Structured

    shape = {"mlp": (1, 28, 28), "lenet5": (1, 28, 28), "seed_cnn": (1, 28, 28)}.get(name, (3, 32, 32))
    torch.manual_seed(0)
    net = build_model(name, input_shape=shape, num_classes=10).eval()
    pruner = Structured(scope="layer")
    masks = pruner.prepare(net)
    masks.update(pruner.compute_masks(masks.params, masks.as_dict(), 0.3))
    masks.apply_()
    small, _ = compact(net, shape)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    for model in (net, small.eval()):
        low = lower(model, shape, 2)
        if name.startswith("vit"):
            assert low.not_delegated["aten.native_layer_norm.default"] == 9, low.not_delegated
        else:
            assert low.not_delegated == {}, low.not_delegated
        with torch.no_grad():
            assert (ExecuTorchModule(low.buffer, 2)(x) - model(x)).abs().max() <= 1e-4


@needs_executorch
def test_set_threads_none_is_the_runtime_default_not_the_last_size():
    from executorch.extension.pybindings import portable_lib

    from prunelab.compress.executorch_model import set_threads

    set_threads(None)
    default = portable_lib._threadpool_get_thread_count()
    other = 1 if default != 1 else 2
    set_threads(other)
    assert portable_lib._threadpool_get_thread_count() == other
    set_threads(None)
    assert portable_lib._threadpool_get_thread_count() == default


@needs_executorch
def test_a_loaded_method_outlives_the_bytes_it_was_loaded_from():
    """A runtime Method does not keep the program's bytes: load_method keeps them (without, the
    call below crashed the interpreter once other lowering reused the freed memory)."""
    from prunelab.compress.executorch_model import load_method, lower

    net = pruned_lenet5()
    x = torch.randn(2, 1, 28, 28)
    # as the timing loops take it: the bound execute alone, no reference to the bytes kept
    call = functools.partial(load_method(lower(net, (1, 28, 28), 2).buffer).execute, [x])
    lower(pruned_lenet5(0.5), (1, 28, 28), 2)
    junk = [bytes(100_000) for _ in range(200)]
    with torch.no_grad():
        assert (call()[0] - net(x)).abs().max() <= 1e-4
    del junk


@needs_executorch
def test_a_variant_that_cannot_be_lowered_is_skipped_by_default_and_refused_when_asked(
        monkeypatch, tmp_path, capsys):
    from types import SimpleNamespace

    from prunelab.deploy import executorch as et
    from prunelab.deploy.options import DeployError

    def fail(*args, **kwargs):
        raise RuntimeError("torch.export cannot trace this\nsecond line")

    monkeypatch.setattr(et, "executorch_programs", fail)
    run = SimpleNamespace(input_shape=(1, 28, 28))
    floats = {"dense": pruned_lenet5()}
    info = {"dense": {"macs": 1}}
    conf = SimpleNamespace(threads=None, quantize=False, batch_sizes=[1], executorch=None)
    assert et.executorch_variants(conf, run, floats, info, tmp_path) == {}
    assert info["et_dense"] == {"skipped": "torch.export cannot trace this"}
    assert capsys.readouterr().err.strip() == ("prunelab: warning: no et_dense variant: "
                                               "torch.export cannot trace this")
    conf.executorch = True
    with pytest.raises(DeployError, match=r"^executorch=true: et_dense cannot run on ExecuTorch: "
                                          r"torch.export cannot trace this$"):
        et.executorch_variants(conf, run, floats, info, tmp_path)
    assert list(tmp_path.iterdir()) == []
