"""A resumed run keeps its training history.

Lightning's ``CSVLogger`` deletes the ``metrics.csv`` it finds in its directory when it starts,
so a run killed and resumed would keep only the epochs after the resume. Before such a fit,
:func:`keep_csv_history` reads the rows written up to the checkpoint's epoch and writes them back
as the new file's first rows (the epochs after the checkpoint are trained again and logged
again, and so is the final testing: their old rows go). The logger writes every row as it is logged
(``flush_logs_every_n_steps: 1`` in ``conf/logger/csv.yaml``), so the file holds every epoch
the checkpoint holds, but for one row: Lightning logs an epoch's training metrics just after it
writes that epoch's ``last.ckpt``, so a kill in between (milliseconds) loses that row.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def _checkpoint_epoch(path: str) -> int | None:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    epoch = ckpt.get("epoch")
    return epoch if isinstance(epoch, int) else None


def keep_csv_history(trainer: Any, checkpoint: str | None) -> int:
    """Before ``trainer.fit(..., ckpt_path=checkpoint)``: keep the rows of every CSV logger's
    ``metrics.csv`` logged up to the checkpoint's epoch. Returns the number of rows kept."""
    from pytorch_lightning.loggers import CSVLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    if not checkpoint or not loggers or not trainer.is_global_zero:
        return 0
    epoch = _checkpoint_epoch(checkpoint)
    kept = 0
    for logger in loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        if epoch is None or not path.is_file():
            continue
        with path.open(newline="") as f:
            rows = [{k: v for k, v in row.items() if v not in ("", None)}
                    for row in csv.DictReader(f)]
        # the epochs after the checkpoint train again, and the final testing runs again
        rows = [r for r in rows if ("epoch" not in r or float(r["epoch"]) <= epoch)
                and not any(k.startswith("test/") for k in r)]
        writer = logger.experiment  # starting the writer deletes the old file
        writer.metrics[:0] = rows
        logger.save()
        kept += len(rows)
    return kept
