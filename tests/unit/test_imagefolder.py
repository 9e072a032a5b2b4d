"""Image folders (``data=imagefolder``): layouts, seeded splits, one-line errors, the training
order as a function of (seed, epoch) streamed or in memory, rank shards, exact resume under
Lightning; and ``build_datamodule``: any LightningDataModule by ``_target_``, its input shape
and classes inferred."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image

import prunelab.data as pdata
from prunelab.data import (
    BatchGroups,
    DataError,
    ImageFolderDataModule,
    StreamingBatchLoader,
    SyntheticDataModule,
    TensorBatchLoader,
    build_datamodule,
)
from prunelab.data.streaming import BatchCrops, ToFloat
from prunelab.errors import UserError

CONF = Path(pdata.__file__).resolve().parent.parent / "conf" / "data"
CLASSES = ("ant", "bee", "cat")


def write_images(folder: Path, classes=CLASSES, per_class=8, size=(12, 12), seed=0) -> None:
    """``per_class`` PNG files per class folder; class k is mostly colour channel k."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (*size, 3)).astype(np.uint8)
            img[..., k % 3] += 150
            Image.fromarray(img).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """``train/`` (3 classes x 8 images of 12x12) and ``val/`` (3 x 3), no ``test/``."""
    root = tmp_path_factory.mktemp("images")
    write_images(root / "train", per_class=8)
    write_images(root / "val", per_class=3, seed=1)
    return root


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    """One folder of class folders (3 x 10 images of 14x10: not square)."""
    root = tmp_path_factory.mktemp("flat")
    write_images(root, per_class=10, size=(14, 10))
    return root


def module(root, **kw) -> ImageFolderDataModule:
    args = {"image_size": 8, "batch_size": 5, "eval_batch_size": 4, "num_workers": 0,
            "in_memory": False, **kw}
    return ImageFolderDataModule(root=str(root), **args)


def batches(loader, epoch=None):
    if epoch is not None:
        loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v)
                                    for (x, y), (u, v) in zip(a, b))


# ------------------------------------------------------------------------------------ layouts
def test_train_val_layout_known_after_init_and_val_is_test(tree, capsys):
    dm = module(tree)
    assert (dm.input_shape, dm.num_classes, dm.classes) == ((3, 8, 8), 3, list(CLASSES))
    assert dm.samples is None  # nothing listed yet: models are built before setup
    dm.preload()
    assert [len(dm.samples[k]) for k in ("train", "val", "test")] == [24, 9, 9]
    assert dm.samples["test"] is dm.samples["val"]  # no test/: val is the test set too
    assert {Path(p).parent.name for p, _ in dm.samples["train"]} == set(CLASSES)
    assert all(CLASSES[y] == Path(p).parent.name for p, y in dm.samples["train"])
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and "24/9/9 train/val/test images of 3 classes" in line[0]
    assert "streamed from disk" in line[0] and "in_memory=false" in line[0]
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long


def test_test_folder_is_used_when_present(tmp_path):
    write_images(tmp_path / "train", per_class=4)
    write_images(tmp_path / "val", per_class=2)
    write_images(tmp_path / "test", per_class=1)
    dm = module(tmp_path)
    dm.setup()
    assert [len(dm.samples[k]) for k in ("train", "val", "test")] == [12, 6, 3]
    assert all("/test/" in p for p, _ in dm.samples["test"])


def test_one_folder_split_is_seeded_disjoint_and_complete(flat):
    def parts(seed, **kw):
        dm = module(flat, seed=seed, **kw)
        dm.setup()
        return {k: [p for p, _ in v] for k, v in dm.samples.items()}

    a = parts(0, val_size=0.2, test_size=3)
    assert [len(a[k]) for k in ("train", "val", "test")] == [21, 6, 3]  # 30 images
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted({*a["train"], *a["val"], *a["test"]})
    assert len({*a["train"], *a["val"], *a["test"]}) == 30
    assert parts(0, val_size=0.2, test_size=3) == a  # the same seed: the same split
    assert parts(1, val_size=0.2, test_size=3)["val"] != a["val"]
    b = parts(0, val_size=5, test_size=0)  # test_size=0: val is the test set too
    assert len(b["val"]) == 5 and b["test"] == b["val"]
    c = parts(0, val_size=5, test_size=0, subset=4)  # subset caps every split (seeded)
    assert [len(c[k]) for k in ("train", "val", "test")] == [4, 4, 4]
    assert set(c["train"]) <= set(b["train"])


def test_config_matches_the_constructor(tree):
    cfg = OmegaConf.load(CONF / "imagefolder.yaml")
    assert OmegaConf.to_container(cfg)["seed"] == "${seed}"
    cls = get_class(cfg._target_)
    assert cls is ImageFolderDataModule and cls.name == "imagefolder"
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    assert set(cfg) - {"_target_"} == set(params)
    cfg.seed = 0
    plain = OmegaConf.to_object(cfg)
    for key in set(params) - {"seed"}:
        default = params[key].default
        value = plain[key]
        assert (list(value) == list(default)) if isinstance(value, list) else value == default, key
    cfg.root, cfg.image_size, cfg.num_workers = str(tree), 8, 0
    dm = build_datamodule(cfg)
    assert isinstance(dm, ImageFolderDataModule) and dm.steps_per_batch == 1  # auto alone: 1


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["missing", "file", "no_classes", "no_images", "empty_class",
                                  "no_val", "mismatch", "unset", "split_too_big"])
def test_bad_folders_are_one_line(tmp_path, case):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "no_classes":
        root.mkdir()
        (root / "readme.txt").write_text("x")
        (root / ".hidden").mkdir()
    elif case == "no_images":
        for c in CLASSES:
            (root / "train" / c).mkdir(parents=True)
            (root / "val" / c).mkdir(parents=True)
            (root / "train" / c / "notes.txt").write_text("x")
    elif case == "empty_class":
        write_images(root / "train", per_class=2)
        write_images(root / "val", per_class=1)
        for p in (root / "train" / "bee").iterdir():
            p.unlink()
    elif case == "no_val":
        write_images(root / "train", per_class=1)
    elif case == "mismatch":
        write_images(root / "train", classes=("ant", "bee", "cat"), per_class=1)
        write_images(root / "val", classes=("ant", "bee", "dog"), per_class=1)
    elif case == "split_too_big":
        write_images(root, per_class=2)
    with pytest.raises(DataError) as err:
        if case == "unset":
            ImageFolderDataModule(root=None)
        else:
            module(root, val_size=3, test_size=3).setup()
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg
    expected = {"missing": "is not a directory", "file": "is not a directory",
                "no_classes": "no class folders", "no_images": "no images anywhere",
                "empty_class": "no images in the class folders bee", "no_val": "no val/",
                "mismatch": "only in train/: cat; only in val/: dog",
                "unset": "needs data.root=<dir>", "split_too_big": "leave no training images"}
    assert expected[case] in msg, msg


def test_bad_settings_name_the_key(tree):
    for key, value in (("train_crop", "center"), ("in_memory", "yes"), ("val_size", 1.5),
                       ("crop_fraction", 0.0), ("steps_per_batch", 0)):
        with pytest.raises(ValueError, match=f"data.{key}="):
            module(tree, **{key: value})


# ------------------------------------------------------------------- order, resume, shards
def test_training_order_is_a_function_of_seed_and_epoch(tree):
    a, b = module(tree, seed=3), module(tree, seed=3)
    la, lb = a.train_dataloader(), b.train_dataloader()
    assert isinstance(la, StreamingBatchLoader) and len(la) == 5  # 24 images, batches of 5
    e0, e1 = batches(la, 0), batches(la, 1)
    assert same(batches(lb, 1), e1) and same(batches(lb, 0), e0)  # any order of epochs
    assert not same(e0, e1)
    assert not same(batches(module(tree, seed=4).train_dataloader(), 0), e0)
    # Lightning's set_epoch on a fresh loader (a resumed run) gives that epoch's batches
    assert same(batches(module(tree, seed=3).train_dataloader(), 1), e1)
    # without Lightning every iteration is the next epoch
    fresh = module(tree, seed=3).train_dataloader()
    assert same(batches(fresh), e0) and same(batches(fresh), e1)
    # the same labels in the same order as TensorBatchLoader's permutation of seed + epoch
    order = TensorBatchLoader(torch.zeros(24), torch.zeros(24), 5, shuffle=True, seed=3).indices(1)
    labels = torch.tensor([y for _, y in a.samples["train"]])[order]
    assert torch.equal(torch.cat([y for _, y in e1]), labels)


def test_augmentation_does_not_depend_on_workers_or_the_global_generator(tree):
    one = module(tree, seed=5).train_dataloader()
    torch.manual_seed(123)
    ref = batches(one, 2)
    state = torch.get_rng_state()
    two = module(tree, seed=5, num_workers=2, persistent_workers=True).train_dataloader()
    torch.manual_seed(999)
    assert same(batches(two, 2), ref)
    assert same(batches(two, 2), ref)  # persistent workers, the same epoch again
    torch.manual_seed(123)
    batches(module(tree, seed=5).train_dataloader(), 2)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator left alone


def test_mid_epoch_state_resumes_with_the_remaining_batches(tree):
    loader = module(tree, seed=1).train_dataloader()
    full = batches(loader, 1)
    loader.set_epoch(1)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches_yielded": 2}
    other = module(tree, seed=1).train_dataloader()
    other.load_state_dict(state)
    assert same([(x, y) for x, y in other], full[2:])


def test_rank_shards_are_disjoint_and_equal(tree):
    seen = []
    for rank in (0, 1):
        dm = module(tree, seed=2, train_crop="none", hflip=False)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=4,
                                     strategy=SimpleNamespace(root_device=torch.device("cpu")))
        loader = dm.train_batches()
        assert (loader.rank, loader.world_size, loader.epoch, loader.num_samples) == (rank, 2, 4, 12)
        seen.append(torch.cat([x for x, _ in loader]))
        dm.steps_per_batch = 2
        with pytest.raises(ValueError, match="needs single-device training"):
            dm.train_dataloader()
    flat = [tuple(img.flatten().tolist()) for part in seen for img in part]
    assert len(set(flat)) == 24  # each image once over both ranks


def test_steps_per_batch_groups_the_same_batches(tree):
    dm = module(tree, seed=1)
    dm.steps_per_batch = 2  # what assembly sets for data.steps_per_batch=auto on a small net
    groups = dm.train_dataloader()
    assert isinstance(groups, BatchGroups) and len(groups) == 3
    groups.sampler.set_epoch(1)
    flat = [b for g in groups for b in g]
    assert same(flat, batches(module(tree, seed=1).train_dataloader(), 1))


# --------------------------------------------------------------------------------- in memory
def test_in_memory_auto_and_forced(tree, capsys):
    small = module(tree, in_memory="auto")
    small.setup()
    assert small.memory is True and small.tensors["train"][0].dtype == torch.uint8
    assert small.tensors["train"][0].shape == (24, 3, 9, 9)  # B = round(8 / 0.875)
    assert small.tensors["test"] is small.tensors["val"]
    assert "in memory (decoded once) (in_memory=auto" in capsys.readouterr().out
    big = module(tree, in_memory="auto", memory_fraction=1e-12)
    big.setup()
    assert big.memory is False and not big.tensors
    assert "streamed from disk" in capsys.readouterr().out
    assert isinstance(small.train_dataloader(), TensorBatchLoader)
    assert not isinstance(small.train_dataloader(), StreamingBatchLoader)


def test_in_memory_matches_streaming_on_eval_and_order(tree):
    mem, disk = module(tree, in_memory=True, seed=7), module(tree, in_memory=False, seed=7)
    for split in ("val", "test"):
        assert same(batches(getattr(mem, f"{split}_dataloader")()),
                    batches(getattr(disk, f"{split}_dataloader")()))  # bit for bit
    for epoch in (0, 1):
        ym = [y for _, y in batches(mem.train_dataloader(), epoch)]
        yd = [y for _, y in batches(disk.train_dataloader(), epoch)]
        assert all(torch.equal(a, b) for a, b in zip(ym, yd)) and len(ym) == len(yd) == 5
    # train_crop=none: the in-memory training batches are the centre crops
    none = module(tree, in_memory=True, seed=7, train_crop="none", hflip=False,
                  crop_fraction=1.0)
    xs = torch.cat([x for x, _ in batches(none.train_dataloader(), 0)])
    order = none.train_dataloader().indices(0)
    evals = ToFloat(none.mean, none.std)(none.tensors["train"][0][order])
    assert torch.equal(xs, evals)


def test_batch_crops_are_seeded_windows_and_flips():
    x = torch.arange(2 * 3 * 9 * 9, dtype=torch.float32).view(2, 3, 9, 9)
    to_float = ToFloat(None, None)
    crops = BatchCrops(6, "random", (0.08, 1.0), hflip=True, to_float=to_float)
    crops.manual_seed(4)
    out = crops(x) * 255
    crops.manual_seed(4)
    assert torch.equal(crops(x) * 255, out)
    assert out.shape == (2, 3, 6, 6)
    for i in range(2):  # each output is an exact 6x6 window of its input, maybe mirrored
        windows = [x[i, :, t:t + 6, s:s + 6] for t in range(4) for s in range(4)]
        assert any(torch.allclose(out[i], w) or torch.allclose(out[i], w.flip(-1))
                   for w in windows)
    rr = BatchCrops(6, "random_resized", (0.3, 1.0), hflip=False, to_float=to_float)
    rr.manual_seed(1)
    got = rr(x)
    assert got.shape == (2, 3, 6, 6) and torch.isfinite(got).all()


# ---------------------------------------------------------------------- Lightning: exact resume
class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3 * 8 * 8, 3)
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, batch_idx, round(x.sum().item(), 4), y.tolist()))
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(root, tmp, epochs, ckpt_path=None, every_step=False, **kw):
    dm = module(root, seed=4, **kw)
    model = _Recorder()
    callbacks = [pl.callbacks.ModelCheckpoint(dirpath=tmp, filename="{step}",
                                              every_n_train_steps=1, save_top_k=-1)
                 ] if every_step else []
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=every_step, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=tmp)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("in_memory", [False, True])
def test_lightning_fit_and_resume_reproduce_batches(tree, tmp_path, in_memory):
    full = _fit(tree, tmp_path, 3, every_step=True, in_memory=in_memory)  # 5 batches per epoch
    assert [(e, b) for e, b, *_ in full] == [(e, b) for e in range(3) for b in range(5)]
    assert full[0][2:] != full[5][2:]  # epochs reshuffle and re-augment
    for step in (5, 7):  # 5 ends epoch 0; 7 is in the middle of epoch 1
        resumed = _fit(tree, tmp_path / f"r{step}", 3, in_memory=in_memory,
                       ckpt_path=tmp_path / f"step={step}.ckpt")
        assert resumed == full[step:], step


# ------------------------------------------------------------------------- custom data modules
CUSTOM = '''
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset


class Named(TensorDataset):
    classes = ["x", "y", "z", "w"]


class MyDM(pl.LightningDataModule):
    def __init__(self, n=40, size=6, named=True, seed=0):
        super().__init__()
        self.n, self.size, self.named, self.seed = n, size, named, seed
        self.setups = 0

    def setup(self, stage=None):
        self.setups += 1
        g = torch.Generator().manual_seed(self.seed)
        y = torch.randint(0, 4, (self.n,), generator=g)
        x = torch.randn(self.n, 2, self.size, self.size, generator=g) + y.view(-1, 1, 1, 1)
        data = (Named if self.named else TensorDataset)(x, y)
        self.train, self.val = Subset(data, range(32)), Subset(data, range(32, self.n))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=8)

    def test_dataloader(self):
        return DataLoader(self.val, batch_size=8)


class WithFacts(MyDM):
    input_shape = [2, 6, 6]
    num_classes = 4


class TakesClasses(MyDM):
    def __init__(self, num_classes=2, **kw):
        super().__init__(**kw)
        self.num_classes = num_classes


class NotADataModule:
    def __init__(self, **kw):
        pass
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_dm.py").write_text(textwrap.dedent(CUSTOM))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_dm"


def node(**kw):
    return OmegaConf.create(kw)


def test_custom_datamodule_facts_inferred_or_read(user_module):
    dm = build_datamodule(node(_target_=f"{user_module}.MyDM", size=5))
    assert (dm.input_shape, dm.num_classes, dm.setups) == ((2, 5, 5), 4, 1)  # Subset -> classes
    read = build_datamodule(node(_target_=f"{user_module}.WithFacts"))
    assert (read.input_shape, read.num_classes, read.setups) == ((2, 6, 6), 4, 0)  # no setup
    given = build_datamodule(node(_target_=f"{user_module}.MyDM", named=False, num_classes=7))
    assert (given.input_shape, given.num_classes) == ((2, 6, 6), 7)  # +data.num_classes
    taken = build_datamodule(node(_target_=f"{user_module}.TakesClasses", num_classes=5))
    assert taken.num_classes == 5  # passed to the constructor that takes it


def test_own_data_configs_are_just_instantiated():
    cfg = OmegaConf.load(CONF / "synthetic.yaml")
    cfg.seed = 0
    dm = build_datamodule(cfg)
    assert isinstance(dm, SyntheticDataModule) and dm.data_train is None  # nothing loaded
    assert (dm.input_shape, dm.num_classes) == ((3, 32, 32), 10)


@pytest.mark.parametrize("case, expected", [
    ("unnamed", "the number of classes is unknown"),
    ("missing_module", "importing no_such_pkg.data failed: ModuleNotFoundError"),
    ("missing_class", "user_dm has no attribute Nope"),
    ("not_dm", "built a NotADataModule, not a pytorch_lightning.LightningDataModule"),
    ("no_target", "data._target_ is not set"),
])
def test_custom_datamodule_errors_are_one_line(user_module, case, expected):
    nodes = {"unnamed": node(_target_=f"{user_module}.MyDM", named=False),
             "missing_module": node(_target_="no_such_pkg.data.MyDM"),
             "missing_class": node(_target_=f"{user_module}.Nope"),
             "not_dm": node(_target_=f"{user_module}.NotADataModule"),
             "no_target": OmegaConf.load(CONF / "custom.yaml")}
    with pytest.raises(DataError) as err:
        build_datamodule(nodes[case])
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    if case == "unnamed":
        assert "+data.num_classes=<N>" in str(err.value)
