"""ClassifierModule: epoch metrics, LR scheduling and clipping under manual optimization."""

import functools
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.module import ClassifierModule


def data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32)  # last batch has 4 samples


def trainer(epochs=1):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False)


def test_epoch_train_metrics_equal_sample_weighted_means():
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    loader = data()
    with torch.no_grad():
        x, y = loader.dataset.tensors
        logits = net(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    module = ClassifierModule(net, 3, optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    t = trainer()
    t.fit(module, loader)
    assert t.callback_metrics["train/loss"].item() == pytest.approx(loss, rel=1e-5)
    assert t.callback_metrics["train/acc"].item() == pytest.approx(acc, rel=1e-6)
    assert t.global_step == 4  # optimizer steps counted under manual optimization


def test_lr_scheduler_steps_per_epoch_and_clipping_applies():
    net = nn.Linear(5, 3)
    sched = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    module = ClassifierModule(net, 3, optimizer=functools.partial(torch.optim.SGD, lr=1.0),
                              lr_scheduler=sched, gradient_clip_val=1e-3)
    before = net.weight.detach().clone()
    trainer(epochs=2).fit(module, data())
    assert module.optimizers().param_groups[0]["lr"] == pytest.approx(0.25)
    # 8 steps with gradient norm clipped to 1e-3 and lr <= 1: the weights barely move
    assert (net.weight.detach() - before).norm() <= 8 * 1e-3 + 1e-6


def test_bad_scheduler_interval():
    with pytest.raises(ValueError, match="scheduler_interval='batch'; allowed: epoch, step"):
        ClassifierModule(nn.Linear(5, 3), 3, optimizer=torch.optim.SGD, scheduler_interval="batch")


def test_kd_loss_equals_the_hand_computed_value():
    import math

    from prunelab.distill import kd_loss

    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    y = torch.tensor([0])
    T, alpha = 2.0, 0.75

    def softmax(v):
        e = [math.exp(a) for a in v]
        return [a / sum(e) for a in e]

    ce = -math.log(softmax([2.0, 0.0, -1.0])[0])
    ps, pt = softmax([1.0, 0.0, -0.5]), softmax([0.5, 0.5, 0.0])
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
    expected = (1 - alpha) * ce + alpha * T * T * kl
    assert kd_loss(s, t, y, T, alpha).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(s, t, y, T, 0.0).item() == pytest.approx(ce, rel=1e-6)


def test_distillation_trains_against_the_frozen_teacher():
    from prunelab.distill import Distiller

    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = nn.Linear(4, 3)
    d = Distiller(teacher, temperature=3.0, alpha=1.0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss = d.loss(student(x), x, y)
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    # alpha = 1 and a student equal to the teacher: zero loss
    assert d.loss(teacher(x), x, y).item() == pytest.approx(0.0, abs=1e-6)


def test_a_diverged_loss_stops_the_run_with_a_clear_error():
    module = ClassifierModule(nn.Linear(4, 2), num_classes=2,
                              optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    module.on_train_epoch_start()
    module._train_sums.add_(torch.tensor([float("nan"), 1.0]))
    module._train_seen = 4
    with pytest.raises(FloatingPointError, match="training diverged"):
        module.on_train_epoch_end()


def test_a_blown_up_but_finite_loss_is_one_warning_kept_in_the_checkpoint(tmp_path, capsys):
    """Logits 1000x too large (lr 0: they stay so) average a finite cross-entropy far above
    ln(3): one warning for the run (not one per epoch), printed and kept through a checkpoint;
    the same network at its normal scale warns nothing."""
    def fit(scale, epochs=2):
        torch.manual_seed(0)
        net = nn.Linear(5, 3)
        with torch.no_grad():
            net.weight.mul_(scale)
        module = ClassifierModule(net, 3, optimizer=functools.partial(torch.optim.SGD, lr=0.0))
        t = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                       enable_progress_bar=False, enable_model_summary=False,
                       default_root_dir=str(tmp_path))
        t.fit(module, data())
        return module, t

    module, t = fit(1.0)
    assert module.training_warnings == [] and "warning" not in capsys.readouterr().err
    module, t = fit(1000.0)
    loss = t.callback_metrics["train/loss"].item()
    assert math.isfinite(loss) and loss > 10 * math.log(3)
    assert len(module.training_warnings) == 1
    msg = module.training_warnings[0]
    assert msg.startswith(f"the training loss averaged {loss:.4g} over epoch 0, ")
    assert msg.endswith("lower optimizer.lr or set module.gradient_clip_val")
    assert capsys.readouterr().err.count("prunelab: warning: the training loss averaged") == 1
    path = tmp_path / "m.ckpt"
    t.save_checkpoint(str(path))
    fresh = ClassifierModule(nn.Linear(5, 3), 3, optimizer=torch.optim.SGD)
    fresh.on_load_checkpoint(torch.load(path, weights_only=False))
    fresh.on_load_checkpoint(torch.load(path, weights_only=False))  # merged, not doubled
    assert fresh.training_warnings == [msg]


def test_a_runs_blow_up_warning_reaches_results_json(tmp_path, monkeypatch):
    """train.run puts the module's training warnings beside assembly's in results.json (here
    every epoch counts as a blow-up: the factor is 0)."""
    import json

    from helpers import FAST, compose_config

    from prunelab.train import run

    monkeypatch.setattr(ClassifierModule, "BLOWUP_FACTOR", 0.0)
    cfg = compose_config("train", *FAST, "pruner=none", "sparsity=0")
    run(cfg, tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    blowups = [w for w in res["warnings"] if w.startswith("the training loss averaged ")]
    assert len(blowups) == 1 and " over epoch 0, " in blowups[0]
