"""``export``: a run as an ONNX file (checked with onnxruntime against PyTorch) or as ExecuTorch
programs (:mod:`prunelab.deploy.executorch`), timed beside the dense PyTorch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prunelab.deploy.loading import calibration_batches, compact_run, load, model_meta
from prunelab.deploy.onnx import export_onnx, ort_session, time_sessions
from prunelab.deploy.options import DeployError, check_export_options
from prunelab.files import atomic_write, write_json_atomic
from prunelab.metrics.disk import save_dense_state_dict
from prunelab.metrics.timing import time_alternating


def export_run(conf: Any) -> dict[str, Any]:
    """``format=executorch``: :func:`~prunelab.deploy.executorch.export_executorch`. ``onnx``:
    write an ONNX file of the run (``compact``: without its dead channels, the compact
    network also as ``model_compact.pt``; ``quantize=int8``: onnxruntime's int8, as ``measure``
    makes it: :func:`~prunelab.compress.quantize.quantize_int8`, static and calibrated on 8
    training batches for conv nets, dynamic otherwise),
    validate it with onnxruntime against PyTorch, time it beside the dense PyTorch model, and
    write ``<stem>.json``. Every option is checked before the run is loaded."""
    check_export_options(conf)
    run = load(conf.run, conf.checkpoint)
    net = run.net
    if conf.compact:
        net, report = compact_run(run)
        print(f"compact=true: {report.params_after:,} of {report.params_before:,} parameters kept "
              f"(the units with all their weights at zero removed)")
    out = Path(conf.out) if conf.out else run.run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    stem = "model" + ("_compact" if conf.compact else "") + ("_int8" if conf.quantize == "int8" else "")
    if conf.format == "executorch":
        from prunelab.deploy.executorch import export_executorch, print_executorch

        programs = export_executorch(conf, run, net, out, stem)  # checked before it writes
        if conf.compact:
            from prunelab.compress.compact import save_compact

            save_compact(net, out / "model_compact.pt", **model_meta(run))
        result = {"run": str(run.run_dir), "format": "executorch", "compact": conf.compact,
                  "quantize": conf.quantize, **programs,
                  "dense_bytes": save_dense_state_dict(run.net, out / "model_dense.pt")}
        write_json_atomic(out / f"{stem}_pte.json", result)
        print_executorch(result, out)
        return result
    fp32 = out / f"{stem.replace('_int8', '')}.onnx"
    export_onnx(net, run.input_shape, str(fp32))
    path = fp32
    if conf.quantize == "int8":
        from prunelab.compress.quantize import count_int8_zeros, quantize_int8
        calib = calibration_batches(run, 8)
        q, mode = quantize_int8(net, run.input_shape, calib)
        path = out / f"{stem}.onnx"
        atomic_write(path, lambda p: p.write_bytes(q.onnx_bytes))
    if conf.compact:
        from prunelab.compress.compact import save_compact

        save_compact(net, out / "model_compact.pt", **model_meta(run))
    # PyTorch first: onnxruntime's idle worker threads would otherwise share the cores
    lat_dense = time_alternating({"dense": run.net}, run.input_shape, conf.batch_sizes, conf.runs,
                                 10, 1, conf.threads)["dense"]
    sess = ort_session(str(path), conf.threads)
    # float: outputs on random inputs within atol; int8: random inputs lie outside the range it
    # was calibrated on, so its check is its accuracy on the test set beside PyTorch's
    diff = agree = None
    if conf.quantize == "none":
        x = torch.randn(4, *run.input_shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            ref = run.net(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        diff = float(abs(got - ref).max())
        agree = float((got.argmax(1) == ref.argmax(1)).mean())
        if diff > conf.atol:
            raise DeployError(f"the ONNX model differs from PyTorch by {diff:.2e} > "
                              f"atol={conf.atol}")
    lat_onnx = time_sessions({"onnx": sess}, run.input_shape, conf.batch_sizes, conf.runs, 10,
                             1)["onnx"]
    dense_bytes = save_dense_state_dict(run.net, out / "model_dense.pt")  # the one dense size
    result = {"run": str(run.run_dir), "onnx": str(path), "bytes": path.stat().st_size,
              "dense_bytes": dense_bytes, "max_abs_diff": diff, "argmax_agreement": agree,
              "latency_ms": lat_onnx, "dense_latency_ms": lat_dense, "compact": conf.compact,
              "quantize": conf.quantize}
    if conf.quantize == "int8":
        from prunelab.compress.onnx_model import OnnxModule
        from prunelab.metrics.accuracy import accuracy

        run.dm.setup("test")
        loader = run.dm.test_dataloader()
        result.update(int8_mode=mode, int8_zeros=count_int8_zeros(q),
                      test_acc=accuracy(OnnxModule(q.onnx_bytes, conf.threads), loader),
                      pytorch_test_acc=accuracy(net, loader))
    write_json_atomic(out / f"{stem}.json", result)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} KB; dense PyTorch weights "
          f"{dense_bytes / 1e3:.1f} KB)")
    if conf.quantize == "int8":
        print(f"int8 onnxruntime test accuracy {100 * result['test_acc']:.2f} % (PyTorch float "
              f"{100 * result['pytorch_test_acc']:.2f} %)")
    else:
        print(f"onnxruntime vs PyTorch: max |diff| {diff:.2e}, same class on {100 * agree:.1f}% "
              f"of the check batch")
    for b in conf.batch_sizes:
        k = f"batch_{b}"
        print(f"batch {b}: onnxruntime {lat_onnx[k]:.3f} ms, dense PyTorch {lat_dense[k]:.3f} ms")
    return result
