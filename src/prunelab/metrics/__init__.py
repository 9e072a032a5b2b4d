"""Model measurement: parameters, sparsity, MACs, size on disk, latency, accuracy.

Plain functions on ``nn.Module`` (no Lightning; this package imports no command):

* :func:`count_params` - ``{"total", "nonzero"}``
* :func:`sparsity_report` - exact-zero statistics of named parameters
* :func:`count_macs` - dense and sparsity-aware MACs per layer (batch 1)
* :func:`size_on_disk` / :func:`load_sparse_state_dict` - dense and bitmask
  sparse checkpoints; :func:`save_dense_state_dict` - the one dense size (results and measure)
* :func:`measure_latency` - median / IQR forward latency per batch size, re-measured when
  disturbed and marked ``"noisy"`` when it stays so (:func:`timing_noise`)
* :func:`time_alternating` - several models timed in turn (A B A B ...), medians (noisy ones
  listed in the result's ``noisy``)
* :func:`accuracy` - top-1 accuracy over a data loader (the one evaluation loop)

This package used to be called ``prunelab.measure``; that name is now the ``measure`` command,
which forwards the old imports (``prunelab.measure.count_macs``, ...) with a DeprecationWarning
for one release.
"""

from prunelab.metrics.accuracy import accuracy
from prunelab.metrics.disk import (
    decode_sparse_state_dict,
    dense_state_dict,
    encode_sparse_state_dict,
    load_sparse_state_dict,
    save_dense_state_dict,
    save_sparse_state_dict,
    size_on_disk,
)
from prunelab.metrics.macs import count_macs
from prunelab.metrics.params import (
    count_params,
    effective_parameters,
    effective_state_dict,
    sparsity_report,
)
from prunelab.metrics.timing import measure_latency, time_alternating, timing_noise

__all__ = [
    "accuracy",
    "count_macs",
    "count_params",
    "decode_sparse_state_dict",
    "dense_state_dict",
    "effective_parameters",
    "effective_state_dict",
    "encode_sparse_state_dict",
    "load_sparse_state_dict",
    "measure_latency",
    "save_dense_state_dict",
    "save_sparse_state_dict",
    "size_on_disk",
    "sparsity_report",
    "time_alternating",
    "timing_noise",
]
