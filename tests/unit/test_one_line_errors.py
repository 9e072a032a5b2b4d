"""Issue 14's one-line errors, in process: the command line's path values and maps, the checks
of seed, N:M, Lightning's clipping and accumulation, a diverged loss, a full disk, data
(val_size, a failed download leaves nothing behind), a partial sensitivity profile."""

import errno
import functools
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import compose_config
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.cli import check_keys, check_output_dir, quote_paths
from prunelab.errors import ConfigError, UserError

README = Path(__file__).resolve().parents[2] / "README.md"


# -- the command line ------------------------------------------------------------------------------
def test_readme_layer_fractions_form_composes(tmp_path):
    """The per-layer rate exactly as README.md writes it (the shell's quotes removed)."""
    forms = re.findall(r"`'(lottery\.layer_fractions=\{[^']*\})'`", README.read_text())
    assert forms, "README.md shows no 'lottery.layer_fractions={...}' example"
    from prunelab.config import register_configs

    args = quote_paths([forms[0]])
    register_configs()
    check_keys("lottery", args)  # what the command checks before Hydra starts
    cfg = compose_config("lottery", *args)
    assert dict(cfg.lottery.layer_fractions) == {"features.*": 0.1}
    assert quote_paths(["+lottery.layer_fractions={a: 1}"]) == ["+lottery.layer_fractions={a: 1}"]


def test_existing_paths_with_override_syntax_are_quoted_for_hydra(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    job = tmp_path / "multirun" / "pruner=magnitude,sparsity=0.7"
    job.mkdir(parents=True)
    odd = tmp_path / "it's=a,dir\\"
    odd.mkdir()
    args = [f"resume={job}", f"distill.teacher={job}", f"run={odd}", f"dir={job}",
            f"lottery.masks_from={job}", "seed=0,1", f"resume={tmp_path}/missing=1,2",
            f"resume='{job}'", f"foo={job}"]
    out = quote_paths(args)
    assert out[-4:] == args[-4:]  # a sweep, a path that does not exist, quoted, not a path key
    parsed = OverridesParser.create().parse_overrides(out[:5])
    assert [o.value() for o in parsed] == [str(job)] * 2 + [str(odd)] + [str(job)] * 2
    assert not any(o.is_sweep_override() for o in parsed)


def test_an_output_directory_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"hydra.run.dir=.*/f/run: .*/f is a file"):
        check_output_dir([f"hydra.run.dir={tmp_path / 'f' / 'run'}"], "train")
    check_output_dir([f"hydra.run.dir={tmp_path / 'new' / 'run'}"], "train")
    assert not (tmp_path / "new").exists()  # the check creates nothing


# -- top-level values ------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["seed=abc"], "seed='abc' must be an integer >= 0"),
    (["seed=-1"], "seed=-1 must be an integer >= 0"),
    (["seed=4294967296"], "seed=4294967296 must be an integer in [0, 2**32)"),
    (["pruner=nm", "pruner.n=5", "pruner.m=4"],
     "pruner.n=5 and pruner.m=4: need integers with 1 <= n < m (N:M keeps n of every m "
     "consecutive weights, e.g. pruner.n=2 pruner.m=4)"),
    (["+trainer.gradient_clip_val=0.5"], "trainer.gradient_clip_val=0.5: prunelab steps the "
     "optimizer itself (Lightning clips only for its own steps); use module.gradient_clip_val=0.5"),
    (["+trainer.accumulate_grad_batches=4", "data.batch_size=32"],
     "trainer.accumulate_grad_batches=4: prunelab steps the optimizer itself after every batch "
     "(Lightning accumulates only for its own steps); for the same batch per step use "
     "data.batch_size=128"),
])
def test_top_level_values_are_checked_before_anything_runs(overrides, message):
    from prunelab.assemble import check_top_level

    with pytest.raises(ConfigError) as info:
        check_top_level(compose_config("train", *overrides))
    assert str(info.value) == message


def test_nm_method_names_n_and_m():
    from prunelab.pruning.methods.nm import NM

    with pytest.raises(UserError, match=r"^pruner.n=3 and pruner.m=2: need integers with 1 <= n"):
        NM(n=3, m=2)


# -- the module ------------------------------------------------------------------------------------
def _loader(n=64, batch=8):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 5, generator=g),
                                    torch.randint(0, 3, (n,), generator=g)), batch_size=batch)


def _trainer(**kw):
    return pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, **kw)


class _NanAt(nn.Module):
    """A linear net whose training output is nan from its ``at``-th training call on."""

    def __init__(self, at):
        super().__init__()
        self.lin, self.at, self.calls = nn.Linear(5, 3), at, 0

    def forward(self, x):
        out = self.lin(x)
        if self.training:
            self.calls += 1
            if self.calls > self.at:
                out = out * float("nan")
        return out


def test_a_nan_loss_names_the_epoch_and_the_first_bad_step():
    from prunelab.module import ClassifierModule, DivergenceError

    module = ClassifierModule(_NanAt(11), 3, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    module.FLUSH_EVERY = 3  # the first bad step found across flushes
    with pytest.raises(DivergenceError) as info:
        _trainer().fit(module, _loader(), _loader(16))  # 8 steps per epoch: step 11 in epoch 1
    assert str(info.value) == ("loss is nan at epoch 1 step 11: training diverged; lower "
                               "optimizer.lr (lr 0.1) or set module.gradient_clip_val")
    assert isinstance(info.value, UserError) and isinstance(info.value, FloatingPointError)


@pytest.mark.parametrize("kw, message", [
    ({"gradient_clip_val": 2.0}, "trainer.gradient_clip_val=2.0: prunelab steps the optimizer "
                                 "itself (Lightning clips only for its own steps); use "
                                 "module.gradient_clip_val=2.0"),
    ({"accumulate_grad_batches": 3}, "trainer.accumulate_grad_batches=3: prunelab steps the "
                                     "optimizer itself after every batch (Lightning accumulates "
                                     "only for its own steps); for the same batch per step use a "
                                     "data.batch_size that many times larger"),
])
def test_lightning_clipping_and_accumulation_name_the_module_equivalent(kw, message):
    """Also where no config check ran (the lottery, library use): one line, not Lightning's
    MisconfigurationException."""
    from prunelab.module import ClassifierModule

    module = ClassifierModule(nn.Linear(5, 3), 3,
                              optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    with pytest.raises(ConfigError) as info:
        _trainer(**kw).fit(module, _loader())
    assert str(info.value) == message


# -- writing output --------------------------------------------------------------------------------
def test_a_full_disk_is_a_user_error_naming_the_file(tmp_path):
    from prunelab.config import as_write_error
    from prunelab.files import atomic_write

    target = tmp_path / "results.json"

    def full(tmp):
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write() does

    with pytest.raises(OSError) as info:
        atomic_write(target, full)
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    err = as_write_error(info.value, tmp_path)
    assert isinstance(err, UserError)
    assert str(err) == (f"cannot write {target}: [Errno {errno.ENOSPC}] No space left on device "
                        f"(the disk is full); free space or choose another output directory "
                        f"(hydra.run.dir=<dir>)")
    nameless = as_write_error(OSError(errno.EROFS, "Read-only file system"), tmp_path)
    assert str(nameless).startswith(f"cannot write in {tmp_path}: [Errno {errno.EROFS}] ")
    other = FileNotFoundError(errno.ENOENT, "No such file", "x")
    assert as_write_error(other, tmp_path) is other  # not a write failure: unchanged


# -- data ------------------------------------------------------------------------------------------
def test_val_size_larger_than_the_set_is_a_data_error_at_preload():
    from prunelab.data import MNISTDataModule
    from prunelab.data.base import DataError

    with pytest.raises(DataError, match=r"^data.val_size=60000 leaves no training data: the mnist "
                                        r"training set has 60000 samples; allowed: 0..59999$"):
        MNISTDataModule(val_size=60000, subset=10).preload()


def test_a_failed_download_leaves_no_directories(tmp_path):
    from prunelab.data import FashionMNISTDataModule
    from prunelab.data.base import DataError

    root = tmp_path / "data"
    dm = FashionMNISTDataModule(root=str(root))

    def fetch():  # what torchvision does before the network fails
        (root / "FashionMNIST" / "raw").mkdir(parents=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    with pytest.raises(DataError, match="the download failed \\(it needs internet access\\)"):
        dm._download(fetch, "FashionMNIST/raw/...", True, 1.0)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "keep").mkdir()  # a directory that existed before stays
    dm2 = FashionMNISTDataModule(root=str(tmp_path / "keep"))
    with pytest.raises(DataError):
        dm2._download(lambda: (tmp_path / "keep" / "FashionMNIST").mkdir() or 1 / 0, "x", True, 1)
    assert (tmp_path / "keep").is_dir() and not (tmp_path / "keep" / "FashionMNIST").exists()


# -- a partial sensitivity profile --------------------------------------------------------------
def test_a_partial_sensitivity_profile_warns_once_and_a_full_one_is_silent(tmp_path, capsys):
    from prunelab.pruning.methods.sensitivity import Sensitivity

    net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    partial, full = tmp_path / "partial.yaml", tmp_path / "full.yaml"
    partial.write_text("target_sparsity: 0.5\nlayers:\n  0.weight: 0.5\n")
    full.write_text("target_sparsity: 0.5\nlayers:\n  0.weight: 0.6\n  2.weight: 0.0\n")
    Sensitivity(profile=str(partial)).check_run(net, None, 0.5)
    err = capsys.readouterr().err.splitlines()
    assert err == ["prunelab: warning: pruner.profile names 1 of the 2 prunable layers (the "
                   "others stay dense): the run reaches total sparsity 0.4167, not sparsity=0.5; "
                   "a profile written by python -m prunelab.sensitivity for this model reaches it"]
    Sensitivity(profile=str(full)).check_run(net, None, 0.5)
    assert capsys.readouterr().err == ""
