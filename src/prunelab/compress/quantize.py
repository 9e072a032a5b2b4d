"""Post-training int8 of a (pruned) model on a supported path: the network exported to ONNX
(:func:`~prunelab.compress.onnx_model.export_onnx`, ``torch.onnx.export(dynamo=True)``),
quantized by onnxruntime (``onnxruntime.quantization``) and run by onnxruntime's int8 kernels
(:class:`~prunelab.compress.onnx_model.OnnxModule`).

- Networks with only Linear layers: dynamic quantization (int8 weights per output channel,
  activations quantized on the fly: ``MatMulInteger``).
- Networks with convolutions: static quantization (QDQ format, which onnxruntime runs as int8
  kernels): int8 weights per output channel, uint8 activations over the ranges seen on real
  calibration batches (MinMax).

Both quantize the weights *symmetrically* (``WeightSymmetric``: zero point 0, range -127..127),
so a pruned weight, exactly 0.0, becomes exactly int8 0: :func:`int8_weights` reads the int8
initializers back from the quantized ONNX model to count them. :func:`save_int8_sparse` stores
that model with each int8 weight as a bitmask of its non-zeros plus the non-zero values (what
makes a pruned int8 model small on disk); :func:`load_int8_sparse` gives the runnable model back.
:func:`qat_int8` fine-tunes quantization-aware in PyTorch first, then quantizes the same way.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.compress.onnx_model import OnnxModule, export_onnx
from prunelab.errors import UserError
from prunelab.files import save_torch_atomic
from prunelab.losses import classification_loss

#: The suffix onnxruntime gives a quantized weight's initializer (and ``_Transposed`` before it
#: where a MatMul needs the weight transposed).
QUANTIZED, TRANSPOSED = "_quantized", "_Transposed"


class QuantizationError(UserError):
    """A quantization setting that cannot work (one-line message)."""


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in model.modules())


def quantize_int8(model: nn.Module, input_shape: Sequence[int],
                  calibration: Iterable[torch.Tensor] | None = None, mode: str = "auto",
                  threads: int | None = None) -> tuple[OnnxModule, str]:
    """An int8 copy of ``model`` (exported to ONNX, quantized by onnxruntime, run by onnxruntime
    with ``threads`` threads) and the mode used (``dynamic`` or ``static``).

    ``mode="auto"``: static when the model has convolutions (``calibration`` batches are then
    required), dynamic otherwise."""
    if mode not in ("auto", "dynamic", "static"):
        raise QuantizationError(f"quantize mode={mode!r}; allowed: auto, dynamic, static")
    net = copy.deepcopy(model).float().cpu().eval()
    if mode == "auto":
        mode = "static" if has_conv(net) else "dynamic"
    batches = None
    if mode == "static":
        if calibration is None:
            raise QuantizationError("static quantization needs calibration batches")
        batches = [x.detach().float().cpu().numpy() for x in calibration]
        if not batches:
            raise QuantizationError("static quantization needs at least one calibration batch")
    model = _without_node_metadata(export_onnx(net, input_shape))
    return OnnxModule(_ort_quantize(model, batches), threads), mode


def _without_node_metadata(model: bytes) -> bytes:
    """The ONNX ``model`` without the exporter's per-node metadata (source files and lines,
    module paths): not part of what the int8 model ships as."""
    import onnx

    proto = onnx.load_from_string(model)
    for node in proto.graph.node:
        del node.metadata_props[:]
    return proto.SerializeToString()


def _ort_quantize(model: bytes, calibration: list[Any] | None) -> bytes:
    """The ONNX ``model`` quantized by onnxruntime: dynamic without ``calibration``, else static
    (QDQ) calibrated on those input arrays; int8 symmetric weights per output channel."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        """The calibration arrays, one batch per call."""

        def __init__(self, batches: list[Any]):
            self._it = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._it, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory(prefix="prunelab-int8-") as tmp:
        src, pre, dst = (Path(tmp) / f for f in ("float.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(model)
        quant_pre_process(src, pre)  # onnxruntime's shape inference and graph optimization
        if calibration is None:
            quantize_dynamic(pre, dst, weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"WeightSymmetric": True})
        else:
            quantize_static(pre, dst, Batches(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8,
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        return dst.read_bytes()


def _onnx_model(qmodel: Any):
    import onnx

    data = qmodel.onnx_bytes if isinstance(qmodel, OnnxModule) else bytes(qmodel)
    return onnx.load_from_string(data)


def int8_weights(qmodel: OnnxModule | bytes) -> dict[str, dict[str, Any]]:
    """The int8 weights of every quantized layer of an int8 ONNX model, read from its
    initializers, in PyTorch's layout: ``{layer name: {"int8", "scale", "zero_point", "axis",
    "initializer"}}`` (``axis`` 0: a scale per output channel; ``None``: one per tensor)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in _onnx_model(qmodel).graph.initializer}
    out = {}
    for name, t in inits.items():
        if t.data_type != onnx.TensorProto.INT8 or not name.endswith(QUANTIZED):
            continue
        base = name.removesuffix(QUANTIZED)
        q = torch.from_numpy(numpy_helper.to_array(t).copy())
        param = base.removesuffix(TRANSPOSED)
        if param != base:  # stored (in, out) for MatMul: back to PyTorch's (out, in)
            q = q.t().contiguous()
        scale = torch.from_numpy(numpy_helper.to_array(inits[f"{base}_scale"]).copy()).float()
        zp = torch.from_numpy(numpy_helper.to_array(inits[f"{base}_zero_point"]).copy())
        layer = param.removesuffix(".weight")
        out[layer] = {"int8": q, "scale": scale.reshape(-1), "zero_point": zp.reshape(-1),
                      "axis": 0 if scale.numel() > 1 else None, "initializer": name}
    return out


def count_int8_zeros(qmodel: nn.Module) -> dict[str, Any]:
    """Zeros in the int8 weights (global and per layer)."""
    per_layer, zeros, total = {}, 0, 0
    for name, w in int8_weights(qmodel).items():
        z = int((w["int8"] == 0).sum())
        per_layer[name] = z / w["int8"].numel()
        zeros += z
        total += w["int8"].numel()
    return {"zeros": zeros, "total": total, "global": zeros / total if total else 0.0,
            "per_layer": per_layer}


def encode_int8_sparse(qmodel: OnnxModule | bytes) -> dict[str, Any]:
    """The int8 ONNX model with its int8 weights stored sparsely: ``{"model": the model's bytes
    (a uint8 tensor) with those weights left empty, "weights": {initializer: {"shape", "bitmask"
    (packed bits of the non-zeros), "values" (the int8 non-zeros)}}}``. A weight with 7/8 or
    more non-zeros (where the bitmask would cost more than it saves) stays in the model."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = _onnx_model(qmodel)
    weights = {}
    for t in model.graph.initializer:
        if t.data_type != onnx.TensorProto.INT8 or not t.name.endswith(QUANTIZED):
            continue
        q = numpy_helper.to_array(t).reshape(-1)
        nz = q != 0
        if 8 * int(nz.sum()) >= 7 * q.size:
            continue
        weights[t.name] = {"shape": list(t.dims), "bitmask": torch.from_numpy(np.packbits(nz)),
                           "values": torch.from_numpy(q[nz].copy())}
        t.ClearField("raw_data")
        t.ClearField("int32_data")
    data = bytearray(model.SerializeToString())
    return {"model": torch.frombuffer(data, dtype=torch.uint8).clone(), "weights": weights}


def decode_int8_sparse(payload: dict[str, Any]) -> bytes:
    """The int8 ONNX model (its bytes) of an :func:`encode_int8_sparse` payload."""
    import numpy as np
    import onnx

    model = onnx.load_from_string(payload["model"].numpy().tobytes())
    for t in model.graph.initializer:
        e = payload["weights"].get(t.name)
        if e is None:
            continue
        numel = int(np.prod(e["shape"]))
        nz = np.unpackbits(e["bitmask"].numpy())[:numel].astype(bool)
        dense = np.zeros(numel, dtype=np.int8)
        dense[nz] = e["values"].numpy()
        t.raw_data = dense.tobytes()
    return model.SerializeToString()


def save_int8_sparse(qmodel: OnnxModule | bytes, path: str | Path) -> int:
    """Write the sparse int8 encoding (:func:`encode_int8_sparse`); returns the file size in
    bytes."""
    path = Path(path)
    save_torch_atomic(encode_int8_sparse(qmodel), path)
    return path.stat().st_size


def load_int8_sparse(path: str | Path, threads: int | None = None) -> OnnxModule:
    """The runnable int8 model of a :func:`save_int8_sparse` file."""
    return OnnxModule(decode_int8_sparse(torch.load(path, weights_only=True)), threads)


class _FakeQuantWeight(nn.Module):
    """A weight as the int8 model will hold it: symmetric, one scale per output channel
    (``max |w| / 127``, range -127..127, as onnxruntime's ``WeightSymmetric``); the gradient
    passes straight through the rounding."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, w.dim()))
        scale = (w.detach().abs().amax(dim=dims, keepdim=True) / 127).clamp_min(1e-12)
        q = torch.clamp(torch.round(w / scale), -127, 127) * scale
        return w + (q - w).detach()


class _FakeQuantInput:
    """A forward pre-hook: the layer's input as the static int8 model quantizes it (uint8 over
    the range seen so far, 0 included); the gradient passes straight through."""

    def __init__(self) -> None:
        self.low, self.high = 0.0, 0.0

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        self.low = min(self.low, float(x.detach().min()))
        self.high = max(self.high, float(x.detach().max()))
        scale = max(self.high - self.low, 1e-8) / 255
        zp = round(-self.low / scale)
        q = (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale
        return (x + (q - x).detach(), *args[1:])


def qat_int8(model: nn.Module, input_shape: Sequence[int], train_batches: Iterable,
             epochs: int = 1, lr: float = 1e-4, calibration: Iterable[torch.Tensor] | None = None,
             threads: int | None = None) -> OnnxModule:
    """Quantization-aware fine-tuning, then int8. A copy of ``model`` is trained for ``epochs``
    passes over ``train_batches`` with Adam at ``lr``, its Conv/Linear weights fake-quantized as
    the int8 model holds them and their inputs as it quantizes them (straight-through
    gradients; BatchNorm statistics frozen, as the int8 model folds them); the pruned weights
    (exactly 0.0) are multiplied back to zero after every step. The fine-tuned network is then
    quantized statically (:func:`quantize_int8`, calibrated on ``calibration``, else on the
    first 8 training batches), so every pruned weight is int8 0."""
    from torch.nn.utils import parametrize

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise QuantizationError(f"qat_epochs={epochs!r}; allowed: an integer >= 1")
    batches = list(train_batches)
    if not batches:
        raise QuantizationError("quantization-aware fine-tuning needs at least one batch")
    net = copy.deepcopy(model).float().cpu().train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    layers = [m for m in net.modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    hooks = []
    for m in layers:
        parametrize.register_parametrization(m, "weight", _FakeQuantWeight())
        hooks.append(m.register_forward_pre_hook(_FakeQuantInput()))
    weights = [m.parametrizations.weight.original for m in layers]
    keep = [w.detach() != 0 for w in weights]
    try:
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            for x, y in batches:
                opt.zero_grad()
                classification_loss(net(x.float().cpu()), y.cpu()).backward()
                opt.step()
                with torch.no_grad():
                    for w, k in zip(weights, keep):
                        w.mul_(k)
    finally:
        for h in hooks:
            h.remove()
        for m in layers:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    calib = [x for x, _ in batches[:8]] if calibration is None else calibration
    return quantize_int8(net.eval(), input_shape, calib, mode="static", threads=threads)[0]
