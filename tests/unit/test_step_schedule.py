"""schedule.every_steps: the cubic ramp with an event every N optimizer steps (Zhu & Gupta 2017
prune every 100-1,000 steps), exact at each event, and refused for methods that gather scores."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.module import ClassifierModule
from prunelab.pruning import GlobalMagnitude, Gradual, PruningCallback, Taylor
from prunelab.pruning.params import PruningConfigError


def test_step_events_follow_the_cubic_ramp_to_the_end_epoch():
    ev = Gradual(start_epoch=1, end_epoch=3, every_steps=5).step_events(0.8, steps_per_epoch=12)
    assert list(ev) == [12, 17, 22, 27, 32, 36]
    assert ev[12] == 0.0 and ev[36] == 0.8
    assert ev[22] == pytest.approx(0.8 * (1 - (1 - 10 / 24) ** 3))
    assert all(a < b for a, b in zip(ev.values(), list(ev.values())[1:]))


class Record(pl.Callback):
    """Zeros among the pruned weights after every optimizer step (hooked after the pruning's)."""

    def __init__(self, cb):
        self.cb, self.zeros = cb, []

    def on_train_start(self, trainer, pl_module):
        trainer.optimizers[0].register_step_post_hook(self._post)

    def _post(self, opt, args, kwargs):
        self.zeros.append(sum(int((p == 0).sum()) for p in self.cb.masks.params.values()))


def test_a_run_prunes_at_exactly_those_steps_to_exactly_those_targets(tmp_path):
    pl.seed_everything(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
    cb = PruningCallback(GlobalMagnitude(), Gradual(0, 2, every_steps=4), sparsity=0.75)
    rec = Record(cb)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(192, 16, generator=g)
    data = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=16)  # 12 steps/epoch
    module = ClassifierModule(net, 2, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
    pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False,
               enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=str(tmp_path), callbacks=[cb, rec],
               num_sanity_val_steps=0).fit(module, data)
    total = sum(p.numel() for p in cb.masks.params.values())
    events = cb.step_events
    assert list(events) == [0, 4, 8, 12, 16, 20, 24]
    assert cb.steps_done == list(events) and cb.at_target()
    assert cb.events_done == []  # no epoch-level events
    for step, zeros in enumerate(rec.zeros, start=1):  # after step s: the last event <= s
        target = max(t for s, t in events.items() if s <= step)
        assert zeros == round(target * total), step
    assert cb.state_dict()["steps_done"] == list(events)


def test_methods_that_gather_scores_before_an_event_are_refused():
    with pytest.raises(PruningConfigError, match="schedule.every_steps prunes between optimizer "
                                                 "steps, but pruner=taylor gathers scores"):
        PruningCallback(Taylor(), Gradual(1, 3, every_steps=10), sparsity=0.5)
