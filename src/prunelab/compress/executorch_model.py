"""A network as an ExecuTorch program lowered to XNNPACK, run by ExecuTorch's runtime on the CPU.

ExecuTorch (``pip install 'prunelab[executorch]'``) is the runtime PyTorch users ship to phones
and boards. The flow is the documented one: ``torch.export`` -> ``to_edge_transform_and_lower``
with the XNNPACK partitioner -> ``to_executorch()``, a ``.pte`` buffer loaded by
``executorch.runtime``. int8 goes through PT2E first (``prepare_pt2e`` / ``convert_pt2e`` with
the XNNPACK quantizer: static, symmetric, per-channel weights, calibrated on training batches).

A program has a static batch size (bounded dynamic shapes would need their upper bound planned
and leave reshapes outside the delegate): :func:`lower` makes one program per batch size, and
:class:`ExecuTorchModule` runs any batch through one program (padding the last chunk), so the
accuracy loop takes it like any network.

Whatever XNNPACK does not take stays in the program as a portable operator; :func:`lower` names
each such op with its count (``Lowered.not_delegated``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: How to install the runtime (in every message that needs it).
INSTALL = "pip install 'prunelab[executorch]'"
#: Graph nodes that are bookkeeping, not operators left outside the delegate.
_PLUMBING = ("executorch_call_delegate", "getitem", "sym_size")


def executorch_available() -> bool:
    """Whether the ``executorch`` package (exporter and runtime) is installed."""
    from importlib.util import find_spec

    try:
        return find_spec("executorch.runtime") is not None and find_spec("executorch.exir") is not None
    except ModuleNotFoundError:  # no executorch at all
        return False


@dataclass
class Lowered:
    """One program: its bytes, the batch size it takes, and the operators XNNPACK did not take
    (op name -> count; empty: the whole network runs in the delegate)."""

    buffer: bytes
    batch: int
    not_delegated: dict[str, int] = field(default_factory=dict)
    delegated_calls: int = 0


def name_ops(counts: dict[str, int]) -> str:
    """``{op: count}`` as ``"op (xN), ..."`` (the ops a program left outside the delegate)."""
    return ", ".join(f"{op} (x{n})" for op, n in counts.items())


def quantize_pt2e(net: nn.Module, input_shape: Sequence[int], calibration: Sequence[torch.Tensor]
                  ) -> nn.Module:
    """``net`` quantized to int8 by PT2E with the XNNPACK quantizer (static, symmetric,
    per-channel weights), calibrated on ``calibration`` batches. A weight that was zero stays an
    int8 zero (symmetric: zero point 0)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise ValueError("int8 needs at least one calibration batch")
    example = calibration[0][:1].to("cpu", torch.float32)
    captured = torch.export.export(net.eval(), (example,)).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x.to("cpu", torch.float32))
    return convert_pt2e(prepared)


def int8_weight_zeros(quantized: nn.Module) -> int:
    """The int8 zeros among the quantized network's constant int8 tensors (its weights)."""
    tensors = dict(quantized.state_dict())
    for n in quantized.graph.nodes:
        if n.op == "get_attr" and isinstance(getattr(quantized, n.target, None), torch.Tensor):
            tensors[n.target] = getattr(quantized, n.target)
    return sum(int((t == 0).sum()) for t in tensors.values() if t.dtype == torch.int8)


def lower(net: nn.Module, input_shape: Sequence[int], batch: int) -> Lowered:
    """``net`` (float, or the output of :func:`quantize_pt2e`) as an ExecuTorch program for
    batches of ``batch``, lowered to XNNPACK."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = torch.randn(int(batch), *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        net = net.eval()
    except NotImplementedError:  # an exported graph (quantize_pt2e's): captured in eval mode
        pass
    with torch.no_grad():
        exported = torch.export.export(net, (example,))
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    names = [_op_name(n.target) for n in graph.nodes if n.op == "call_function"]
    left = Counter(n for n in names if not any(p in n for p in _PLUMBING))
    calls = sum("executorch_call_delegate" in n for n in names)
    program = edge.to_executorch()
    return Lowered(bytes(program.buffer), int(batch), dict(sorted(left.items())), calls)


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    text = str(target)
    if "EdgeOpOverload" in text:  # "<EdgeOpOverload: aten.view_copy.default>: schema = ..."
        return text.split(">")[0].split(": ", 1)[-1]
    return name


#: The runtime's own thread-pool size, read before :func:`set_threads` first changes it.
_default_threads: int | None = None


def set_threads(threads: int | None) -> None:
    """The XNNPACK thread pool of the runtime (one per process) to ``threads`` (``None``: the
    runtime's default, not whatever an earlier call left). Call it before loading the methods it
    is meant for: a method loaded before the pool is resized to another size hangs on its next
    call (measured with executorch 1.5.1)."""
    global _default_threads
    from executorch.extension.pybindings import portable_lib

    now = int(portable_lib._threadpool_get_thread_count())
    if _default_threads is None:
        _default_threads = now
    wanted = int(threads) if threads else _default_threads
    if wanted != now:  # (the runtime logs every reset, even to the same size)
        portable_lib._unsafe_reset_threadpool(wanted)


class LoadedMethod:
    """The ``forward`` method of a program and the program itself. A runtime ``Method`` does not
    keep its ``Program``, which holds the bytes the method reads: once they are freed, a bare
    method's next call crashes or fails (executorch 1.5.1). ``execute`` (even taken alone, as a
    bound method) keeps both."""

    def __init__(self, buffer: bytes):
        from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(buffer)
        self.method = self.program.load_method("forward")

    def execute(self, inputs: Sequence[Any]) -> Any:
        return self.method.execute(inputs)


def load_method(buffer: bytes) -> LoadedMethod:
    """The ``forward`` method of the program ``buffer``, loaded in ExecuTorch's runtime."""
    return LoadedMethod(buffer)


class ExecuTorchModule(nn.Module):
    """An ExecuTorch program called like a network: any batch of float images in, the logits out.
    The program takes batches of ``batch``; larger batches run in chunks, the last chunk padded
    with zeros (its padding rows dropped from the output). The method is loaded on the first call
    (and not copied with the module)."""

    def __init__(self, buffer: bytes, batch: int):
        super().__init__()
        self.buffer, self.batch = bytes(buffer), int(batch)
        self._method: Any = None

    def method(self) -> Any:
        if self._method is None:
            self._method = load_method(self.buffer)
        return self._method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        outs = []
        for chunk in x.split(self.batch):
            n = len(chunk)
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch - n, *chunk.shape[1:])])
            outs.append(self.method().execute([chunk])[0][:n])
        return torch.cat(outs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_method"] = None  # a loaded method is neither copied nor pickled
        return state


__all__ = ["INSTALL", "ExecuTorchModule", "LoadedMethod", "Lowered", "executorch_available",
           "int8_weight_zeros", "load_method", "lower", "name_ops", "quantize_pt2e",
           "set_threads"]
