"""A network as an ONNX model run by onnxruntime on the CPU.

- :func:`export_onnx`: ``torch.onnx.export(dynamo=True)`` (``torch.export`` then onnxscript; opset
  18, input ``input``, output ``logits``, dynamic batch). Only where that exporter cannot run (no
  onnxscript, a torch without it, a network ``torch.export`` cannot trace) the deprecated
  TorchScript exporter is used instead, and the reason is printed (its own DeprecationWarning is
  left to show).
- :func:`ort_session`: an onnxruntime CPU session whose idle worker threads do not spin.
- :class:`OnnxModule`: an ONNX model as an ``nn.Module`` (a float tensor in, the logits out), so
  the timing and accuracy loops take it like any PyTorch variant (the int8 variants are these).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.files import atomic_write

#: The ONNX opset of every export.
OPSET = 18


def onnxruntime_available() -> bool:
    """Whether onnx and onnxruntime (the ``deploy`` extra) are installed."""
    from importlib.util import find_spec

    return find_spec("onnx") is not None and find_spec("onnxruntime") is not None


def export_onnx(net: nn.Module, input_shape: Sequence[int], path: Any = None) -> bytes:
    """``net`` (put in eval mode) as ONNX; written to ``path`` (a file name or a binary buffer)
    when given. Returns the model's bytes."""
    x = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0))
    net = net.eval()
    try:
        data = _dynamo_export(net, x)
    except Exception as exc:  # noqa: BLE001 - any failure of the new exporter: the reason is shown
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if isinstance(exc, ImportError):
            reason += " (pip install 'prunelab[deploy]')"
        print(f"prunelab: warning: torch.onnx.export(dynamo=True) cannot export "
              f"{type(net).__name__}: {reason}; using the deprecated TorchScript exporter "
              f"(dynamo=False) instead", file=sys.stderr)
        data = _torchscript_export(net, x)
    if path is not None:
        if hasattr(path, "write"):
            path.write(data)
        else:
            atomic_write(path, lambda p: p.write_bytes(data))
    return data


def _dynamo_export(net: nn.Module, x: torch.Tensor) -> bytes:
    from torch.export import Dim

    program = torch.onnx.export(net, (x,), dynamo=True, input_names=["input"],
                                output_names=["logits"], dynamic_shapes=({0: Dim("batch")},),
                                opset_version=OPSET, verbose=False)
    if program is None:  # a torch whose dynamo=True returns nothing
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
    return program.model_proto.SerializeToString()


def _torchscript_export(net: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["input"],
                      output_names=["logits"], opset_version=OPSET,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def ort_session(model: Any, threads: int | None):
    """An onnxruntime CPU session of ``model`` (a file name or the ONNX bytes) whose idle
    worker threads do not spin (they would take the cores from whatever runs next)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """The ONNX model ``onnx_bytes`` run by onnxruntime on the CPU (``threads`` intra-op threads;
    ``None``: onnxruntime's default), called like a network: a float tensor in, the logits out
    as a float tensor. The session is made on the first call (and not copied with the module)."""

    def __init__(self, onnx_bytes: bytes, threads: int | None = None):
        super().__init__()
        self.onnx_bytes = bytes(onnx_bytes)
        self.threads = threads
        self._session: Any = None

    def session(self) -> Any:
        if self._session is None:
            self._session = ort_session(self.onnx_bytes, self.threads)
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {"input": x.detach().to("cpu", torch.float32).contiguous().numpy()}
        return torch.from_numpy(self.session().run(None, feed)[0])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # an onnxruntime session is neither copied nor pickled
        return state
