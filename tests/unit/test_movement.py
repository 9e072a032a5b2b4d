"""Movement pruning: the score is -sum over every step of W * dL/dW, hard = top-v per tensor,
soft = one global threshold; hard also with per-tensor shares from pruner.distribution; its
schedule must start after some fine-tuning."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.module import ClassifierModule
from prunelab.pruning import Gradual, OneShot, PruningCallback
from prunelab.pruning.distribution import kept_counts
from prunelab.pruning.methods import Movement
from prunelab.pruning.params import PruningConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 20)
        self.fc2 = nn.Linear(20, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Movements(pl.Callback):
    """An independent tally of -W * dL/dW before every optimizer step, frozen at each event."""

    def __init__(self, cb):
        self.cb, self.sum, self.at_event = cb, None, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = self.cb.masks.params
        if self.sum is None:
            self.sum = {n: torch.zeros_like(p) for n, p in params.items()}
        for n, p in params.items():
            self.sum[n] -= p.detach() * p.grad

    def on_train_epoch_start(self, trainer, pl_module):  # runs before the pruning callback's
        if self.sum is not None:
            self.at_event[trainer.current_epoch] = {n: s.clone() for n, s in self.sum.items()}


@pytest.mark.parametrize("variant", ["hard", "soft", "erk"])
def test_masks_keep_the_weights_that_moved_away_from_zero(tmp_path, variant):
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 10, generator=g)
    data = DataLoader(TensorDataset(x, (x[:, :3].argmax(1))), batch_size=16)
    method = (Movement(variant="hard", distribution="erk") if variant == "erk"
              else Movement(variant=variant))
    cb = PruningCallback(method, OneShot(2), sparsity=0.6)
    tally = Movements(cb)
    module = ClassifierModule(Net(), 3, optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
    pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False,
               enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=str(tmp_path), callbacks=[tally, cb],
               num_sanity_val_steps=0).fit(module, data)
    scores = tally.at_event[2]
    keep = {n: cb.masks[n] for n in cb.masks}
    if variant in ("hard", "erk"):  # each tensor: its own top 40 %, or its ERK share
        counts = kept_counts({n: tuple(s.shape) for n, s in scores.items()}, 0.6, "erk")
        assert variant == "hard" or len(set(c / scores[n].numel() for n, c in counts.items())) > 1
        for n, s in scores.items():
            kept = round(0.4 * s.numel()) if variant == "hard" else counts[n]
            assert int(keep[n].sum()) == kept
            assert s[keep[n]].min() >= s[~keep[n]].max() - 1e-6
    else:  # one threshold over all tensors
        kept = torch.cat([scores[n][keep[n]] for n in scores])
        gone = torch.cat([scores[n][~keep[n]] for n in scores])
        assert gone.numel() == round(0.6 * (kept.numel() + gone.numel()))
        assert kept.min() >= gone.max() - 1e-6
    assert cb.pruner.describe()["method_report"] == {"variant": method.variant}
    assert cb.pruner.describe()["scope"] == {"hard": "layer", "soft": "global", "erk": "erk"}[variant]


def test_a_first_event_before_any_step_and_an_unknown_variant_are_refused():
    with pytest.raises(PruningConfigError, match="its first pruning epoch is 0, before any step"):
        Movement().check_run(None, OneShot(0), 0.5)
    Movement().check_run(None, Gradual(0, 2), 0.5)  # its epoch-0 event is at 0 %: allowed
    with pytest.raises(PruningConfigError, match="pruner.variant='medium' is not one of hard, soft"):
        Movement(variant="medium")
    with pytest.raises(PruningConfigError, match="pruner.distribution=erk sets each weight "
                       "tensor's share of the budget, but pruner.variant=soft selects by one "
                       "global threshold; allowed: pruner.variant=hard with a distribution"):
        Movement(variant="soft", distribution="erk")
