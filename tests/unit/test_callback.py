"""PruningCallback on a tiny model with a real Lightning Trainer."""

import functools

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.module import ClassifierModule
from prunelab.pruning import (
    FinalSparsityCheckpoint,
    Gradual,
    Iterative,
    Dense,
    GlobalMagnitude,
    Magnitude,
    OneShot,
    PruningCallback,
    Random,
)


def make_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.fc1 = nn.Linear(24, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


OPTIMIZERS = {
    "sgd": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": functools.partial(torch.optim.Adam, lr=1e-2, weight_decay=1e-2),
    "adamw": functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=1e-1),
}


class ZeroChecker(pl.Callback):
    """Records, after every optimizer step, whether every masked weight is exactly zero."""

    def __init__(self, pruning: PruningCallback):
        self.pruning = pruning
        self.violations = 0
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.pruning.events_done:
            return
        for name, p in self.pruning.masks.params.items():
            self.violations += int((p[~self.pruning.masks[name]] != 0).sum())
        self.checked += 1


def trainer_for(tmp_path, callbacks, epochs, **kw):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), callbacks=callbacks,
                      num_sanity_val_steps=0, **kw)


def masked_forward(net, masks, x):
    """Reference forward computed with weight * mask explicitly."""
    w = {n: p.detach() * masks[n] for n, p in masks.params.items()}
    h = torch.relu(nn.functional.conv2d(x, w["conv.weight"], net.conv.bias))
    h = torch.relu(nn.functional.linear(h.flatten(1), w["fc1.weight"], net.fc1.bias))
    return nn.functional.linear(h, w["fc2.weight"], net.fc2.bias)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruned_weights_stay_zero_after_every_step(tmp_path, opt, scope):
    pl.seed_everything(0)
    net = TinyNet()
    method = Magnitude() if scope == "layer" else GlobalMagnitude()
    assert method.scope == scope
    cb = PruningCallback(method, Gradual(1, 3), sparsity=0.8)
    checker = ZeroChecker(cb)
    module = ClassifierModule(net, 2, optimizer=OPTIMIZERS[opt])
    trainer_for(tmp_path, [cb, checker], epochs=5).fit(module, make_data(), make_data(64, 1))
    assert checker.checked > 0 and checker.violations == 0
    zeros = sum(int((p == 0).sum()) for p in cb.masks.params.values())
    total = sum(p.numel() for p in cb.masks.params.values())
    assert zeros == round(0.8 * total) if scope == "global" else abs(zeros - 0.8 * total) <= 3
    x = torch.randn(8, 1, 4, 4)
    with torch.no_grad():
        assert torch.allclose(net(x), masked_forward(net, cb.masks, x), atol=1e-6)
    assert cb.events_done == [1, 2, 3] and cb.at_target()


def test_schedule_events_applied_at_epoch_starts(tmp_path):
    net = TinyNet()
    cb = PruningCallback(Magnitude(), Iterative(1, 3, 2), sparsity=0.75)
    seen = {}

    class Spy(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen[trainer.current_epoch] = round(cb.masks.sparsity, 3)

    module = ClassifierModule(net, 2, optimizer=OPTIMIZERS["sgd"])
    trainer_for(tmp_path, [cb, Spy()], epochs=4).fit(module, make_data())
    # geometric: 1 - 0.25 ** 0.5 = 0.5 after round 1, 0.75 after round 2
    assert seen[0] == 0.0 and seen[1] == pytest.approx(0.5, abs=0.01)
    assert seen[2] == pytest.approx(0.5, abs=0.01) and seen[3] == pytest.approx(0.75, abs=0.01)


def test_checkpoint_reload_and_resume_keep_zeros(tmp_path):
    pl.seed_everything(0)
    net = TinyNet()
    cb = PruningCallback(Magnitude(), Gradual(1, 3), sparsity=0.7, rewind_step=0)
    ckpt = FinalSparsityCheckpoint(dirpath=str(tmp_path / "ck"), filename="best",
                                   monitor="val/acc", mode="max", save_last=True)
    module = ClassifierModule(net, 2, optimizer=OPTIMIZERS["adam"])
    class StopAfter(pl.Callback):  # interrupt after epoch 2: in the middle of the schedule
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                trainer.should_stop = True

    trainer_for(tmp_path, [cb, ckpt, StopAfter()], epochs=6).fit(module, make_data(),
                                                                 make_data(64, 1))
    assert cb.events_done == [1, 2] and not cb.at_target()
    assert ckpt.best_model_path == ""  # no epoch at the final sparsity yet: no "best"
    last = tmp_path / "ck" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    cb_state = next(v for k, v in state["callbacks"].items() if "PruningCallback" in k)
    assert cb_state["events_done"] == [1, 2]
    assert cb_state["rewind_state"] is not None
    saved_masks = cb_state["masks"]
    for name, m in saved_masks.items():
        assert (state["state_dict"][f"net.{name}"][~m] == 0).all()

    # a fresh process: new objects, resume from last.ckpt to epoch 6
    pl.seed_everything(1)
    net2 = TinyNet()
    cb2 = PruningCallback(Magnitude(), Gradual(1, 3), sparsity=0.7, rewind_step=0)
    checker = ZeroChecker(cb2)
    ckpt2 = FinalSparsityCheckpoint(dirpath=str(tmp_path / "ck2"), filename="best",
                                    monitor="val/acc", mode="max", save_last=True)
    module2 = ClassifierModule(net2, 2, optimizer=OPTIMIZERS["adam"])
    trainer_for(tmp_path, [cb2, checker, ckpt2], epochs=6).fit(
        module2, make_data(), make_data(64, 1), ckpt_path=str(last))
    assert cb2.events_done == [1, 2, 3] and cb2.at_target()
    for name, m in saved_masks.items():  # masks only shrank
        assert not (cb2.masks[name] & ~m).any()
    assert checker.violations == 0 and checker.checked > 0
    assert torch.equal(cb2.rewind_state["fc1.weight"], cb_state["rewind_state"]["fc1.weight"])
    zeros = sum(int((p == 0).sum()) for p in cb2.masks.params.values())
    total = sum(p.numel() for p in cb2.masks.params.values())
    assert abs(zeros / total - 0.7) < 0.01
    # "best" only from epochs at the final sparsity, and its weights are masked
    assert ckpt2.best_model_path.endswith("best.ckpt")
    best = torch.load(ckpt2.best_model_path, weights_only=False)
    assert best["epoch"] >= 3
    for name in saved_masks:
        assert (best["state_dict"][f"net.{name}"][~cb2.masks[name]] == 0).all()


def test_oneshot_at_epoch_zero_prunes_before_training(tmp_path):
    net = TinyNet()
    cb = PruningCallback(Random(seed=3), OneShot(0), sparsity=0.5)
    module = ClassifierModule(net, 2, optimizer=OPTIMIZERS["sgd"])
    trainer_for(tmp_path, [cb], epochs=1).fit(module, make_data())
    for name, p in cb.masks.params.items():
        assert int((p == 0).sum()) == round(0.5 * p.numel())


def test_callback_rejects_bad_sparsity_and_dense_conflict():
    from prunelab.errors import UserError
    from prunelab.pruning import PruningConfigError

    # the same check and message as the command line's
    with pytest.raises(UserError, match=r"sparsity=1.0 is outside the allowed range \[0, 1\)"):
        PruningCallback(Magnitude(), OneShot(1), sparsity=1.0)
    with pytest.raises(UserError, match=r"sparsity='x' is not a number"):
        PruningCallback(Magnitude(), OneShot(1), sparsity="x")
    with pytest.raises(PruningConfigError, match="pruner=none cannot reach sparsity=0.5"):
        PruningCallback(Dense(), OneShot(1), sparsity=0.5)


def test_last_checkpoint_is_written_at_every_epoch_end_from_the_first(tmp_path):
    """A run killed before its final sparsity can resume; ``last`` is never epochs old (#14)."""
    seen = {}

    class Look(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            last = tmp_path / "ck" / "last.ckpt"
            seen[trainer.current_epoch] = (torch.load(last, weights_only=True)["epoch"]
                                           if last.exists() else None)

    pl.seed_everything(0)
    cb = PruningCallback(Magnitude(), Gradual(2, 4), sparsity=0.7)
    ckpt = FinalSparsityCheckpoint(dirpath=str(tmp_path / "ck"), filename="best",
                                   monitor="val/acc", mode="max", save_last=True, save_top_k=1)
    module = ClassifierModule(TinyNet(), 2, optimizer=OPTIMIZERS["adam"])
    trainer_for(tmp_path, [cb, ckpt, Look()], epochs=6).fit(module, make_data(), make_data(64, 1))
    assert seen == {0: None, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["epoch"] == 5
    best = torch.load(ckpt.best_model_path, weights_only=True)
    assert best["epoch"] >= 4  # "best" only among epochs at the final sparsity
