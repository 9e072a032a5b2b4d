"""Accuracy under attack: are pruned models more fragile?

``python -m prunelab.train ... eval.adversarial=fgsm eval.epsilon=0.1`` measures, after training,
the test accuracy of the final (best) model on inputs perturbed by FGSM (Goodfellow et al. 2015)
or PGD (Madry et al. 2018; ``eval.steps`` steps of ``eval.alpha``, random start) within an
L-infinity ball of radius ``eval.epsilon``. Epsilon is in pixel units ([0, 1] images): for
normalized data sets it is divided by each channel's std, and the perturbed images are kept
inside the valid pixel range.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.losses import classification_loss

ATTACKS = ("fgsm", "pgd")


def _bounds(dm: Any, shape: Sequence[int], device) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """(per-channel scale of one pixel unit, lower and upper input bounds) in the model's input
    space."""
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
    x = x.clone().requires_grad_(True)
    loss = classification_loss(net(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return torch.max(torch.min(x + eps * grad.sign(), hi), lo).detach()


def pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, lo: torch.Tensor,
        hi: torch.Tensor, steps: int, alpha: torch.Tensor, generator: torch.Generator
        ) -> torch.Tensor:
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


def adversarial_accuracy(net: nn.Module, loader: Iterable, dm: Any, attack: str, epsilon: float,
                         steps: int = 10, alpha: float | None = None,
                         max_batches: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Clean and attacked accuracy of ``net`` on (up to ``max_batches`` of) ``loader`` (a
    DataLoader or a list of ``(x, y)`` batches, read twice, in the same order: the clean
    accuracy is :func:`prunelab.metrics.accuracy` over the same batches)."""
    from prunelab.data.loader import iter_batches
    from prunelab.metrics.accuracy import accuracy, correct_predictions

    if attack not in ATTACKS:
        raise ConfigError(f"eval.adversarial={attack!r}; allowed: {', '.join(ATTACKS)} (or null)")
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon <= 0:
        raise ConfigError(f"eval.epsilon={epsilon!r} must be a number > 0 (pixel units)")
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
            unit, lo, hi = _bounds(dm, x.shape[1:], x.device)
            eps = epsilon * unit
            if attack == "fgsm":
                adv = fgsm(net, x, y, eps, lo, hi)
            else:
                step = (alpha if alpha is not None else 2.5 * epsilon / steps) * unit
                adv = pgd(net, x, y, eps, lo, hi, steps, step, gen)
            with torch.no_grad():
                correct += correct_predictions(net, adv, y)
            total += int(y.numel())
        clean = accuracy(net, loader, max_batches)
    finally:
        net.train(was_training)
    return {"attack": attack, "epsilon": float(epsilon), "steps": steps if attack == "pgd" else 1,
            "acc": correct / max(total, 1), "clean_acc": clean, "samples": total}
