"""Property-based tests (hypothesis) of selection, masks and schedules: for random shapes,
targets and previous masks, the kept counts are exact, masks only shrink (no method here may
regrow), and schedules give cumulative, non-decreasing targets that end at the final sparsity."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunelab.pruning.granularity import nm_mask, select_channels
from prunelab.pruning.masks import MaskSet
from prunelab.pruning.methods.magnitude import GlobalMagnitude, Magnitude, Random
from prunelab.pruning.methods.nm import NM
from prunelab.pruning.schedules import Gradual, Iterative, OneShot
from prunelab.pruning.selection import select_masks

FAST = settings(max_examples=60, deadline=None)

shapes = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
                  min_size=1, max_size=3)
targets = st.floats(0.0, 1.0, allow_nan=False)
seeds = st.integers(0, 2**31 - 1)


def random_tensors(shape_list, seed, ties):
    """Scores (with many ties when ``ties``) and old masks (a random fraction already pruned)."""
    g = torch.Generator().manual_seed(seed)
    scores, old = {}, {}
    for i, shape in enumerate(shape_list):
        s = torch.randint(0, 3, shape, generator=g).float() if ties else torch.randn(shape,
                                                                                   generator=g)
        scores[f"p{i}"] = s
        old[f"p{i}"] = torch.rand(shape, generator=g) >= torch.rand((), generator=g) * 0.8
    return scores, old


def assert_nested(new, old):
    for n in old:
        assert new[n].dtype == torch.bool and new[n].shape == old[n].shape
        assert not bool((new[n] & ~old[n]).any()), f"{n}: a pruned weight came back"


def assert_lowest_pruned(scores, old, new):
    """The newly pruned elements score no higher than any element still kept."""
    for n in old:
        fresh = old[n] & ~new[n]
        if fresh.any() and new[n].any():
            assert scores[n][fresh].max() <= scores[n][new[n]].min()


@FAST
@given(shapes, targets, seeds, st.booleans())
def test_layer_selection_prunes_exactly_the_target_and_only_shrinks(shape_list, target, seed,
                                                                    ties):
    scores, old = random_tensors(shape_list, seed, ties)
    new = select_masks(scores, old, target, "layer")
    assert_nested(new, old)
    assert_lowest_pruned(scores, old, new)
    for n, m in old.items():
        zeros_before = int((~m).sum())
        assert int((~new[n]).sum()) == max(round(target * m.numel()), zeros_before)
    assert select_masks(scores, old, target, "layer").keys() == new.keys()
    again = select_masks(scores, old, target, "layer")
    assert all(torch.equal(again[n], new[n]) for n in new)  # ties broken deterministically


@FAST
@given(shapes, seeds, st.data())
def test_per_layer_targets_are_met_layer_by_layer(shape_list, seed, data):
    scores, old = random_tensors(shape_list, seed, ties=False)
    per = {n: data.draw(targets, label=n) for n in scores}
    new = select_masks(scores, old, per, "layer")
    assert_nested(new, old)
    for n, m in old.items():
        assert int((~new[n]).sum()) == max(round(per[n] * m.numel()), int((~m).sum()))


@FAST
@given(shapes, targets, seeds, st.booleans())
def test_global_selection_prunes_exactly_the_target_overall(shape_list, target, seed, ties):
    scores, old = random_tensors(shape_list, seed, ties)
    new = select_masks(scores, old, target, "global")
    assert_nested(new, old)
    total = sum(m.numel() for m in old.values())
    zeros_before = sum(int((~m).sum()) for m in old.values())
    assert sum(int((~m).sum()) for m in new.values()) == max(round(target * total), zeros_before)
    fresh = torch.cat([scores[n][old[n] & ~new[n]] for n in old])
    kept = torch.cat([scores[n][new[n]] for n in old])
    if fresh.numel() and kept.numel():  # one threshold over every tensor
        assert fresh.max() <= kept.min()


@FAST
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.sampled_from([(), (2,), (2, 3)]),
       seeds, st.data())
def test_nm_masks_prune_exactly_per_group_and_only_shrink(out, n, extra, kernel, seed, data):
    m = n + extra
    groups = data.draw(st.integers(1, 3), label="groups")
    shape = (out, m * groups, *kernel)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=g)
    old = torch.rand(shape, generator=g) > data.draw(st.floats(0.0, 0.6), label="old zeros")
    per_group = data.draw(st.integers(0, m - n), label="per_group")
    new = nm_mask(scores, old, n, m, per_group)
    assert_nested({"w": new}, {"w": old})

    def group_zeros(mask):  # zeros of every group of m consecutive input weights
        t = mask.permute(0, *range(2, mask.dim()), 1).reshape(-1, m)
        return (~t).sum(1)

    expected = torch.clamp(group_zeros(old), min=per_group)
    assert torch.equal(group_zeros(new), expected)


@FAST
@given(st.lists(st.tuples(st.integers(2, 6), st.integers(1, 5)), min_size=1, max_size=4),
       st.floats(0.0, 0.95), st.sampled_from(["layer", "global"]), seeds, st.booleans())
def test_channel_selection_keeps_a_channel_per_layer_and_only_shrinks(layers, target, scope,
                                                                      seed, protect_first):
    g = torch.Generator().manual_seed(seed)
    names = [f"l{i}" for i in range(len(layers))]
    sizes = {n: size for n, (_, size) in zip(names, layers)}
    scores = {n: torch.randn(c, generator=g) for n, (c, _) in zip(names, layers)}
    old = {}
    for n, (c, _) in zip(names, layers):
        keep = torch.rand(c, generator=g) > 0.3
        keep[int(torch.randint(0, c, (1,), generator=g))] = True  # a layer keeps a channel
        old[n] = keep
    protected = frozenset(names[:1]) if protect_first else frozenset()
    total = sum(sizes[n] * old[n].numel() for n in names)
    eligible = [n for n in names if n not in protected]
    goal = round(target * total)
    reachable = sum(sizes[n] * (old[n].numel() - 1) for n in eligible)
    if eligible and goal > reachable:
        with pytest.raises(ValueError, match="cannot be reached by whole channels"):
            select_channels(scores, old, target, scope, sizes, total, protected)
        return
    new = select_channels(scores, old, target, scope, sizes, total, protected)
    assert_nested(new, old)
    assert all(bool(new[n].any()) for n in names)
    assert all(torch.equal(new[n], old[n]) for n in protected)
    if not eligible or goal == 0:
        assert all(torch.equal(new[n], old[n]) for n in names)
        return
    pruned = sum(sizes[n] * int((~new[n]).sum()) for n in names if n not in protected)
    if scope == "layer":
        ratio = min(1.0, goal / sum(sizes[n] * old[n].numel() for n in eligible))
        for n in eligible:
            c = old[n].numel()
            assert int((~new[n]).sum()) == min(c - 1, max(round(ratio * c), int((~old[n]).sum())))
    elif sum(sizes[n] * int((~old[n]).sum()) for n in eligible) >= goal:
        assert all(torch.equal(new[n], old[n]) for n in names)  # already there: nothing more
    else:  # as close to the goal as whole channels allow
        assert abs(pruned - goal) <= max(sizes[n] for n in eligible)


METHODS = {
    "magnitude": lambda: Magnitude(),
    "magnitude_global": lambda: GlobalMagnitude(scope="global"),
    "random": lambda: Random(seed=3),
}


@FAST
@given(st.sampled_from(sorted(METHODS)), shapes, st.lists(targets, min_size=1, max_size=4),
       seeds)
def test_methods_never_revive_a_pruned_weight(method, shape_list, steps, seed):
    """A method's masks over a run of rising targets: nested, and exact at every step."""
    pruner = METHODS[method]()
    assert not pruner.may_regrow
    g = torch.Generator().manual_seed(seed)
    params = {f"p{i}": torch.randn(s, generator=g) for i, s in enumerate(shape_list)}
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    total = sum(p.numel() for p in params.values())
    for event, target in enumerate(sorted(steps)):
        new = pruner.compute_masks(params, masks, target, event=event)
        assert_nested(new, masks)
        zeros = {n: int((~m).sum()) for n, m in new.items()}
        if pruner.scope == "layer":
            assert all(zeros[n] == round(target * params[n].numel()) for n in params)
        else:
            assert sum(zeros.values()) == round(target * total)
        masks = new


@FAST
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), seeds)
def test_nm_method_reaches_exact_n_of_m_through_a_schedule(n, extra, groups, seed):
    m = n + extra
    pruner = NM(n=n, m=m)
    g = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(3, m * groups, generator=g)}
    masks = {"w": torch.ones(3, m * groups, dtype=torch.bool)}
    final = pruner.nm_sparsity
    for event, target in enumerate(Gradual(0, 3).events(final).values()):
        new = pruner.compute_masks(params, masks, target, event=event)
        assert_nested(new, masks)
        masks = new
    assert torch.equal((~masks["w"]).reshape(-1, m).sum(1), torch.full((3 * groups,), m - n))


@FAST
@given(shapes, seeds)
def test_maskset_refuses_a_mask_that_revives_a_weight(shape_list, seed):
    scores, old = random_tensors(shape_list, seed, ties=False)
    params = {n: torch.nn.Parameter(s.clone()) for n, s in scores.items()}
    ms = MaskSet(params)
    ms.update(old)
    name = next(iter(old))
    revived = old[name].clone()
    if bool(revived.all()):
        ms.update({name: revived})  # nothing pruned: nothing to revive
        return
    revived[~revived] = True
    with pytest.raises(ValueError, match="would revive pruned weights"):
        ms.update({name: revived})
    ms.update(select_masks(scores, old, 0.9, "layer"))  # shrinking is allowed
    ms.apply_()
    assert all(not bool(p[~ms[n]].any()) for n, p in params.items())


# -- schedules ------------------------------------------------------------------------------------
finals = st.floats(0.0, 0.999, allow_nan=False)


@st.composite
def schedules(draw):
    kind = draw(st.sampled_from(["oneshot", "iterative", "gradual"]))
    if kind == "oneshot":
        return OneShot(draw(st.integers(0, 20)))
    start = draw(st.integers(0, 10))
    if kind == "iterative":
        rounds = draw(st.integers(1, 6))
        end = start + draw(st.integers(max(rounds - 1, 0), 12))
        return Iterative(start, end, rounds, draw(st.sampled_from(Iterative.STEPS)))
    frequency = draw(st.integers(1, 3))
    end = start + frequency * draw(st.integers(0, 6))
    return Gradual(start, end, frequency, draw(st.floats(0.0, 0.99)))


@settings(max_examples=200, deadline=None)
@given(schedules(), finals)
def test_schedules_give_cumulative_targets_ending_at_the_final_sparsity(schedule, final):
    events = schedule.events(final)
    epochs, values = list(events), list(events.values())
    assert epochs == sorted(set(epochs)) and epochs[0] >= 0
    assert values[-1] == final  # exactly, not approximately
    assert all(0.0 <= v <= final + 1e-12 for v in values)
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:]))
    currents = [schedule.current(e, final) for e in range(epochs[-1] + 2)]
    assert all(a <= b for a, b in zip(currents, currents[1:]))
    assert currents[-1] == final and currents[-2] == final
    schedule.validate(epochs[-1] + 1, final)  # the last event leaves one fine-tuning epoch


@FAST
@given(schedules(), finals, shapes, seeds)
def test_pruning_along_a_schedule_gives_nested_masks_with_exact_counts(schedule, final,
                                                                       shape_list, seed):
    scores, _ = random_tensors(shape_list, seed, ties=True)
    masks = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    for target in schedule.events(final).values():
        new = select_masks(scores, masks, target, "layer")
        assert_nested(new, masks)
        for n, m in new.items():  # rising targets: the count is the target's, never more
            assert int((~m).sum()) == round(target * m.numel())
        masks = new
    for n, m in masks.items():
        assert math.isclose(int((~m).sum()), round(final * m.numel()))
