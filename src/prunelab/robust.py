"""Accuracy under attack, and adversarial training: are pruned models more fragile?

``python -m prunelab.train ... eval.adversarial=fgsm eval.epsilon=0.1`` measures, after training,
the test accuracy of the final (best) model on inputs perturbed by FGSM (Goodfellow et al. 2015)
or PGD (Madry et al. 2018; ``eval.steps`` steps of ``eval.alpha``, random start) within an
L-infinity ball of radius ``eval.epsilon``; ``eval.adversarial=autoattack`` runs AutoAttack
(Croce & Hein 2020) as the ``torchattacks`` package implements it (the optional extra
``pip install 'prunelab[robust]'``; the ``autoattack`` package itself is not on PyPI). Epsilon is
in pixel units ([0, 1] images): for normalized data sets it is divided by each channel's std,
and the perturbed images are kept inside the valid pixel range.

``train.adversarial=fgsm|pgd`` (:class:`AdversarialBatches`) trains on mixed batches: from
``train.start_epoch`` on, the first ``round(train.fraction * batch)`` rows of every training
batch are replaced by adversarial examples of the network at that step, made by the same
:func:`perturb` the evaluation uses (Madry et al. 2018 train on adversarial examples only;
``fraction=1`` is theirs). The attack's gradients are taken with respect to the input only
(``torch.autograd.grad``), so it never touches the weights or their ``.grad``; the pruning
callback's masks hold as before. The attack runs with the network in **eval mode** (BatchNorm
running statistics, no dropout), then the mode is restored: in train mode every attack step
would move the BatchNorm running statistics towards the attack's intermediate iterates (``steps``
extra updates per optimizer step), and training then attacks the network the evaluation
attacks. (Madry's reference code attacks in train mode, batch statistics; with eval mode the
attack is weaker in the first epochs, while the running statistics still lag.)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import TYPE_CHECKING, Any

from prunelab.config import check_int
from prunelab.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: the checks below run before it loads
    import torch
    from torch import nn

ATTACKS = ("fgsm", "pgd")  # built in; what train.adversarial allows
EVAL_ATTACKS = (*ATTACKS, "autoattack")  # autoattack: the optional torchattacks package
AUTOATTACK_PACKAGE = "torchattacks"


def _check_epsilon(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{name}={value!r} is not a number; allowed: a number in (0, 1] "
                          f"(pixel units: a fraction of the [0, 1] pixel range)")
    if not 0 < value <= 1:
        raise ConfigError(f"{name}={value!r} is outside (0, 1] (pixel units: a fraction of the "
                          f"[0, 1] pixel range)")
    return float(value)


def _check_alpha(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, Real)
                              or not value > 0):
        raise ConfigError(f"{name}={value!r} must be a number > 0 (pixel units) or null "
                          f"(2.5 * epsilon / steps)")


def check_settings(cfg: Mapping) -> None:
    """``eval.*`` and ``train.*`` (adversarial training) checked before any heavy import: a bad
    value is one :class:`ConfigError` line naming it and what is allowed."""
    ev = cfg.get("eval") or {}
    attack = ev.get("adversarial")
    if attack not in (None, *EVAL_ATTACKS):
        raise ConfigError(f"eval.adversarial={attack!r}; allowed: {', '.join(EVAL_ATTACKS)}, null")
    if attack is not None:
        _check_epsilon("eval.epsilon", ev.get("epsilon"))
        check_int("eval.steps", ev.get("steps"), 1)
        _check_alpha("eval.alpha", ev.get("alpha"))
        if attack == "autoattack" and importlib.util.find_spec(AUTOATTACK_PACKAGE) is None:
            raise ConfigError(f"eval.adversarial=autoattack needs the {AUTOATTACK_PACKAGE} package "
                              f"(its AutoAttack): pip install {AUTOATTACK_PACKAGE} (or pip install "
                              f"'prunelab[robust]'); allowed without it: fgsm, pgd, null")
    tr = cfg.get("train") or {}
    attack = tr.get("adversarial")
    if attack not in (None, *ATTACKS):
        raise ConfigError(f"train.adversarial={attack!r}; allowed: {', '.join(ATTACKS)}, null")
    if attack is None:
        return
    _check_epsilon("train.epsilon", tr.get("epsilon"))
    check_int("train.steps", tr.get("steps"), 1)
    _check_alpha("train.alpha", tr.get("alpha"))
    fraction = tr.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
        raise ConfigError(f"train.fraction={fraction!r} is outside (0, 1] (the share of each "
                          f"training batch replaced by adversarial examples)")
    start, epochs = check_int("train.start_epoch", tr.get("start_epoch"), 0), cfg.get("epochs")
    if epochs == 0:
        raise ConfigError(f"train.adversarial={attack} with epochs=0: post-training pruning "
                          f"trains on no batch; allowed: epochs >= 1, or train.adversarial=null")
    if isinstance(epochs, int) and start >= epochs:
        raise ConfigError(f"train.start_epoch={start} is not before the run's end (epochs="
                          f"{epochs}): no batch would be adversarial; allowed: 0..{epochs - 1}")


def training_settings(cfg: Mapping) -> dict[str, Any] | None:
    """``train.*`` as the run uses it (``alpha`` resolved), or None without adversarial
    training: what ``results.json`` records as ``adversarial_training``."""
    tr = cfg.get("train") or {}
    if not tr.get("adversarial"):
        return None
    attack, eps, steps = str(tr["adversarial"]), float(tr["epsilon"]), int(tr["steps"])
    alpha = tr.get("alpha")
    return {"attack": attack, "epsilon": eps, "steps": steps if attack == "pgd" else 1,
            "alpha": (float(alpha) if alpha is not None else 2.5 * eps / steps)
            if attack == "pgd" else None,
            "fraction": float(tr["fraction"]), "start_epoch": int(tr["start_epoch"])}


def _bounds(dm: Any, shape: Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """(per-channel scale of one pixel unit, lower and upper input bounds) in the model's input
    space."""
    import torch

    c = int(shape[0])
    view = (1, c) + (1,) * (len(shape) - 1)
    mean = getattr(dm, "mean", ()) if getattr(dm, "normalize", False) else ()
    if mean:
        m = torch.tensor(dm.mean, device=device).view(view)
        s = torch.tensor(dm.std, device=device).view(view)
        return 1.0 / s, (0.0 - m) / s, (1.0 - m) / s
    one = torch.ones(view, device=device)
    if getattr(dm, "name", "") == "synthetic" or not hasattr(dm, "mean"):
        return one, -float("inf") * one, float("inf") * one  # unbounded inputs
    return one, 0.0 * one, one


def fgsm(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, lo: torch.Tensor,
         hi: torch.Tensor) -> torch.Tensor:
    import torch

    from prunelab.losses import classification_loss

    x = x.clone().requires_grad_(True)
    loss = classification_loss(net(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return torch.max(torch.min(x + eps * grad.sign(), hi), lo).detach()


def pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, lo: torch.Tensor,
        hi: torch.Tensor, steps: int, alpha: torch.Tensor, generator: torch.Generator
        ) -> torch.Tensor:
    import torch

    from prunelab.losses import classification_loss

    noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device)
    adv = torch.max(torch.min(x + eps * noise, hi), lo)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        loss = classification_loss(net(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv + alpha * grad.sign()
        adv = torch.max(torch.min(adv, x + eps), x - eps)
        adv = torch.max(torch.min(adv, hi), lo)
    return adv.detach()


def autoattack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, dm: Any, epsilon: float,
               lo: torch.Tensor, hi: torch.Tensor, seed: int) -> torch.Tensor:
    """AutoAttack (L-infinity, standard version: APGD-CE, APGD-T, FAB-T, Square) of the
    ``torchattacks`` package, on images in [0, 1] (normalized data: its own normalization).
    Slow on a CPU (its Square attack queries the network thousands of times per image)."""
    try:
        import torchattacks
    except ImportError:
        raise ConfigError(f"eval.adversarial=autoattack needs the {AUTOATTACK_PACKAGE} package: "
                          f"pip install {AUTOATTACK_PACKAGE} (or pip install 'prunelab[robust]'); "
                          f"allowed without it: fgsm, pgd, null") from None
    if not bool(lo.isfinite().all() and hi.isfinite().all()):
        raise ConfigError(f"eval.adversarial=autoattack attacks images with pixels in [0, 1]; "
                          f"data={getattr(dm, 'name', '?')} is unbounded; allowed: fgsm, pgd")
    classes = int(getattr(dm, "num_classes", 10))
    atk = torchattacks.AutoAttack(net, norm="Linf", eps=float(epsilon), version="standard",
                                  n_classes=classes, seed=int(seed))
    if getattr(dm, "normalize", False) and getattr(dm, "mean", ()):
        atk.set_normalization_used(mean=list(dm.mean), std=list(dm.std))  # x stays normalized
    return atk(x, y).detach().to(x.dtype)


def perturb(net: nn.Module, x: torch.Tensor, y: torch.Tensor, dm: Any, attack: str,
            epsilon: float, steps: int = 10, alpha: float | None = None,
            generator: torch.Generator | None = None, seed: int = 0) -> torch.Tensor:
    """The one attack of evaluation and training: ``x`` (a batch in the model's input space)
    moved by ``attack`` (fgsm, pgd, autoattack) within ``epsilon`` pixel units of itself and
    inside the valid pixel range (:func:`_bounds`). PGD takes ``steps`` steps of ``alpha``
    pixel units (None: 2.5 * epsilon / steps) from a random start drawn from ``generator``.
    Gradients are taken with respect to the input only; the network's mode is the caller's."""
    import torch

    unit, lo, hi = _bounds(dm, x.shape[1:], x.device)
    eps = epsilon * unit
    if attack == "fgsm":
        return fgsm(net, x, y, eps, lo, hi)
    if attack == "pgd":
        step = (alpha if alpha is not None else 2.5 * epsilon / steps) * unit
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        return pgd(net, x, y, eps, lo, hi, steps, step, gen)
    if attack == "autoattack":
        return autoattack(net, x, y, dm, epsilon, lo, hi, seed)
    raise ConfigError(f"eval.adversarial={attack!r}; allowed: {', '.join(EVAL_ATTACKS)}, null")


class AdversarialBatches:
    """``train.adversarial``: the training batch transform of
    :class:`prunelab.module.ClassifierModule` (``batch_transform``). From epoch ``start_epoch``
    on, the first ``round(fraction * n)`` rows of each batch of ``n`` are replaced by
    :func:`perturb`'s adversarial examples of the network at that step (eval mode, restored
    after); the other rows, the labels and the order stay. PGD's random start is seeded by
    (seed, optimizer step): a resumed run draws the same starts."""

    def __init__(self, dm: Any, attack: str, epsilon: float, steps: int = 7,
                 alpha: float | None = None, fraction: float = 0.5, start_epoch: int = 0,
                 seed: int = 0):
        self.dm, self.attack, self.epsilon, self.steps = dm, attack, float(epsilon), int(steps)
        self.alpha = None if alpha is None else float(alpha)
        self.fraction, self.start_epoch, self.seed = float(fraction), int(start_epoch), int(seed)

    @classmethod
    def from_config(cls, cfg: Mapping, dm: Any) -> AdversarialBatches | None:
        """The transform ``train.*`` asks for (checked by :func:`check_settings`), or None."""
        tr = cfg.get("train") or {}
        if not tr.get("adversarial"):
            return None
        return cls(dm, str(tr.adversarial), tr.epsilon, tr.steps, tr.get("alpha"), tr.fraction,
                   tr.start_epoch, int(cfg.get("seed") or 0))

    def rows(self, n: int) -> int:
        """How many rows of a batch of ``n`` are adversarial."""
        return min(n, round(self.fraction * n))

    def __call__(self, module: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mixed batch for ``module`` (``.net``, ``.current_epoch``, ``.global_step``)."""
        import torch

        from prunelab.seeds import derive_seed

        k = self.rows(int(x.shape[0]))
        if int(module.current_epoch) < self.start_epoch or k == 0:
            return x
        net = module.net
        gen = None
        if self.attack == "pgd":
            gen = torch.Generator().manual_seed(derive_seed(self.seed, int(module.global_step)))
        was_training = net.training
        net.eval()
        try:
            adv = perturb(net, x[:k], y[:k], self.dm, self.attack, self.epsilon, self.steps,
                          self.alpha, gen)
        finally:
            net.train(was_training)
        return torch.cat((adv.to(x.dtype), x[k:]))


def adversarial_accuracy(net: nn.Module, loader: Iterable, dm: Any, attack: str, epsilon: float,
                         steps: int = 10, alpha: float | None = None,
                         max_batches: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Clean and attacked accuracy of ``net`` on (up to ``max_batches`` of) ``loader`` (a
    DataLoader or a list of ``(x, y)`` batches, read twice, in the same order: the clean
    accuracy is :func:`prunelab.metrics.accuracy` over the same batches)."""
    import torch

    from prunelab.data.loader import iter_batches
    from prunelab.metrics.accuracy import accuracy, correct_predictions

    if attack not in EVAL_ATTACKS:
        raise ConfigError(f"eval.adversarial={attack!r}; allowed: {', '.join(EVAL_ATTACKS)}, null")
    _check_epsilon("eval.epsilon", epsilon)
    was_training = net.training
    net.eval()
    param = next(net.parameters())
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    try:
        for i, (x, y) in enumerate(iter_batches(loader)):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(param.device, param.dtype), y.to(param.device)
            adv = perturb(net, x, y, dm, attack, epsilon, steps, alpha, gen, seed=seed + i)
            with torch.no_grad():
                correct += correct_predictions(net, adv, y)
            total += int(y.numel())
        clean = accuracy(net, loader, max_batches)
    finally:
        net.train(was_training)
    return {"attack": attack, "epsilon": float(epsilon),
            "steps": {"pgd": steps, "fgsm": 1}.get(attack), "alpha": (
                alpha if alpha is not None else 2.5 * epsilon / steps) if attack == "pgd" else None,
            "acc": correct / max(total, 1), "clean_acc": clean, "samples": total}
