"""Accuracy under attack: perturbations stay in the epsilon ball and the pixel range."""

import pytest
import torch
from torch import nn

from prunelab.robust import _bounds, adversarial_accuracy, fgsm, pgd


class NormalizedData:
    normalize = True
    mean = (0.5,)
    std = (0.25,)


def setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    pixels = torch.rand(32, 1, 4, 4)
    x = (pixels - 0.5) / 0.25
    y = net(x).argmax(1)  # labels the model gets right: clean accuracy 1
    return net, x, y


def test_fgsm_moves_each_pixel_by_epsilon_inside_the_valid_range():
    net, x, y = setup()
    unit, lo, hi = _bounds(NormalizedData(), x.shape[1:], x.device)
    adv = fgsm(net, x, y, 0.1 * unit, lo, hi)
    delta_pixels = (adv - x) * 0.25
    assert delta_pixels.abs().max() <= 0.1 + 1e-6
    assert bool((adv >= lo - 1e-6).all() and (adv <= hi + 1e-6).all())
    inside = (x > lo + 0.4 / 0.25) & (x < hi - 0.4 / 0.25)  # pixels far from 0 and 1 move fully
    assert torch.allclose(delta_pixels.abs()[inside], torch.full_like(delta_pixels[inside], 0.1),
                          atol=1e-5)


def test_pgd_stays_in_the_ball_and_hurts_at_least_as_much_as_fgsm():
    net, x, y = setup()
    unit, lo, hi = _bounds(NormalizedData(), x.shape[1:], x.device)
    adv = pgd(net, x, y, 0.2 * unit, lo, hi, 10, 0.05 * unit, torch.Generator().manual_seed(0))
    assert ((adv - x) * 0.25).abs().max() <= 0.2 + 1e-6
    loader = [(x, y)]
    f = adversarial_accuracy(net, loader, NormalizedData(), "fgsm", 0.2)
    p = adversarial_accuracy(net, loader, NormalizedData(), "pgd", 0.2, steps=10)
    assert f["clean_acc"] == 1.0 and p["acc"] <= f["acc"] < 1.0
    assert f["samples"] == 32


def test_bad_attack_settings():
    net, x, y = setup()
    with pytest.raises(ValueError, match="eval.adversarial='cw'; allowed: fgsm, pgd"):
        adversarial_accuracy(net, [(x, y)], NormalizedData(), "cw", 0.1)
    with pytest.raises(ValueError, match=r"eval.epsilon=0 is outside \(0, 1\] \(pixel units"):
        adversarial_accuracy(net, [(x, y)], NormalizedData(), "fgsm", 0)
    with pytest.raises(ValueError, match=r"eval.epsilon=1.5 is outside \(0, 1\]"):
        adversarial_accuracy(net, [(x, y)], NormalizedData(), "pgd", 1.5)
