"""Model measurement: parameters, sparsity, MACs, size on disk, latency.

Plain functions on ``nn.Module`` (no Lightning):

* :func:`count_params` - ``{"total", "nonzero"}``
* :func:`sparsity_report` - exact-zero statistics of named parameters
* :func:`count_macs` - dense and sparsity-aware MACs per layer (batch 1)
* :func:`size_on_disk` / :func:`load_sparse_state_dict` - dense and bitmask
  sparse checkpoints
* :func:`measure_latency` - median / IQR forward latency per batch size
* :func:`time_alternating` - several models timed in turn (A B A B ...), medians
"""

from prunelab.measure.disk import (
    decode_sparse_state_dict,
    encode_sparse_state_dict,
    load_sparse_state_dict,
    save_sparse_state_dict,
    size_on_disk,
)
from prunelab.measure.latency import measure_latency, time_alternating
from prunelab.measure.macs import count_macs
from prunelab.measure.params import (
    count_params,
    effective_parameters,
    effective_state_dict,
    sparsity_report,
)

__all__ = [
    "count_macs",
    "count_params",
    "decode_sparse_state_dict",
    "effective_parameters",
    "effective_state_dict",
    "encode_sparse_state_dict",
    "load_sparse_state_dict",
    "measure_latency",
    "save_sparse_state_dict",
    "size_on_disk",
    "sparsity_report",
    "time_alternating",
]
