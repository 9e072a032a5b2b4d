"""``python -m prunelab.export run=<run dir> format=onnx [compact=true] [quantize=int8]``: a run
as an ONNX file, checked with onnxruntime against PyTorch, its size and latency beside the dense
model's.

The work is :func:`prunelab.deploy.export_run`; this module is the command: its options are
``conf/export.yaml`` (schema :class:`prunelab.deploy.ExportConf`), ``--help`` is
``conf/hydra/help/export.yaml``. It writes only its own outputs (``<run>/export/``): no Hydra
directory, no log file.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from prunelab.cli import start
from prunelab.jobs import run_task


def run(cfg: DictConfig) -> dict[str, Any]:
    """The command's work on the composed config."""
    from omegaconf import OmegaConf

    from prunelab.deploy import export_run

    return export_run(OmegaConf.to_object(cfg))


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    run_task(run, cfg)


def main() -> None:
    start(_hydra_main, "export")


if __name__ == "__main__":
    main()
