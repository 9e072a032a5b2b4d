"""Exact-number tests of scores, selection, masks and schedules."""

import pytest
import torch
from torch import nn

from prunelab.pruning import (
    Gradual,
    Iterative,
    MaskSet,
    Magnitude,
    OneShot,
    PruningConfigError,
    Random,
    ScheduleError,
    build_method,
    get_score,
    prunable_parameters,
    select_masks,
)
from prunelab.pruning.scores import ScoreContext


def ones(*shape):
    return torch.ones(*shape, dtype=torch.bool)


# -- scores -----------------------------------------------------------------------------------
def test_magnitude_score_is_abs():
    w = torch.tensor([[-3.0, 0.5], [2.0, -0.1]])
    assert torch.equal(get_score("magnitude")(w, ScoreContext("w")), w.abs())


def test_random_score_is_seeded():
    w = torch.zeros(5, 7)
    a = get_score("random")(w, ScoreContext("w", generator=torch.Generator().manual_seed(3)))
    b = get_score("random")(w, ScoreContext("w", generator=torch.Generator().manual_seed(3)))
    c = get_score("random")(w, ScoreContext("w", generator=torch.Generator().manual_seed(4)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_score_lists_known():
    with pytest.raises(KeyError, match="known: lamp, magnitude, random"):
        get_score("magnitud")


# -- selection --------------------------------------------------------------------------------
def test_layer_scope_prunes_lowest_exact_count():
    s = {"a": torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])}
    m = select_masks(s, {"a": ones(5)}, 0.4, "layer")
    assert m["a"].tolist() == [True, False, True, False, True]


@pytest.mark.parametrize("target", [0.0, 0.1, 0.33, 0.5, 0.9, 0.99])
def test_layer_scope_hits_target_per_tensor(target):
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(37, 11, generator=g), "b": torch.rand(3, 5, 3, 3, generator=g)}
    old = {k: ones(*v.shape) for k, v in scores.items()}
    new = select_masks(scores, old, target, "layer")
    for k, v in new.items():
        assert int((~v).sum()) == round(target * v.numel())


@pytest.mark.parametrize("target", [0.25, 0.5, 0.8, 0.95])
def test_global_scope_hits_target_and_keeps_largest(target):
    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(40, 10, generator=g) * 2, "b": torch.rand(100, generator=g)}
    old = {k: ones(*v.shape) for k, v in scores.items()}
    new = select_masks(scores, old, target, "global")
    total = sum(v.numel() for v in scores.values())
    pruned = sum(int((~v).sum()) for v in new.values())
    assert pruned == round(target * total)
    kept = torch.cat([scores[k][new[k]] for k in scores])
    dropped = torch.cat([scores[k][~new[k]] for k in scores])
    assert kept.min() >= dropped.max()


def test_global_scope_differs_from_layer_scope():
    scores = {"big": torch.arange(10.0) + 100, "small": torch.arange(10.0)}
    old = {k: ones(10) for k in scores}
    glob = select_masks(scores, old, 0.5, "global")
    assert glob["small"].sum() == 0 and glob["big"].all()
    layer = select_masks(scores, old, 0.5, "layer")
    assert layer["small"].sum() == 5 and layer["big"].sum() == 5


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_old_zeros_stay_zero_even_with_high_scores(scope):
    scores = {"a": torch.tensor([10.0, 9.0, 1.0, 2.0, 3.0, 4.0])}
    old = {"a": torch.tensor([False, False, True, True, True, True])}
    new = select_masks(scores, old, 0.5, scope)
    assert new["a"].tolist() == [False, False, False, True, True, True]


def test_target_below_current_keeps_old_zeros():
    old = {"a": torch.tensor([False, False, False, True])}
    new = select_masks({"a": torch.ones(4)}, old, 0.25, "layer")
    assert new["a"].tolist() == [False, False, False, True]


def test_ties_are_deterministic_by_position():
    scores = {"a": torch.ones(8)}
    new = select_masks(scores, {"a": ones(8)}, 0.5, "layer")
    assert new["a"].tolist() == [False] * 4 + [True] * 4


def test_selection_rejects_bad_scope_and_target():
    with pytest.raises(ValueError, match="unknown scope 'glob'"):
        select_masks({"a": torch.ones(2)}, {"a": ones(2)}, 0.5, "glob")
    with pytest.raises(ValueError, match="outside"):
        select_masks({"a": torch.ones(2)}, {"a": ones(2)}, 1.5, "layer")


def test_per_layer_targets():
    scores = {"a": torch.arange(10.0), "b": torch.arange(4.0)}
    new = select_masks(scores, {"a": ones(10), "b": ones(4)}, {"a": 0.3, "b": 0.5}, "layer")
    assert int((~new["a"]).sum()) == 3 and int((~new["b"]).sum()) == 2


# -- masks --------------------------------------------------------------------------------------
def test_maskset_apply_zeroes_in_place_and_stats():
    lin = nn.Linear(4, 3)
    ms = MaskSet({"weight": lin.weight})
    m = ones(3, 4)
    m[0, :2] = False
    ms.update({"weight": m})
    ms.apply_()
    assert (lin.weight[0, :2] == 0).all() and (lin.weight[1:] != 0).all()
    assert ms.stats()["global"] == pytest.approx(2 / 12)


def test_maskset_validates_and_refuses_regrowth():
    lin = nn.Linear(4, 3)
    ms = MaskSet({"weight": lin.weight})
    with pytest.raises(TypeError, match="must be bool"):
        ms.update({"weight": torch.ones(3, 4)})
    with pytest.raises(ValueError, match="shape"):
        ms.update({"weight": ones(4, 3)})
    m = ones(3, 4)
    m[0, 0] = False
    ms.update({"weight": m})
    with pytest.raises(ValueError, match="revive"):
        ms.update({"weight": ones(3, 4)})


def test_maskset_state_roundtrip():
    lin = nn.Linear(4, 3)
    ms = MaskSet({"weight": lin.weight})
    m = torch.rand(3, 4) > 0.5
    ms.update({"weight": m}, allow_regrow=True)
    ms2 = MaskSet({"weight": nn.Linear(4, 3).weight})
    ms2.load_state_dict(ms.state_dict())
    assert torch.equal(ms2["weight"], m)
    with pytest.raises(KeyError, match="missing"):
        ms2.load_state_dict({})


# -- prunable parameters and method construction -----------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 10)


def test_default_prunable_is_linear_and_conv_weights():
    net = Tiny()
    params = prunable_parameters(net)
    assert list(params) == ["conv.weight", "fc.weight"]
    assert params["fc.weight"] is net.fc.weight  # the parameters themselves, not copies
    assert list(Magnitude().resolve(net)) == ["conv.weight", "fc.weight"]


def test_include_exclude_globs_and_errors():
    net = Tiny()
    assert list(prunable_parameters(net, include=["*.bias"])) == ["conv.bias", "bn.bias",
                                                                   "fc.bias"]
    assert list(prunable_parameters(net, exclude=["fc.*"])) == ["conv.weight"]
    assert list(Magnitude(exclude=["fc.*"]).resolve(net)) == ["conv.weight"]
    with pytest.raises(PruningConfigError, match=r"^pruner.include=\['nothing\*'\] matches no "
                                                 r"parameter; parameter names look like: "
                                                 r"conv.weight, conv.bias"):
        prunable_parameters(net, include=["nothing*"])
    with pytest.raises(PruningConfigError, match=r"^pruner.exclude=\['\*'\] leaves no prunable"):
        prunable_parameters(net, exclude=["*"])
    with pytest.raises(PruningConfigError, match=r"^lottery.include=\['x'\] matches no"):
        prunable_parameters(net, include=["x"], option="lottery")


def test_methods_reject_bad_values_in_one_line():
    with pytest.raises(PruningConfigError, match=r"^pruner.scope='glob' is not one of layer, "
                                                 r"global$"):
        Magnitude(scope="glob")
    with pytest.raises(PruningConfigError, match=r"^pruner.granularity='nm' is not one of "
                                                 r"unstructured, structured$"):
        Random(granularity="nm")


def test_build_method_drops_run_keys_and_unwraps_errors():
    m = build_method({"_target_": "prunelab.pruning.methods.Random", "seed": 4,
                      "default_sparsity": 0.3, "scope": "global"})
    assert isinstance(m, Random) and (m.seed, m.scope) == (4, "global")
    with pytest.raises(PruningConfigError, match=r"^pruner.scope='glob' is not one of"):
        build_method({"_target_": "prunelab.pruning.methods.Magnitude", "scope": "glob"})
    with pytest.raises(PruningConfigError, match=r"^pruner._target_='torch.nn.Identity' is not a "
                                                 r"pruning method"):
        build_method({"_target_": "torch.nn.Identity"})
    with pytest.raises(PruningConfigError, match=r"^pruner._target_='prunelab.pruning.methods."
                                                 r"Nope' could not be built"):
        build_method({"_target_": "prunelab.pruning.methods.Nope"})


def test_random_pruner_same_seed_same_masks():
    net = Tiny()
    params = prunable_parameters(net)
    old = {k: ones(*v.shape) for k, v in params.items()}
    a = Random(seed=1).compute_masks(params, old, 0.5)
    b = Random(seed=1).compute_masks(params, old, 0.5)
    c = Random(seed=2).compute_masks(params, old, 0.5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # the seed formula of every published random mask: seed * 1_000_003 + event
    gen = torch.Generator().manual_seed(1 * 1_000_003 + 2)
    scores = {k: torch.rand(v.shape, generator=gen) for k, v in params.items()}
    expected = select_masks(scores, old, 0.5, "layer")
    got = Random(seed=1).compute_masks(params, old, 0.5, event=2)
    assert all(torch.equal(got[k], expected[k]) for k in got)


# -- schedules --------------------------------------------------------------------------------
def test_oneshot_events():
    assert OneShot(at_epoch=3).events(0.7) == {3: 0.7}


def test_iterative_geometric_and_linear():
    ev = Iterative(start_epoch=1, end_epoch=5, rounds=3).events(0.875)
    assert list(ev) == [1, 3, 5]
    assert list(ev.values()) == pytest.approx([0.5, 0.75, 0.875])
    lin = Iterative(start_epoch=0, end_epoch=2, rounds=3, steps="linear").events(0.9)
    assert list(lin.values()) == pytest.approx([0.3, 0.6, 0.9])


def test_gradual_cubic_values():
    ev = Gradual(start_epoch=2, end_epoch=6, frequency=2).events(0.8)
    # s_t = s_f (1 - (1 - k/n)^3), n = 2
    assert list(ev) == [2, 4, 6]
    assert list(ev.values()) == pytest.approx([0.0, 0.8 * (1 - 0.5 ** 3), 0.8])


@pytest.mark.parametrize("sched", [OneShot(4), Iterative(0, 9, 5), Iterative(2, 8, 4, "linear"),
                                   Gradual(0, 10, 1), Gradual(3, 9, 3, 0.1)])
@pytest.mark.parametrize("final", [0.3, 0.9, 0.98])
def test_schedules_monotone_exact_end_no_overshoot(sched, final):
    ev = sched.events(final)
    vals = list(ev.values())
    epochs = list(ev)
    assert epochs == sorted(epochs)
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert vals[-1] == final
    assert max(vals) <= final
    assert sched.current(max(epochs) + 5, final) == final


def test_schedule_validation_errors():
    with pytest.raises(ScheduleError, match="prunes at epoch 10 but the run has epochs=10"):
        OneShot(10).validate(10)
    OneShot(9).validate(10)
    # the message says what to change: the schedule's last epoch, or the run's length
    with pytest.raises(ScheduleError, match=r"set schedule.at_epoch<=9 or epochs>=11 \(trainer.max_epochs, where set\)$"):
        OneShot(10).validate(10)
    with pytest.raises(ScheduleError, match=r"must be <= 0; set schedule.end_epoch<=0 or epochs>=2 \("):
        Gradual(0, 1).validate(1)
    with pytest.raises(ScheduleError, match="before start_epoch"):
        Gradual(5, 2)
    with pytest.raises(ScheduleError, match="frequency=3 does not divide"):
        Gradual(0, 4, 3)
    with pytest.raises(ScheduleError, match="rounds=5 does not fit"):
        Iterative(0, 2, 5)
    with pytest.raises(ScheduleError, match="steps='cubic'"):
        Iterative(0, 4, 2, "cubic")
