"""Adversarial training (train.adversarial, robust.AdversarialBatches): the mixed batch, when it
starts, that the attack leaves the weights alone and pruned weights stay zero; autoattack's
optional package (eval.adversarial=autoattack); the CLI run records its settings."""

import functools
import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from helpers import FAST, compose_config, run_cli

from prunelab.errors import ConfigError
from prunelab.module import ClassifierModule
from prunelab.pruning import Magnitude, OneShot, PruningCallback
from prunelab.robust import AdversarialBatches, adversarial_accuracy, check_settings
from test_callback import TinyNet, trainer_for
from test_steps_per_batch import StepChecker, loader


class Normalized:
    """A data module's normalization (robust._bounds reads normalize, mean, std)."""

    normalize, mean, std, num_classes = True, (0.5,), (0.25,), 2


def batch(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 1, 4, 4, generator=g)
    return (pixels - 0.5) / 0.25, torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
@pytest.mark.parametrize("fraction,n,k", [(0.3, 10, 3), (0.5, 7, 4), (1.0, 6, 6)])
def test_mixed_batch_has_round_fraction_rows_perturbed_within_epsilon(attack, fraction, n, k):
    torch.manual_seed(0)
    net = TinyNet().train()
    x, y = batch(n)
    adv = AdversarialBatches(Normalized(), attack, 0.1, steps=3, fraction=fraction)
    mixed = adv(SimpleNamespace(net=net, current_epoch=0, global_step=5), x, y)
    assert mixed.shape == x.shape and net.training  # the mode is restored
    pixels, clean = mixed * 0.25 + 0.5, x * 0.25 + 0.5
    moved = (pixels - clean).flatten(1).abs().amax(1)
    assert (moved[:k] > 0.05).all() and torch.equal(mixed[k:], x[k:])  # exactly k rows changed
    assert moved.max() <= 0.1 + 1e-6  # within epsilon, in pixel units
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6  # inside [0, 1]


def test_no_adversarial_rows_before_start_epoch():
    net, (x, y) = TinyNet(), batch()
    adv = AdversarialBatches(Normalized(), "pgd", 0.1, steps=2, fraction=1.0, start_epoch=2)
    for epoch, changed in ((0, False), (1, False), (2, True), (3, True)):
        out = adv(SimpleNamespace(net=net, current_epoch=epoch, global_step=epoch * 7), x, y)
        assert (not torch.equal(out, x)) == changed, epoch


def test_pgd_starts_are_seeded_by_run_seed_and_step():
    net, (x, y) = TinyNet(), batch()
    adv = AdversarialBatches(Normalized(), "pgd", 0.1, steps=1, alpha=0.01, fraction=1.0, seed=3)

    def at(step):
        return adv(SimpleNamespace(net=net, current_epoch=0, global_step=step), x, y)

    assert torch.equal(at(4), at(4)) and not torch.equal(at(4), at(5))


class Spy:
    """The module's batch transform, checking around each call that the attack changed no weight
    and no gradient, and recording what it returned."""

    def __init__(self, inner):
        self.inner, self.calls, self.inputs, self.outputs = inner, 0, [], []

    def __call__(self, module, x, y):
        before = {n: p.detach().clone() for n, p in module.net.named_parameters()}
        grads = {n: None if p.grad is None else p.grad.clone()
                 for n, p in module.net.named_parameters()}
        out = self.inner(module, x, y)
        for n, p in module.net.named_parameters():
            assert torch.equal(p.detach(), before[n]), n
            assert (p.grad is None and grads[n] is None) or torch.equal(p.grad, grads[n]), n
        self.calls += 1
        self.inputs.append(x.detach().clone())
        self.outputs.append(out.detach().clone())
        return out


@pytest.mark.parametrize("k", [1, 3])  # plain batches and data.steps_per_batch groups of 3
def test_training_steps_on_the_mixed_batch_and_pruned_weights_stay_zero(tmp_path, k):
    torch.manual_seed(0)
    net = TinyNet()
    seen = []  # what the network's training forward passes got
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone())
                                  if m.training and torch.is_grad_enabled() else None)
    cb = PruningCallback(Magnitude(), OneShot(0), sparsity=0.8)
    checker = StepChecker(cb)
    spy = Spy(AdversarialBatches(Normalized(), "pgd", 0.1, steps=2, fraction=0.5, start_epoch=1))
    module = ClassifierModule(net, 2, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                              batch_transform=spy)
    trainer = trainer_for(tmp_path, [cb, checker], epochs=2, enable_checkpointing=False,
                          limit_val_batches=0)
    trainer.fit(module, loader(k))
    assert trainer.global_step == 14 and spy.calls == 14 and checker.steps == 14
    assert checker.violations == 0  # masked weights exactly zero after every optimizer step
    # the loss is the mixed batch's: each step's training forward got the transform's output
    assert len(seen) == 14 and all(torch.equal(a, b) for a, b in zip(seen, spy.outputs))
    for step, (x, out) in enumerate(zip(spy.inputs, spy.outputs)):
        n = x.shape[0]
        k = 0 if step < 7 else round(0.5 * n)  # start_epoch=1: from the 8th step on
        changed = (out != x).flatten(1).any(1)
        assert changed.tolist() == [True] * k + [False] * (n - k), step
    assert "batch_transform" not in module.hparams


def check(*overrides):
    cfg = compose_config("train", *overrides)
    check_settings(cfg)
    return cfg


@pytest.mark.parametrize("overrides,message", [
    (["train.adversarial=cw"], "train.adversarial='cw'; allowed: fgsm, pgd, null"),
    (["train.adversarial=pgd", "train.epsilon=1.5"],
     "train.epsilon=1.5 is outside (0, 1] (pixel units: a fraction of the [0, 1] pixel range)"),
    (["train.adversarial=pgd", "train.epsilon=0"], "train.epsilon=0 is outside (0, 1]"),
    (["eval.adversarial=pgd", "eval.epsilon=1.5"], "eval.epsilon=1.5 is outside (0, 1]"),
    (["train.adversarial=fgsm", "train.fraction=1.2"],
     "train.fraction=1.2 is outside (0, 1] (the share of each training batch replaced by "
     "adversarial examples)"),
    (["train.adversarial=pgd", "train.steps=0"], "train.steps=0 must be an integer >= 1"),
    (["train.adversarial=pgd", "train.alpha=-1"], "train.alpha=-1 must be a number > 0"),
    (["train.adversarial=pgd", "epochs=0"], "train.adversarial=pgd with epochs=0: post-training "
                                            "pruning trains on no batch"),
    (["train.adversarial=pgd", "epochs=5", "train.start_epoch=5"],
     "train.start_epoch=5 is not before the run's end (epochs=5): no batch would be "
     "adversarial; allowed: 0..4"),
])
def test_bad_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as exc:
        check(*overrides)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_defaults_and_good_settings_pass():
    check()
    check("train.adversarial=pgd", "train.epsilon=1", "train.fraction=1", "train.start_epoch=9")


def test_autoattack_without_its_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import fails, find_spec gives None
    with pytest.raises(ConfigError) as exc:
        check("eval.adversarial=autoattack")
    assert str(exc.value) == ("eval.adversarial=autoattack needs the torchattacks package (its "
                              "AutoAttack): pip install torchattacks (or pip install "
                              "'prunelab[robust]'); allowed without it: fgsm, pgd, null")
    net, (x, y) = TinyNet(), batch()
    with pytest.raises(ConfigError, match="needs the torchattacks package"):
        adversarial_accuracy(net, [(x, y)], Normalized(), "autoattack", 0.1)


def test_autoattack_uses_torchattacks_api_with_the_data_normalization(monkeypatch):
    made = []

    class FakeAutoAttack:  # torchattacks.AutoAttack's API: (model, norm, eps, version, n_classes,
        def __init__(self, model, norm, eps, version, n_classes, seed):  # seed); __call__
            made.append(self)
            self.args = {"norm": norm, "eps": eps, "version": version, "n_classes": n_classes}
            self.normalization = None

        def set_normalization_used(self, mean, std):
            self.normalization = (mean, std)

        def __call__(self, images, labels):  # normalized in, normalized out: every pixel + eps
            m, s = torch.tensor(self.normalization[0]), torch.tensor(self.normalization[1])
            return (((images * s + m) + self.args["eps"]).clamp(0, 1) - m) / s

    fake = types.ModuleType("torchattacks")
    fake.AutoAttack = FakeAutoAttack
    monkeypatch.setitem(sys.modules, "torchattacks", fake)
    net, (x, y) = TinyNet().eval(), batch(16)
    y = net(x).argmax(1)
    res = adversarial_accuracy(net, [(x, y)], Normalized(), "autoattack", 0.2)
    assert made[0].args == {"norm": "Linf", "eps": 0.2, "version": "standard", "n_classes": 2}
    assert made[0].normalization == ([0.5], [0.25])
    assert res["attack"] == "autoattack" and res["clean_acc"] == 1.0 and res["samples"] == 16


def test_cli_run_with_fgsm_training_records_its_settings(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("prunelab.train", [*FAST, "data.subset=200", "epochs=2", "pruner=magnitude",
                                      "sparsity=0.5", "schedule=oneshot", "schedule.at_epoch=0",
                                      "measure.size=false", "train.adversarial=fgsm",
                                      "train.start_epoch=1", "eval.adversarial=fgsm",
                                      "eval.batches=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["adversarial_training"] == {"attack": "fgsm", "epsilon": 0.1, "steps": 1,
                                           "alpha": None, "fraction": 0.5, "start_epoch": 1}
    assert res["adversarial"]["attack"] == "fgsm" and res["adversarial"]["epsilon"] == 0.1
    assert res["sparsity"]["global"] == pytest.approx(0.5, abs=1e-3)  # pruned weights stayed 0
    assert "adv. training" in proc.stdout


def test_sweep_report_puts_clean_and_attacked_accuracy_side_by_side(tmp_path):
    from prunelab.analysis.sweep import collect, markdown, summarize

    trained = {"attack": "pgd", "epsilon": 0.1, "steps": 7, "alpha": None, "fraction": 0.5,
               "start_epoch": 3}
    for i, (at, acc, adv) in enumerate([(None, 0.98, 0.40), (trained, 0.97, 0.85)]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps({
            "data": "mnist", "model": "lenet5", "pruner": "magnitude", "target_sparsity": 0.9,
            "test_acc": acc, "sparsity": {"global": 0.9, "per_layer": {}}, "wall_time_s": 1.0,
            "adversarial_training": at, "group_hash": "same",  # only train.adversarial differs
            "adversarial": {"attack": "pgd", "epsilon": 0.1, "acc": adv, "clean_acc": acc}}))
    rows = summarize(collect(tmp_path))
    assert sorted(r["adv_train"] for r in rows) == ["no", "pgd eps=0.1 frac=0.5 from epoch 3"]
    md = markdown(rows)
    assert "| adv. training | test acc | std | attack | adv acc |" in md
    assert "| no | 98.00 | 0.00 | pgd eps=0.1 | 40.00 |" in md
    assert "| pgd eps=0.1 frac=0.5 from epoch 3 | 97.00 | 0.00 | pgd eps=0.1 | 85.00 |" in md
