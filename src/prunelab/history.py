"""A resumed run keeps its training history.

Lightning's ``CSVLogger`` deletes the ``metrics.csv`` it finds in its directory when it starts,
so a run killed and resumed would keep only the epochs after the resume. Before such a fit,
:func:`keep_csv_history` reads the rows written up to the checkpoint's epoch and writes them back
as the new file's first rows (the epochs after the checkpoint are trained again and logged
again, and so is the final testing: their old rows go). Lightning saves the file after every
logging call, so it holds every epoch the checkpoint holds, but for one row: an epoch's training
metrics are logged just after that epoch's ``last.ckpt`` is written, so a kill in between
(milliseconds) loses that row. A history that cannot be read back (a damaged file, a checkpoint
without an epoch) is one warning, and the run resumes without it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any


def _checkpoint_epoch(path: str) -> int | None:
    import torch

    try:  # mmap: the tensors are not read (a zip checkpoint, what Lightning writes)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    epoch = ckpt.get("epoch")
    return epoch if isinstance(epoch, int) else None


def _rows_up_to(path: Path, epoch: int) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = [{k: v for k, v in row.items() if k is not None and v not in ("", None)}
                for row in csv.DictReader(f)]
    # the epochs after the checkpoint train again, and the final testing runs again
    return [r for r in rows if ("epoch" not in r or float(r["epoch"]) <= epoch)
            and not any(k.startswith("test/") for k in r)]


def keep_csv_history(trainer: Any, checkpoint: str | None) -> int:
    """Before ``trainer.fit(..., ckpt_path=checkpoint)``: keep the rows of every CSV logger's
    ``metrics.csv`` logged up to the checkpoint's epoch. Returns the number of rows kept."""
    from pytorch_lightning.loggers import CSVLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)
               and (Path(lg.log_dir) / "metrics.csv").is_file()]
    if not checkpoint or not loggers or not trainer.is_global_zero:
        return 0
    kept = 0
    epoch: int | None = None
    for logger in loggers:
        path = Path(logger.log_dir) / "metrics.csv"
        try:
            if epoch is None:  # the checkpoint read once, whatever the number of loggers
                epoch = _checkpoint_epoch(checkpoint)
            if epoch is None:
                raise ValueError("the checkpoint names no epoch")
            rows = _rows_up_to(path, epoch)
        except (OSError, ValueError, RuntimeError, csv.Error) as exc:
            print(f"prunelab: warning: {path} cannot be kept across the resume "
                  f"({exc.__class__.__name__}: {exc}); it restarts with the resumed epochs",
                  file=sys.stderr)
            continue
        writer = logger.experiment  # starting the writer deletes the old file
        writer.metrics[:0] = rows
        logger.save()
        kept += len(rows)
    return kept
