"""Tests of prunelab.data: IDX reading and checksums, splits, loaders, augmentation, data modules,
their configs, and reproducible resume under Lightning."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import shutil
import socket
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

import prunelab.data as pdata
from prunelab.data import (
    BUNDLED_MNIST_DIR,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataError,
    FashionMNISTDataModule,
    MNISTDataModule,
    RandomCropFlip,
    SyntheticDataModule,
    TensorBatchLoader,
    TensorDataModule,
    read_idx,
)

from data_fixtures import IDX_NAMES, idx_bytes, write_fashion_mnist

CONF_DATA = Path(pdata.__file__).resolve().parent.parent / "conf" / "data"
SUMS = BUNDLED_MNIST_DIR / "SHA256SUMS.uncompressed"

MNIST_FIRST_TRAIN = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
MNIST_FIRST_TEST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def mnist_raw():
    """The bundled MNIST as returned by load_raw (read once per module; ~3 s)."""
    return MNISTDataModule().load_raw()


def _with_raw(dm, raw):
    """Make ``dm`` use already loaded raw tensors and count how often it loads them."""
    dm.load_calls = 0

    def load_raw():
        dm.load_calls += 1
        return raw

    dm.load_raw = load_raw
    return dm


# ------------------------------------------------------------------------------------ IDX / MNIST
def test_mnist_known_facts(mnist_raw):
    x_train, y_train, x_test, y_test = mnist_raw
    assert x_train.shape == (60000, 1, 28, 28) and x_train.dtype == torch.uint8
    assert x_test.shape == (10000, 1, 28, 28)
    assert y_train[:10].tolist() == MNIST_FIRST_TRAIN
    assert y_test[:10].tolist() == MNIST_FIRST_TEST
    assert torch.bincount(y_train.long(), minlength=10).tolist() == MNIST_TRAIN_COUNTS
    mean = x_train.double().mean().item()
    assert mean == pytest.approx(33.318, abs=1e-3)  # = 0.1307 * 255 up to the rounding of 0.1307
    assert mean / 255 == pytest.approx(0.1307, abs=5e-5)


def test_mnist_datamodule_split_and_normalization(mnist_raw):
    dm = _with_raw(MNISTDataModule(), mnist_raw)
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10
    dm.setup("fit")
    (xt, yt), (xv, yv), (xs, ys) = dm.data_train, dm.data_val, dm.data_test
    assert (len(xt), len(xv), len(xs)) == (55000, 5000, 10000)
    assert xt.dtype == torch.float32 and yt.dtype == torch.long
    # train + val together are exactly the original training set
    counts = torch.bincount(torch.cat([yt, yv]), minlength=10).tolist()
    assert counts == MNIST_TRAIN_COUNTS
    assert ys[:10].tolist() == MNIST_FIRST_TEST  # test split is untouched and unshuffled
    assert xt.mean().item() == pytest.approx(0.0, abs=0.01)
    assert xt.std().item() == pytest.approx(1.0, abs=0.01)
    # setup again: cached, no reload
    dm.setup("test")
    assert dm.load_calls == 1
    # normalize=False gives raw pixels / 255
    raw = _with_raw(MNISTDataModule(normalize=False), mnist_raw)
    raw.setup()
    assert raw.data_test[0][0].mul(255).round().to(torch.uint8).equal(mnist_raw[2][0])


def test_read_idx_raw_and_gz_agree(tmp_path):
    gz = BUNDLED_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress(gz.read_bytes()))
    a, b = read_idx(gz, SUMS), read_idx(raw, SUMS)
    assert a.dtype == np.uint8 and a.shape == (10000,)
    assert np.array_equal(a, b)
    # multi-dimensional payload and a truncated file
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x.idx").write_bytes(idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "x.idx"), arr)
    (tmp_path / "bad.idx").write_bytes(idx_bytes(arr)[:-1])
    with pytest.raises(ValueError, match="payload"):
        read_idx(tmp_path / "bad.idx")


def _corrupt_copy(src: Path, dst: Path) -> str:
    """Copy a .gz IDX file with one payload byte changed; return the new sha256."""
    data = bytearray(gzip.decompress(src.read_bytes()))
    data[-1] ^= 0xFF
    dst.write_bytes(gzip.compress(bytes(data)))
    return hashlib.sha256(bytes(data)).hexdigest()


def test_checksum_mismatch_raises_one_line(tmp_path):
    name = "t10k-labels-idx1-ubyte"
    expected = pdata.load_checksums(SUMS)[name]
    bad = tmp_path / f"{name}.gz"
    actual = _corrupt_copy(BUNDLED_MNIST_DIR / f"{name}.gz", bad)
    with pytest.raises(ValueError) as info:
        read_idx(bad, SUMS)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(bad) in msg and expected in msg and actual in msg
    read_idx(bad)  # without checksums the (corrupted but well-formed) file parses


def test_mnist_datamodule_verifies_checksums(tmp_path):
    """A corrupted copy under data.root is rejected (sums from the same directory)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(SUMS, raw / SUMS.name)
    for name in IDX_NAMES:
        if name != "t10k-labels-idx1-ubyte":
            (raw / f"{name}.gz").symlink_to(BUNDLED_MNIST_DIR / f"{name}.gz")
    _corrupt_copy(BUNDLED_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="checksum mismatch for .*t10k-labels-idx1-ubyte"):
        MNISTDataModule(root=str(tmp_path), download=False).setup()


def test_mnist_missing_root_names_data_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        MNISTDataModule(root=str(missing), download=False).setup()
    msg = str(info.value)
    assert "\n" not in msg and f"data.root='{missing}'" in msg


# ------------------------------------------------------------------------------------- splits
def test_split_disjoint_seeded_and_subset():
    dm = SyntheticDataModule(val_size=5000, seed=0)
    train, val = dm.split_indices(60000)
    assert len(train) == 55000 and len(val) == 5000
    assert len(set(train.tolist()) | set(val.tolist())) == 60000  # disjoint, covering
    again_train, again_val = SyntheticDataModule(val_size=5000, seed=0).split_indices(60000)
    assert torch.equal(again_val, val) and torch.equal(again_train, train)
    _, other_val = SyntheticDataModule(val_size=5000, seed=1).split_indices(60000)
    assert not torch.equal(other_val, val)

    sub_train, sub_val = SyntheticDataModule(val_size=5000, seed=0, subset=1000).split_indices(60000)
    assert len(sub_train) == 1000 and len(sub_val) == 1000
    assert set(sub_train.tolist()) <= set(train.tolist())  # taken from the training part
    assert set(sub_val.tolist()) <= set(val.tolist())
    assert not set(sub_train.tolist()) & set(sub_val.tolist())
    # a seeded random selection, not the first 1000 samples
    assert sub_train.max().item() > 10000
    with pytest.raises(ValueError, match="val_size"):
        SyntheticDataModule(val_size=100).split_indices(100)


def test_subset_caps_all_splits(mnist_raw):
    dm = _with_raw(MNISTDataModule(subset=300, val_size=5000, seed=3), mnist_raw)
    dm.setup()
    assert [len(d[0]) for d in (dm.data_train, dm.data_val, dm.data_test)] == [300, 300, 300]
    assert dm.data_test[1][:10].tolist() == MNIST_FIRST_TEST
    assert len(dm.train_dataloader()) == 3  # ceil(300 / 128)


# ------------------------------------------------------------------------------------- loader
def _loader(n=10, **kw):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    y = torch.arange(n)
    return TensorBatchLoader(x, y, **kw)


def _ids(loader):
    return [yb.tolist() for _, yb in loader]


def test_loader_batches_len_and_drop_last():
    loader = _loader(10, batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(10))  # unshuffled order
    assert all(torch.equal(xb.view(-1).long(), yb) for xb, yb in batches)  # x and y stay paired
    assert batches[0][1].dtype == torch.long
    dropped = _loader(10, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [len(b[1]) for b in dropped] == [4, 4]


def test_loader_shuffle_epochs_are_reproducible():
    a = _loader(50, batch_size=7, shuffle=True, seed=5)
    e0, e1 = _ids(a), _ids(a)  # each __iter__ advances the epoch
    assert e0 != e1
    assert sorted(sum(e0, [])) == list(range(50))
    b = _loader(50, batch_size=7, shuffle=True, seed=5)
    assert _ids(b) == e0 and _ids(b) == e1
    b.set_epoch(1)
    assert _ids(b) == e1
    # epoch e is randperm with generator seeded seed + e
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(5 + 1)).tolist()
    assert sum(e1, []) == expected
    assert _ids(_loader(50, batch_size=7, shuffle=True, seed=6)) != e0


def test_loader_state_dict_resumes_mid_epoch():
    full = _loader(40, batch_size=6, shuffle=True, seed=2)
    _ids(full)
    epoch1 = _ids(full)

    run = _loader(40, batch_size=6, shuffle=True, seed=2)
    _ids(run)
    it = iter(run)
    head = [next(it)[1].tolist() for _ in range(3)]
    state = run.state_dict()
    assert state == {"epoch": 1, "batches_yielded": 3}

    resumed = _loader(40, batch_size=6, shuffle=True, seed=2)
    resumed.load_state_dict(state)
    assert head + _ids(resumed) == epoch1
    assert resumed.state_dict() == {"epoch": 2, "batches_yielded": 0}


def test_loader_shards_are_disjoint_and_equal():
    n, world = 103, 4
    shards = [_loader(n, batch_size=8, shuffle=True, seed=1, rank=r, world_size=world) for r in range(world)]
    ids = [sum(_ids(s), []) for s in shards]
    assert all(len(i) == n // world for i in ids)
    assert all(len(s) == -(-(n // world) // 8) for s in shards)
    union = set().union(*map(set, ids))
    assert len(union) == world * (n // world)  # pairwise disjoint
    # next epoch: still disjoint, different order
    ids2 = [sum(_ids(s), []) for s in shards]
    assert len(set().union(*map(set, ids2))) == world * (n // world) and ids2 != ids
    with pytest.raises(ValueError):
        _loader(n, batch_size=8, rank=4, world_size=4)


def test_loader_transform_and_device():
    calls = []

    def double(xb):
        calls.append(xb.shape[0])
        return xb * 2

    loader = _loader(6, batch_size=4, transform=double).to("meta")
    assert loader.device.type == "meta"
    xb, yb = next(iter(loader))
    assert xb.device.type == "meta" and yb.device.type == "meta" and calls == [4]


# ---------------------------------------------------------------------------------- augmentation
def test_random_crop_flip_shape_crops_and_flips():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) + 1.0  # strictly positive: padding shows up as zeros
    out = RandomCropFlip(padding=2, seed=0)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    n_flipped = n_shifted = 0
    for i in range(64):
        matches = []
        for flip in (False, True):
            src = x[i].flip(-1) if flip else x[i]
            padded = torch.nn.functional.pad(src, (2, 2, 2, 2))
            for dy in range(5):
                for dx in range(5):
                    if torch.equal(padded[:, dy : dy + 8, dx : dx + 8], out[i]):
                        matches.append((flip, dy, dx))
        assert matches, f"sample {i} is not a crop of the (flipped) padded input"
        flip, dy, dx = matches[0]
        n_flipped += flip
        n_shifted += (dy, dx) != (2, 2)
    assert 15 <= n_flipped <= 49  # p = 0.5 per sample
    assert n_shifted >= 48  # 24 of 25 offsets move the window
    assert (out == 0).any()


def test_random_crop_flip_deterministic_and_pure_flip():
    x = torch.rand(16, 3, 8, 8)
    a, b = RandomCropFlip(seed=1), RandomCropFlip(seed=1)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(RandomCropFlip(seed=2)(x), RandomCropFlip(seed=1)(x))
    flipped = RandomCropFlip(padding=0, flip_p=1.0)(x)
    assert torch.equal(flipped, x.flip(-1))
    assert torch.equal(RandomCropFlip(padding=0, flip_p=0.0)(x), x)


def test_mnist_shift_translates_on_black_background(mnist_raw):
    dm = _with_raw(MNISTDataModule(shift=2, subset=256, seed=3), mnist_raw)
    assert MNISTDataModule().train_transform() is None  # shift=0: no augmentation
    dm.setup("fit")
    x = dm.data_train[0][:64]
    black = -0.1307 / 0.3081
    assert x.min().item() == pytest.approx(black, abs=1e-6)
    out = dm.train_transform()(x)
    n_shifted = 0
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2), value=black)
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(padded[:, dy:dy + 28, dx:dx + 28], out[i])]
        # a shifted copy on black (never mirrored: digits are not symmetric)
        assert hits, f"sample {i} is not a translate of its image"
        n_shifted += (2, 2) not in hits
    assert n_shifted >= 48
    assert out.min().item() == pytest.approx(black, abs=1e-6)  # no grey border from padding
    plain = _with_raw(MNISTDataModule(shift=1, normalize=False), mnist_raw).train_transform()
    assert plain.fill == 0.0 and plain.padding == 1
    for bad in (-1, 15, 1.5, True):
        with pytest.raises(ValueError, match=r"data.shift=.* must be an integer pixel count in 0..14"):
            MNISTDataModule(shift=bad)


# ------------------------------------------------------------------------- on-disk fixture sets
def test_cifar10_from_fixture(cifar10_root):
    root, (x_train, y_train, x_test, y_test) = cifar10_root
    dm = CIFAR10DataModule(root=str(root), val_size=20, normalize=False, download=False, batch_size=16)
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10
    dm.setup()
    assert len(dm.data_train[0]) == 100 and len(dm.data_val[0]) == 20
    xs, ys = dm.data_test
    assert xs.shape == (40, 3, 32, 32)
    assert torch.equal(xs.mul(255).round().to(torch.uint8), torch.from_numpy(x_test))  # CHW layout
    assert ys.tolist() == y_test.tolist()
    # every training image is one of the fixture's 5 batches, with its label
    train_idx, val_idx = dm.split_indices(120)
    assert torch.equal(dm.data_train[1], torch.from_numpy(y_train)[train_idx].long())
    assert isinstance(dm.train_transform(), RandomCropFlip)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 3, 32, 32) and yb.shape == (16,)
    normalized = CIFAR10DataModule(root=str(root), val_size=20, download=False)
    normalized.setup()
    mean = torch.tensor(CIFAR10DataModule.mean).view(3, 1, 1)
    std = torch.tensor(CIFAR10DataModule.std).view(3, 1, 1)
    assert torch.allclose(normalized.data_test[0], (xs - mean) / std, atol=1e-5)
    assert CIFAR10DataModule(root=str(root), augment=False).train_transform() is None


def test_cifar100_from_fixture(cifar100_root):
    root, (x_train, y_train, x_test, y_test) = cifar100_root
    dm = CIFAR100DataModule(root=root, val_size=30, subset=50, normalize=False, download=False)
    assert dm.num_classes == 100 and dm.input_shape == (3, 32, 32)
    dm.setup()
    assert [len(d[0]) for d in (dm.data_train, dm.data_val, dm.data_test)] == [50, 30, 50]
    assert dm.data_test[1].tolist() == y_test.tolist()  # fine labels
    assert torch.equal(dm.data_test[0].mul(255).round().to(torch.uint8), torch.from_numpy(x_test))
    full = CIFAR100DataModule(root=root, val_size=30, download=False)
    full.setup()
    labels = torch.cat([full.data_train[1], full.data_val[1]])
    assert labels.max().item() == 99 and torch.bincount(labels).min().item() >= 1


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_fixture(tmp_path, compress):
    x_train, y_train, x_test, y_test = write_fashion_mnist(tmp_path, compress=compress)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=20, normalize=False, download=False)
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10
    dm.setup()
    assert len(dm.data_train[0]) == 100 and len(dm.data_val[0]) == 20
    assert dm.data_test[0].shape == (40, 1, 28, 28)
    assert torch.equal(
        dm.data_test[0][:, 0].mul(255).round().to(torch.uint8), torch.from_numpy(x_test)
    )
    assert dm.data_test[1].tolist() == y_test.tolist()


@pytest.mark.parametrize(
    "cls, folder",
    [
        (CIFAR10DataModule, "cifar-10-batches-py"),
        (CIFAR100DataModule, "cifar-100-python"),
        (FashionMNISTDataModule, "FashionMNIST"),
    ],
)
def test_missing_files_download_disabled(tmp_path, cls, folder):
    root = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        cls(root=str(root), download=False).setup()
    msg = str(info.value)
    assert "\n" not in msg
    assert f"data.root='{root}'" in msg and folder in msg and "data.root=<dir>" in msg


@pytest.mark.parametrize("name", ["CIFAR10", "CIFAR100", "FashionMNIST"])
def test_missing_files_download_fails_offline(tmp_path, monkeypatch, name):
    import torchvision.datasets

    seen_timeouts = []

    def offline(*args, **kwargs):
        seen_timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, name, offline)
    cls = {"CIFAR10": CIFAR10DataModule, "CIFAR100": CIFAR100DataModule}.get(name, FashionMNISTDataModule)
    before = socket.getdefaulttimeout()
    dm = cls(root=str(tmp_path), download=True, download_timeout=7.0)
    with pytest.raises(DataError) as info:
        dm.setup()
    msg = str(info.value)
    assert "\n" not in msg
    assert f"data.root='{tmp_path}'" in msg
    assert "the download failed (it needs internet access)" in msg
    assert seen_timeouts == [7.0]  # download ran under a socket timeout ...
    assert socket.getdefaulttimeout() == before  # ... that was restored afterwards
    with pytest.raises(DataError):
        dm.prepare_data()


# ----------------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_classes_and_learnability():
    dm = SyntheticDataModule(input_shape=[1, 8, 8], num_classes=3, num_samples=600,
                             num_test_samples=300, val_size=100, batch_size=50)
    assert dm.input_shape == (1, 8, 8) and dm.num_classes == 3
    dm.setup()
    xt, yt = dm.data_train
    assert xt.shape == (500, 1, 8, 8) and dm.data_test[0].shape == (300, 1, 8, 8)
    assert sorted(torch.unique(yt).tolist()) == [0, 1, 2]
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (50, 1, 8, 8) and yb.dtype == torch.long
    # learnable: nearest class mean (fit on train) is far above chance on test
    means = torch.stack([xt[yt == k].mean(0) for k in range(3)]).flatten(1)
    xs, ys = dm.data_test
    pred = torch.cdist(xs.flatten(1), means).argmin(1)
    assert (pred == ys).float().mean().item() > 0.9
    # seeded
    again = SyntheticDataModule(input_shape=[1, 8, 8], num_classes=3, num_samples=600,
                                num_test_samples=300, val_size=100)
    again.setup()
    assert torch.equal(again.data_train[0], xt)
    other = SyntheticDataModule(input_shape=[1, 8, 8], num_classes=3, num_samples=600,
                                num_test_samples=300, val_size=100, seed=1)
    other.setup()
    assert not torch.equal(other.data_test[0], xs)
    flat = SyntheticDataModule(input_shape=[16], num_classes=4, num_samples=50, num_test_samples=10, val_size=10)
    flat.setup()
    assert flat.data_train[0].shape == (40, 16) and flat.data_train[1].max().item() < 4


def test_setup_moves_to_trainer_device_and_shards(monkeypatch):
    dm = SyntheticDataModule(input_shape=[1, 4, 4], num_samples=100, num_test_samples=20, val_size=20)
    calls = []
    original = dm.load_raw
    monkeypatch.setattr(dm, "load_raw", lambda: calls.append(1) or original())
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("meta")),
        global_rank=1,
        world_size=2,
        current_epoch=3,
    )
    dm.setup("fit")
    dm.setup("validate")
    assert calls == [1]  # loaded once
    assert dm.data_train[0].device.type == "meta" and dm.data_test[1].device.type == "meta"
    loader = dm.train_dataloader()
    assert (loader.rank, loader.world_size, loader.epoch, loader.num_samples) == (1, 2, 3, 40)
    val = dm.val_dataloader()
    assert (val.shuffle, val.world_size, val.batch_size, val.transform) == (False, 1, 1000, None)


# ------------------------------------------------------------------------------------- configs
def init_params(cls):
    """Keyword parameters of ``cls`` and of the data-module bases its ``**common`` reaches; a
    subclass's default wins."""
    params = {}
    for c in reversed(cls.__mro__):
        if "__init__" in vars(c) and issubclass(c, TensorDataModule):
            for n, p in inspect.signature(c.__init__).parameters.items():
                if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    params[n] = p
    return params


def test_every_data_config_instantiates(cifar10_root, cifar100_root, fashion_root):
    roots = {"cifar10": cifar10_root[0], "cifar100": cifar100_root[0], "fashion_mnist": fashion_root[0]}
    names = sorted(p.stem for p in CONF_DATA.glob("*.yaml")  # the folder and the user's own
                   if p.stem not in ("imagefolder", "custom"))  # modules: test_imagefolder.py
    for name in names:
        cfg = OmegaConf.load(CONF_DATA / f"{name}.yaml")
        assert OmegaConf.to_container(cfg)["seed"] == "${seed}"  # follows the run seed
        cfg.seed = 0
        cls = get_class(cfg._target_)
        assert cfg._target_ == f"prunelab.data.{cls.__name__}" and cls.name == name
        # every constructor argument (the class's own and the base's it forwards) is spelled
        # out, with the constructor's default
        params = init_params(cls)
        keys = set(cfg) - {"_target_"}
        assert keys == set(params), name
        for key in keys - {"root"}:
            value = OmegaConf.to_object(cfg)[key]
            default = params[key].default
            assert (list(value) == list(default)) if isinstance(value, list) else value == default, (name, key)
        if name in roots:
            assert cfg.root == "data"
            cfg.root = str(roots[name])
            cfg.val_size = 20
        dm = instantiate(cfg)
        assert isinstance(dm, cls)
        assert isinstance(dm.input_shape, tuple) and len(dm.input_shape) == 3
        if name == "mnist":
            assert cfg.root is None
            continue  # loading the bundled MNIST is covered above
        if name == "synthetic":
            dm.num_samples, dm.num_test_samples = 200, 50
            dm.val_size = 20
        dm.setup()
        xb, yb = next(iter(dm.train_dataloader()))
        assert tuple(xb.shape[1:]) == dm.input_shape
        assert 0 <= yb.min() and yb.max() < dm.num_classes


# ------------------------------------------------------------------------ Lightning integration
class _Recorder(pl.LightningModule):
    """Tiny classifier that records a fingerprint of every training batch it sees."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3 * 32 * 32, 10)
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, batch_idx, round(x.sum().item(), 3), y.tolist()))
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(root, max_epochs, tmp, ckpt_path=None, every_step=False):
    dm = CIFAR10DataModule(root=str(root), val_size=24, batch_size=24, download=False, seed=4)
    model = _Recorder()
    callbacks = []
    if every_step:
        callbacks.append(pl.callbacks.ModelCheckpoint(
            dirpath=tmp, filename="{step}", every_n_train_steps=1, save_top_k=-1))
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=every_step, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        default_root_dir=tmp,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def test_lightning_fit_and_resume_reproduce_batches(cifar10_root, tmp_path):
    """Epochs reshuffle (and re-augment) under Lightning, and resuming from end-of-epoch or
    mid-epoch checkpoints continues with exactly the batches of an uninterrupted run."""
    root = cifar10_root[0]
    full = _fit(root, 3, tmp_path, every_step=True)  # 96 train samples / 24 = 4 batches per epoch
    assert [(e, b) for e, b, *_ in full] == [(e, b) for e in range(3) for b in range(4)]
    by_epoch = [[s[2:] for s in full if s[0] == e] for e in range(3)]
    assert by_epoch[0] != by_epoch[1] != by_epoch[2]
    for step in (4, 6):  # step 4 ends epoch 0; step 6 is in the middle of epoch 1
        resumed = _fit(root, 3, tmp_path / f"r{step}", ckpt_path=tmp_path / f"step={step}.ckpt")
        assert resumed == full[step:], step
