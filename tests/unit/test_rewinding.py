"""Rewinding between iterative pruning rounds (schedule.rewind=lr|weights): the learning rate and
weights that training continues from after each round, and an exact resume."""

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.module import ClassifierModule
from prunelab.pruning import FinalSparsityCheckpoint, Iterative, Magnitude, PruningCallback
from prunelab.pruning.params import PruningConfigError

EPOCHS = 6


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 24)
        self.fc2 = nn.Linear(24, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def _cosine_lrs(lr=0.1):
    """The learning rate of each epoch under cosine annealing over EPOCHS epochs."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    out = []
    for _ in range(EPOCHS):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


class Look(pl.Callback):
    """At every epoch start, after the pruning callback's event: the LR, weights, moments."""

    def __init__(self):
        self.seen = {}

    def on_train_epoch_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        self.seen[trainer.current_epoch] = {
            "lr": opt.param_groups[0]["lr"],
            "weights": {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()},
            "moments": len(opt.state)}


def _fit(tmp_path, rewind, epochs=EPOCHS, rewind_epoch=0, ckpt_dir=None, stop_after=None,
         ckpt_path=None):
    pl.seed_everything(0)
    net = Net()
    schedule = Iterative(start_epoch=2, end_epoch=4, rounds=2, rewind=rewind,
                         rewind_epoch=rewind_epoch)
    cb = PruningCallback(Magnitude(), schedule, sparsity=0.75)
    look = Look()
    extra = []
    if ckpt_dir is not None:
        extra.append(FinalSparsityCheckpoint(dirpath=str(ckpt_dir), filename="best",
                                             monitor="val/acc", mode="max", save_last=True))
    if stop_after is not None:
        class Stop(pl.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                if trainer.current_epoch == stop_after:
                    trainer.should_stop = True
        extra.append(Stop())
    module = ClassifierModule(
        net, 2, optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=EPOCHS))
    pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
               enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=str(tmp_path), callbacks=[cb, look, *extra],
               num_sanity_val_steps=0).fit(module, _data(), _data(32, 1), ckpt_path=ckpt_path)
    return net, cb, look.seen


def test_lr_rewinding_replays_the_last_epochs_of_the_schedule_after_each_round(tmp_path):
    cos = _cosine_lrs()
    _, cb, seen = _fit(tmp_path, "none")
    assert [seen[e]["lr"] for e in range(EPOCHS)] == pytest.approx(cos)
    _, cb, seen = _fit(tmp_path, "lr")
    assert cb.events_done == [2, 4]
    # round at 2: 2 epochs until the next round -> epochs 4, 5 of the schedule; at 4: 2 to the end
    expected = [cos[0], cos[1], cos[4], cos[5], cos[4], cos[5]]
    assert [seen[e]["lr"] for e in range(EPOCHS)] == pytest.approx(expected)


def test_weight_rewinding_restores_the_early_weights_masked_and_clears_moments(tmp_path):
    cos = _cosine_lrs()
    _, cb, seen = _fit(tmp_path, "weights", rewind_epoch=1)
    early = seen[1]["weights"]
    for e in (2, 4):  # right after each round
        assert seen[e]["moments"] == 0
        assert seen[e]["lr"] == pytest.approx(cos[1])
        for name, w in seen[e]["weights"].items():
            if name in cb.masks.params:  # the early weights where kept, zero where pruned
                assert torch.equal(w[w != 0], early[name][w != 0])
                assert (w == 0).sum() > (early[name] == 0).sum()
            else:
                assert torch.equal(w, early[name])
    assert seen[3]["moments"] > 0  # training went on with fresh moments


def test_a_rewinding_run_resumed_between_rounds_matches_the_uninterrupted_one(tmp_path):
    ref_net, _, _ = _fit(tmp_path / "a", "weights", rewind_epoch=1, ckpt_dir=tmp_path / "a")
    _fit(tmp_path / "b", "weights", rewind_epoch=1, ckpt_dir=tmp_path / "b", stop_after=2)
    net, cb, _ = _fit(tmp_path / "c", "weights", rewind_epoch=1, ckpt_dir=tmp_path / "c",
                      ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert cb.events_done == [2, 4]
    for (k, a), (_, b) in zip(ref_net.state_dict().items(), net.state_dict().items()):
        assert torch.equal(a, b), k


def test_rewinding_to_an_epoch_after_the_first_round_is_refused():
    with pytest.raises(PruningConfigError, match=r"schedule.rewind_epoch=2 must be before the "
                                                 r"first pruning round \(epoch 2\)"):
        PruningCallback(Magnitude(), Iterative(2, 4, 2, rewind="weights", rewind_epoch=2),
                        0.5).rewinder.check({2: 0.3, 4: 0.5})
    with pytest.raises(Exception, match="schedule.rewind='back' is not one of none, lr, weights"):
        Iterative(rewind="back")


def test_runs_written_before_the_new_keys_keep_their_identity():
    """pruner.distribution and schedule.rewind/rewind_epoch at their defaults leave a run's
    config hash as it was before they existed (a rerun sweep still skips its finished jobs)."""
    from prunelab.results import config_hash

    old = {"seed": 0, "pruner": {"_target_": "x.Magnitude", "scope": "layer"},
           "schedule": {"_target_": "x.Iterative", "rounds": 3}}
    new = {"seed": 0, "pruner": {"_target_": "x.Magnitude", "scope": "layer", "distribution": None},
           "schedule": {"_target_": "x.Iterative", "rounds": 3, "rewind": "none",
                        "rewind_epoch": 0}, "control": "scratch"}
    assert config_hash(old) == config_hash(new)
    new["schedule"]["rewind"] = "lr"
    assert config_hash(old) != config_hash(new)


def test_a_method_that_prunes_before_training_has_nothing_to_rewind():
    from prunelab.pruning import SNIP

    cb = PruningCallback(SNIP(), Iterative(2, 4, 2, rewind="weights", rewind_epoch=1), 0.5)
    assert not cb.rewinder.active
