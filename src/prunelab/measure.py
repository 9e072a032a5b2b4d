"""``python -m prunelab.measure run=<run dir>``: the dense, sparse (CSR), compact and int8 variants
of a run (on a GPU profile: dense, half precision, 2:4), measured side by side.

The work is :func:`prunelab.deploy.measure_run`; this module is the command: its options are
``conf/measure.yaml`` (schema :class:`prunelab.deploy.MeasureConf`), the ``hardware`` config
group picks a profile, ``--help`` is ``conf/hydra/help/measure.yaml``. It writes only its own
outputs (``<run>/deploy/``): no Hydra directory, no log file.

The measurement functions that lived here (``prunelab.measure.count_macs``, ...) are now in
:mod:`prunelab.metrics`; the old names still work for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import warnings
from typing import Any

import hydra
from omegaconf import DictConfig

from prunelab.cli import start
from prunelab.config import choice
from prunelab.jobs import run_task

#: The names ``prunelab.measure`` exported when it was the measurement package.
_MOVED = ("count_macs", "count_params", "decode_sparse_state_dict", "effective_parameters",
          "effective_state_dict", "encode_sparse_state_dict", "load_sparse_state_dict",
          "measure_latency", "save_sparse_state_dict", "size_on_disk", "sparsity_report",
          "time_alternating")


def __getattr__(name: str) -> Any:
    """``prunelab.measure.<name>`` of the old measurement package: forwarded to
    :mod:`prunelab.metrics` with a DeprecationWarning."""
    if name in _MOVED:
        import prunelab.metrics

        warnings.warn(f"prunelab.measure.{name} is now prunelab.metrics.{name}; the old name "
                      f"will be removed in the next release", DeprecationWarning, stacklevel=2)
        return getattr(prunelab.metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(cfg: DictConfig) -> dict[str, Any]:
    """The command's work on the composed config."""
    from omegaconf import OmegaConf

    from prunelab.deploy import measure_run

    conf = OmegaConf.to_object(cfg)  # a MeasureConf; hardware: the composed profile or None
    return measure_run(conf, hardware_name=choice("hardware", "") or None)


@hydra.main(version_base="1.3", config_path="conf", config_name="measure")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(run, cfg)


def main() -> None:
    start(_hydra_main, "measure")


if __name__ == "__main__":
    main()
