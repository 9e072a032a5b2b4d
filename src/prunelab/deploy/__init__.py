"""From a pruned run to a deployable model: variants, measured side by side, and ONNX export.

``python -m prunelab.measure run=<run dir>`` builds, from the run's best checkpoint:

- ``dense``: the pruned network as trained (zeros stored, dense kernels);
- ``sparse``: Linear layers through the CSR kernel where measurement says it is faster
  (:func:`prunelab.compress.sparse.sparsify`; only when some Linear is at least half zeros;
  with CSR on no layer it is the dense model: recorded ``same_as: dense``, not timed again);
- ``compact``: dead channels removed (:func:`prunelab.compress.compact.compact`; only when the
  run's structured pruning left whole channels at zero);
- ``int8``: post-training int8 of the compact (else the dense) network: its ONNX export
  quantized by onnxruntime and run there (:mod:`prunelab.compress.quantize`);
- ``int8_qat`` (``qat_epochs=N``): the same after N epochs of quantization-aware fine-tuning
  with the pruned weights held at zero.

and measures each at the same time, in alternating order: latency (warm-up, median of at least
``runs`` runs, ``torch.inference_mode``, threads from ``threads``), test accuracy, size on disk of
the file it would ship as. The float variants of conv nets run, at each batch size, in the faster
memory format of contiguous and channels_last (``memory_format``; :func:`choose_memory_format`).

With a GPU profile (``hardware=gpu`` or ``hardware=gpu_2to4``) the variants run on the CUDA GPU
instead: ``dense`` (float32), ``compact``, the half-precision model the profile deploys
(``bf16``; ``fp16`` for ``gpu_2to4``) and, for ``gpu_2to4``, ``2to4``: the 2:4-pruned Linear
layers as semi-structured sparse tensors (:func:`prunelab.compress.to_semi_structured`). The CSR
and int8 variants are CPU kernels and are not built there.

``python -m prunelab.export run=<run dir> format=onnx [compact=true] [quantize=int8]`` writes an
ONNX file, checks it with onnxruntime against PyTorch and prints its size and latency beside the
dense model's; ``format=executorch`` writes ExecuTorch programs lowered to XNNPACK instead
(:mod:`~prunelab.deploy.executorch`).

Modules: :mod:`~prunelab.deploy.options` (the two commands' options and their checks),
:mod:`~prunelab.deploy.loading` (a run's network, data and compact network),
:mod:`~prunelab.deploy.variants`, :mod:`~prunelab.deploy.memory_format`,
:mod:`~prunelab.deploy.onnx` (export, onnxruntime sessions and timing),
:mod:`~prunelab.deploy.executorch` (ExecuTorch programs, their checks and timing),
:mod:`~prunelab.deploy.tables` (what is printed), :mod:`~prunelab.deploy.measuring` and
:mod:`~prunelab.deploy.exporting` (the two commands' work).
"""

from prunelab.compress.onnx_model import onnxruntime_available
from prunelab.deploy.exporting import export_run
from prunelab.deploy.loading import DeployRun, compact_run, load, model_meta
from prunelab.deploy.measuring import measure_run
from prunelab.deploy.memory_format import ChannelsLast, choose_memory_format
from prunelab.deploy.onnx import (
    export_onnx,
    onnx_sessions,
    onnxruntime_latency,
    ort_session,
    time_sessions,
)
from prunelab.deploy.options import (
    MEMORY_FORMATS,
    SPARSE_LAYERS,
    DeployError,
    ExportConf,
    MeasureConf,
    apply_profile,
    hardware_profile,
)
from prunelab.deploy.tables import print_table, sparse_summary

__all__ = [
    "MEMORY_FORMATS", "SPARSE_LAYERS", "ChannelsLast", "DeployError", "DeployRun", "ExportConf",
    "MeasureConf", "apply_profile", "choose_memory_format", "compact_run", "export_onnx",
    "export_run", "hardware_profile", "load", "measure_run", "model_meta", "onnx_sessions",
    "onnxruntime_available", "onnxruntime_latency", "ort_session", "print_table",
    "sparse_summary", "time_sessions",
]
