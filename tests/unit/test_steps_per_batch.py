"""data.steps_per_batch: Lightning gets groups of batches and the module takes one optimizer step
per batch. Training must be step-for-step the same as with plain batches: same weights, masks
re-applied after every step, the rewind snapshot after exactly k steps."""

import functools

import pytest
import pytorch_lightning as pl
import torch

from prunelab.data import BatchGroups, TensorBatchLoader, is_batch_group, iter_batches
from prunelab.module import ClassifierModule
from prunelab.pruning import Gradual, Magnitude, OneShot, PruningCallback, PruningMethod, Taylor
from prunelab.pruning.methods import SET, RigL
from test_callback import TinyNet, trainer_for

N, BS = 200, 32  # 7 batches per epoch: groups of 3 are 3, 3, 1


def loader(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    base = TensorBatchLoader(x, y, batch_size=BS, shuffle=True, seed=seed)
    return BatchGroups(base, k) if k > 1 else base


def test_groups_cover_the_same_batches_in_order():
    plain = [b for b in loader(1)]
    groups = list(loader(3))
    assert len(loader(3)) == 3 and [len(g) for g in groups] == [3, 3, 1]
    assert all(is_batch_group(g) for g in groups) and not is_batch_group(plain[0])
    flat = list(iter_batches(loader(3)))
    assert len(flat) == len(plain) == 7
    for (xa, ya), (xb, yb) in zip(flat, plain):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_group_state_resumes_mid_epoch():
    full = list(iter_batches(loader(3)))
    grouped = loader(3)
    it = iter(grouped)
    next(it)
    state = grouped.state_dict()
    assert state == {"epoch": 0, "batches_yielded": 3, "steps_per_batch": 3}
    fresh = loader(3)
    fresh.load_state_dict(state)
    rest = list(iter_batches(fresh))
    assert len(rest) == 4
    assert all(torch.equal(a[0], b[0]) for a, b in zip(rest, full[3:]))


def test_mid_epoch_state_of_another_group_size_is_refused():
    grouped = loader(3)
    it = iter(grouped)
    next(it)
    state = grouped.state_dict()
    with pytest.raises(ValueError, match=r"data.steps_per_batch=2, but the checkpoint stopped "
                                         r"mid-epoch with data.steps_per_batch=3"):
        loader(2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"data.steps_per_batch=1, but"):
        loader(1).load_state_dict(state)
    plain = loader(1)
    it = iter(plain)
    next(it)
    with pytest.raises(ValueError, match=r"data.steps_per_batch=3, but .* with data.steps_per_"
                                         r"batch=1"):
        loader(3).load_state_dict(plain.state_dict())
    # at an epoch boundary any group size resumes
    loader(3).load_state_dict({"epoch": 1, "batches_yielded": 0})


def test_bad_group_size():
    with pytest.raises(ValueError, match=r"steps_per_batch=0 must be an integer >= 1"):
        BatchGroups(loader(1), 0)


class StepChecker(pl.Callback):
    """After every optimizer step (a post-hook registered after PruningCallback's), counts the
    masked weights that are not exactly zero."""

    def __init__(self, pruning: PruningCallback):
        self.pruning, self.steps, self.violations = pruning, 0, 0

    def on_train_start(self, trainer, pl_module):
        trainer.optimizers[0].register_step_post_hook(self._check)

    def _check(self, opt, args, kwargs):
        self.steps += 1
        masks = self.pruning.masks
        if self.pruning.events_done:
            self.violations += sum(int((p[~masks[n]] != 0).sum()) for n, p in masks.params.items())


def train(tmp_path, k: int, pruner: PruningMethod, schedule, epochs: int = 3, rewind_step=None,
          **trainer_kw):
    pl.seed_everything(0)
    net = TinyNet()
    cb = PruningCallback(pruner, schedule, sparsity=0.8, rewind_step=rewind_step)
    checker = StepChecker(cb)
    opt = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-2)
    module = ClassifierModule(net, 2, optimizer=opt)
    trainer = trainer_for(tmp_path / f"k{k}", [cb, checker], epochs=epochs,
                          enable_checkpointing=False, **trainer_kw)
    trainer.fit(module, loader(k))
    return net, cb, checker, trainer


@pytest.mark.parametrize("method", ["magnitude", "taylor"])
def test_grouped_training_is_step_for_step_the_same(tmp_path, method):
    cls = {"magnitude": Magnitude, "taylor": Taylor}[method]
    ref_net, ref_cb, ref_chk, ref_tr = train(tmp_path, 1, cls(), Gradual(1, 2), rewind_step=4)
    net, cb, chk, tr = train(tmp_path, 3, cls(), Gradual(1, 2), rewind_step=4)
    assert tr.global_step == ref_tr.global_step == 21 and chk.steps == 21
    assert chk.violations == 0 and ref_chk.violations == 0
    for (name, a), b in zip(net.state_dict().items(), ref_net.state_dict().values()):
        assert torch.equal(a, b), name
    assert cb.rewind_state is not None
    for name, a in cb.rewind_state.items():
        assert torch.equal(a, ref_cb.rewind_state[name]), name
    zeros = sum(int((p == 0).sum()) for p in cb.masks.params.values())
    assert zeros > 0.79 * sum(p.numel() for p in cb.masks.params.values())


@pytest.mark.parametrize("cls", [SET, RigL])
def test_grouped_training_moves_dynamic_masks_at_the_same_steps(tmp_path, cls):
    """SET and RigL move their masks after every delta_t-th optimizer step, also inside a group
    (data.steps_per_batch=auto groups MNIST runs): the same masks, weights and update count."""
    method = lambda: cls(delta_t=2, drop_fraction=0.4, t_end=1.0)  # noqa: E731
    ref_net, ref_cb, ref_chk, _ = train(tmp_path, 1, method(), OneShot(0))
    net, cb, chk, tr = train(tmp_path, 3, method(), OneShot(0))
    assert tr.global_step == 21 and chk.violations == 0 == ref_chk.violations
    assert cb.pruner.updates == ref_cb.pruner.updates >= 9
    for name in cb.masks:
        assert torch.equal(cb.masks[name], ref_cb.masks[name]), name
    for (name, a), b in zip(net.state_dict().items(), ref_net.state_dict().values()):
        assert torch.equal(a, b), name


def test_rewind_snapshot_is_taken_after_exactly_k_steps(tmp_path):
    """With groups of 3, step 4 falls inside the second group: the snapshot must still be the
    weights after 4 steps (those of a 4-step run), not after 3 or 6."""
    _, cb, _, _ = train(tmp_path, 3, Magnitude(), OneShot(0), epochs=3, rewind_step=4)
    pl.seed_everything(0)
    net = TinyNet()
    ref = PruningCallback(Magnitude(), OneShot(0), sparsity=0.8)
    opt = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-2)
    trainer = trainer_for(tmp_path / "ref", [ref], epochs=3, max_steps=4,
                          enable_checkpointing=False)
    trainer.fit(ClassifierModule(net, 2, optimizer=opt), loader(1))
    assert trainer.global_step == 4
    for name, a in net.state_dict().items():
        assert torch.equal(cb.rewind_state[name], a), name


def test_group_size_is_not_part_of_the_result_hash():
    from prunelab.results import config_hash

    cfg = {"data": {"batch_size": 64, "steps_per_batch": 1}, "sparsity": 0.9}
    other = {"data": {"batch_size": 64, "steps_per_batch": 8}, "sparsity": 0.9}
    assert config_hash(cfg) == config_hash(other)
    assert config_hash(cfg) != config_hash({**cfg, "data": {"batch_size": 32, "steps_per_batch": 1}})


def test_max_steps_inside_a_group_stops_at_that_step(tmp_path):
    ref, _, _, ref_tr = train(tmp_path, 1, Magnitude(), OneShot(0), max_steps=11)
    net, _, chk, tr = train(tmp_path, 3, Magnitude(), OneShot(0), max_steps=11)
    assert tr.global_step == ref_tr.global_step == 11 and chk.steps == 11
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("k", [1, 3])
def test_rewind_to_step_0_holds_the_weights_pruned_at_epoch_0(tmp_path, k):
    pl.seed_everything(0)
    init = TinyNet().state_dict()
    _, cb, _, _ = train(tmp_path, k, Magnitude(), OneShot(0), epochs=1, rewind_step=0)
    for name, mask in cb.masks.as_dict().items():
        w = cb.rewind_state[name]
        assert torch.equal(w, init[name] * mask), name  # the initial weights, masked
    assert any(not bool(m.all()) for m in cb.masks.as_dict().values())


# -- data.steps_per_batch=auto (the configs' default), resolved at assembly ----------------------
def resolved(*overrides, model=None):
    """(group size, the datamodule's) for the train config with ``overrides``, resolved for
    ``model`` (default: the config's)."""
    from helpers import compose_config

    from prunelab.assemble import data_and_model, resolve_steps_per_batch

    cfg = compose_config("train", "data.subset=300", *overrides)
    dm, net, _ = data_and_model(cfg)
    if model is not None:
        net = model
    return resolve_steps_per_batch(cfg, net, tuple(dm.input_shape)), dm.steps_per_batch


def test_auto_is_the_default_and_groups_single_device_runs_of_small_networks():
    from helpers import compose_config

    from prunelab.assemble import AUTO_STEPS_PER_BATCH

    for data in ("mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic"):
        assert compose_config("train", f"data={data}").data.steps_per_batch == "auto"
    assert AUTO_STEPS_PER_BATCH > 1
    assert resolved() == (AUTO_STEPS_PER_BATCH, AUTO_STEPS_PER_BATCH)  # LeNet-300-100
    assert resolved("model=lenet5")[0] == AUTO_STEPS_PER_BATCH


@pytest.mark.parametrize("overrides", [
    ["trainer=ddp", "trainer.devices=2"],           # several devices (DDP)
    ["trainer.devices=2"],
    ["+trainer.num_nodes=2"],
    ["+trainer.limit_train_batches=3"],             # trainer settings that count batches
    ["+trainer.limit_train_batches=0.5"],
    ["+trainer.limit_train_batches=1"],             # an int 1 is one batch, not the epoch
    ["+trainer.val_check_interval=0.25"],
    ["+trainer.fast_dev_run=true"],
    ["+trainer.overfit_batches=2"],
])
def test_auto_is_1_where_grouping_would_change_the_run(overrides):
    assert resolved(*overrides) == (1, 1)


def test_auto_keeps_whole_epoch_settings_grouped():
    from prunelab.assemble import AUTO_STEPS_PER_BATCH

    assert resolved("+trainer.limit_train_batches=1.0", "+trainer.val_check_interval=1.0",
                    "+trainer.max_steps=20")[0] == AUTO_STEPS_PER_BATCH


def test_auto_is_1_for_a_large_network():
    from prunelab.assemble import AUTO_MAX_MACS

    big = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, AUTO_MAX_MACS // 784 + 1))
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, AUTO_MAX_MACS // 784))
    assert resolved(model=big)[0] == 1
    assert resolved(model=small)[0] > 1


def test_an_explicit_group_size_is_kept():
    assert resolved("data.steps_per_batch=3") == (3, 3)
    assert resolved("data.steps_per_batch=1", "model=lenet5") == (1, 1)


@pytest.mark.parametrize("value", ["0", "-2", "eight", "2.5", "true"])
def test_a_bad_group_size_is_one_line_naming_it_and_what_is_allowed(value):
    from prunelab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        resolved(f"data.steps_per_batch={value}")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("data.steps_per_batch=")
    shown = msg.split(" ", 1)[0].split("=", 1)[1].strip("'")
    assert shown.lower() == value.lower()
    assert "allowed: auto" in msg and "1 (no groups)" in msg


def test_the_data_module_alone_takes_auto_as_1():
    from prunelab.data import MNISTDataModule

    assert MNISTDataModule(steps_per_batch="auto").steps_per_batch == 1
    with pytest.raises(ValueError, match="must be an integer >= 1 or auto"):
        MNISTDataModule(steps_per_batch="sometimes")


def test_auto_is_not_part_of_the_result_hash():
    from prunelab.results import config_hash

    cfg = {"data": {"batch_size": 64, "steps_per_batch": "auto"}, "sparsity": 0.9}
    assert config_hash(cfg) == config_hash({**cfg, "data": {"batch_size": 64,
                                                            "steps_per_batch": 1}})
