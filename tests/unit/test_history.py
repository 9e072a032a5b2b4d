"""A resumed fit keeps the CSV logger's history: the rows up to the checkpoint's epoch stay, the
epochs trained again are logged once, and the file equals an uninterrupted run's."""

import csv
import functools
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunelab
from prunelab.history import keep_csv_history
from prunelab.module import ClassifierModule

LOGGER = OmegaConf.load(Path(prunelab.__file__).parent / "conf" / "logger" / "csv.yaml")


def loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 5, generator=g), torch.randint(0, 3, (96,), generator=g)
    return (DataLoader(TensorDataset(x, y), batch_size=32),
            DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32))


def fit(run_dir, epochs, ckpt_path=None):
    """The run's fit as prunelab configures it: the csv logger group's settings, an epoch
    checkpoint for every epoch."""
    pl.seed_everything(0, verbose=False)
    module = ClassifierModule(nn.Linear(5, 3), 3, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    logger = CSVLogger(save_dir=str(run_dir), name=LOGGER.name, version=LOGGER.version)
    every = ModelCheckpoint(dirpath=str(run_dir / "ckpt"), filename="{epoch}", save_top_k=-1)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=logger, callbacks=[every],
                         enable_progress_bar=False, enable_model_summary=False)
    kept = keep_csv_history(trainer, ckpt_path)
    trainer.fit(module, *loaders(), ckpt_path=ckpt_path)
    return kept


def epochs_of(path):
    with path.open(newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_a_resumed_fit_keeps_the_rows_before_its_checkpoint(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    fit(ref, epochs=4)
    ref_csv = (ref / "csv" / "metrics.csv").read_text()
    assert sorted(set(epochs_of(ref / "csv" / "metrics.csv"))) == [0, 1, 2, 3]
    # a run killed after epoch 2 was logged, whose last checkpoint is epoch 1's: its file holds
    # epoch 2's rows, which the resumed fit logs again
    shutil.copytree(ref, killed)
    metrics = killed / "csv" / "metrics.csv"
    with metrics.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= 2]
    with metrics.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ckpt = killed / "ckpt" / "epoch=1.ckpt"
    kept = fit(killed, epochs=4, ckpt_path=str(ckpt))
    assert kept == sum(1 for r in rows if int(r["epoch"]) <= 1) > 0
    assert metrics.read_text() == ref_csv  # the same history as the uninterrupted run


def test_a_fresh_fit_starts_the_file_over(tmp_path):
    fit(tmp_path, epochs=2)
    assert fit(tmp_path, epochs=1) == 0  # no checkpoint: a new run in an old directory
    assert sorted(set(epochs_of(tmp_path / "csv" / "metrics.csv"))) == [0]


def test_a_history_that_cannot_be_read_is_a_warning_and_the_fit_resumes(tmp_path, capsys):
    fit(tmp_path, epochs=2)
    metrics = tmp_path / "csv" / "metrics.csv"
    metrics.write_text("epoch,train/loss\nnot-a-number,1.0\n")
    assert fit(tmp_path, epochs=3, ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt")) == 0
    err = capsys.readouterr().err
    assert f"prunelab: warning: {metrics} cannot be kept across the resume (ValueError" in err
    assert sorted(set(epochs_of(metrics))) == [2]  # the resumed epoch only
