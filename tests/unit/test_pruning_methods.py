"""Method classes: a method from outside prunelab through ``_target_``, what the callback reads
from a method's declarations (needs, may_regrow), and IMP's level masks."""

import functools

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunelab.config  # noqa: F401  (registers the schemas and resolvers)
from prunelab.cli import CONF_DIR
from prunelab.module import ClassifierModule
from prunelab.pruning import (
    IMP,
    Magnitude,
    OneShot,
    PruningCallback,
    PruningConfigError,
    ScoreThenSelect,
    build_method,
    select_masks,
)


# -- a method defined outside prunelab ------------------------------------------------------------
def position_score(param, ctx):
    """Larger for later elements: the first elements of every tensor (in memory order) go."""
    return torch.arange(param.numel(), dtype=torch.float32).reshape(param.shape)


class ToyMethod(ScoreThenSelect):
    """One class: a name and a score; the selection is the shared one."""

    name = "toy"
    score = position_score


class ToyGradients(ScoreThenSelect):
    """Records the stats the callback hands over; prunes like magnitude."""

    name = "toy_gradients"
    score = "magnitude"
    needs = frozenset({"gradients"})
    seen: list = []

    def compute_masks(self, params, old_masks, target, event=0, stats=None):
        type(self).seen.append(stats)
        return super().compute_masks(params, old_masks, target, event, stats)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def fit(net, callback, epochs=1):
    module = ClassifierModule(net, 2, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
               enable_checkpointing=False, enable_model_summary=False,
               callbacks=[callback]).fit(module, data())


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def check_toy_run(method):
    assert isinstance(method, ToyMethod) and method.name == "toy"
    net = mlp()
    cb = PruningCallback(method, OneShot(0), sparsity=0.25)
    fit(net, cb)
    for layer in (net[0], net[2]):
        w = layer.weight.detach().reshape(-1)
        k = round(0.25 * w.numel())
        assert (w[:k] == 0).all() and (w[k:] != 0).all()  # the toy's zeros, after training
    x = torch.randn(5, 6)
    with torch.no_grad():
        h = torch.relu(x @ (net[0].weight * cb.masks["0.weight"]).T + net[0].bias)
        expected = h @ (net[2].weight * cb.masks["2.weight"]).T + net[2].bias
        assert torch.allclose(net(x), expected, atol=1e-6)


def test_a_method_from_a_test_module_through_target():
    # pruner=random's schema has exactly the score-then-select keys; _target_ swaps the class
    target = f"{ToyMethod.__module__}.ToyMethod"
    cfg = compose_train("pruner=random", f"pruner._target_={target}", "pruner.scope=layer")
    check_toy_run(build_method(cfg.pruner))


def test_a_method_yaml_in_a_config_dir_of_ones_own(tmp_path):
    (tmp_path / "pruner").mkdir()
    (tmp_path / "pruner" / "toy.yaml").write_text(
        "defaults:\n  - /schema/pruner/score_then_select@_here_\n  - _self_\n\n"
        f"_target_: {ToyMethod.__module__}.ToyMethod\nscope: layer\n")
    cfg = compose_train("pruner=toy", f"hydra.searchpath=[file://{tmp_path}]")
    assert cfg.sparsity == 0.5  # the schema's default_sparsity
    check_toy_run(build_method(cfg.pruner))
    with pytest.raises(Exception, match="norm"):  # the schema rejects keys it does not have
        compose_train("pruner=toy", f"hydra.searchpath=[file://{tmp_path}]", "pruner.norm=2")


def test_the_callback_gathers_gradients_for_a_method_that_needs_them():
    ToyGradients.seen.clear()
    fit(mlp(), PruningCallback(ToyGradients(), OneShot(1), sparsity=0.5), epochs=2)
    (stats,) = ToyGradients.seen
    assert set(stats) == {"0.weight", "2.weight"}
    assert stats["0.weight"]["wg"].shape == (8, 6) and bool((stats["0.weight"]["wg"] > 0).any())
    # a method that does not declare it gets none
    seen = []

    class NoNeeds(Magnitude):
        def compute_masks(self, params, old_masks, target, event=0, stats=None):
            seen.append(stats)
            return super().compute_masks(params, old_masks, target, event, stats)

    fit(mlp(), PruningCallback(NoNeeds(), OneShot(1), sparsity=0.5), epochs=2)
    assert seen == [None]


def test_masks_only_shrink_unless_the_method_may_regrow():
    net = mlp()
    cb = PruningCallback(Magnitude(), OneShot(1), sparsity=0.5)
    cb.bind(net)
    half = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) > 0.5
            for n, p in cb.masks.params.items()}
    cb.set_masks(half)
    assert all(bool((p[~half[n]] == 0).all()) for n, p in cb.masks.params.items())
    full = {n: torch.ones_like(m) for n, m in half.items()}
    with pytest.raises(ValueError, match="revive"):
        cb.set_masks(full)

    class Regrowing(Magnitude):
        may_regrow = True

    cb = PruningCallback(Regrowing(), OneShot(1), sparsity=0.5)
    cb.bind(mlp())
    cb.set_masks(half)
    cb.set_masks(full)
    assert all(bool(cb.masks[n].all()) for n in full)


def test_declared_needs_are_checked():
    with pytest.raises(TypeError, match="needs has \\['gpu'\\]"):
        type("Bad", (Magnitude,), {"needs": frozenset({"gpu"})})


# -- IMP ------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Linear(10, 20)
        self.hidden = nn.Linear(20, 20)
        self.classifier = nn.Linear(20, 4)

    def output_layer_name(self):
        return "classifier"


def test_imp_fractions_globs_then_output_then_default():
    imp = IMP(prune_fraction=0.2, output_fraction=0.1, layer_fractions={"features.*": 0.3})
    assert imp.own_fractions(Net()) == {"features.weight": 0.3, "classifier.weight": 0.1}
    with pytest.raises(PruningConfigError, match="lottery.layer_fractions pattern 'conv.*' "
                                                 "matches no prunable parameter"):
        IMP(layer_fractions={"conv.*": 0.3}).resolve(Net())
    with pytest.raises(PruningConfigError, match=r"lottery.prune_fraction=1.5 is outside the "
                                                 r"allowed range \(0, 1\)"):
        IMP(prune_fraction=1.5)
    with pytest.raises(PruningConfigError, match=r"^lottery.include=\['x'\] matches no"):
        IMP(include=["x"]).resolve(Net())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_imp_level_masks_nest_and_hit_the_cumulative_targets(scope):
    net = Net()
    imp = IMP(prune_fraction=0.2, output_fraction=0.1, scope=scope)
    own = imp.own_fractions(net)
    params = imp.resolve(net)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    for level in (1, 2, 3):
        g = torch.Generator().manual_seed(level)
        weights = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
        new = imp.level_masks(weights, masks, level, own)
        assert all(not bool((new[n] & ~masks[n]).any()) for n in new)  # nested
        out = new["classifier.weight"]
        assert int((~out).sum()) == round((1 - 0.9 ** level) * out.numel())
        shared = ["features.weight", "hidden.weight"]
        if scope == "layer":
            for n in shared:
                assert int((~new[n]).sum()) == round((1 - 0.8 ** level) * new[n].numel())
        else:
            total = sum(new[n].numel() for n in shared)
            assert sum(int((~new[n]).sum()) for n in shared) == round((1 - 0.8 ** level) * total)
        masks = new
    assert imp.level_target(2) == pytest.approx(0.36)


def test_imp_level_masks_keep_the_largest_magnitudes():
    w = {"a": torch.tensor([[0.5, -3.0, 0.1, 2.0, -0.2]])}
    old = {"a": torch.tensor([[True, True, True, True, False]])}
    new = IMP(prune_fraction=0.5).level_masks(w, old, 1, {})
    # target round(0.5 * 5) = 2 zeros (rounds to even): the old zero, then the smallest |w| (0.1)
    assert new["a"].tolist() == [[True, True, False, True, False]]


def test_imp_random_control_uses_the_seed_formula_and_keeps_counts():
    g = torch.Generator().manual_seed(2)
    like = {"a": torch.rand(20, 30, generator=g) > 0.6}
    old = {"a": torch.rand(20, 30, generator=g) > 0.2}
    new = IMP(seed=5).control_masks(like, old, level=3)
    assert int(new["a"].sum()) == int(like["a"].sum())
    assert not bool((new["a"] & ~old["a"]).any())
    gen = torch.Generator().manual_seed(5 * 1_000_003 + 3)
    scores = {"a": torch.rand(like["a"].shape, generator=gen)}
    target = {"a": float((~like["a"]).sum()) / like["a"].numel()}
    assert torch.equal(new["a"], select_masks(scores, old, target, "layer")["a"])


def test_imp_as_the_keeper_of_a_levels_masks():
    net = Net()
    imp = IMP()
    keeper = PruningCallback(imp, OneShot(), 0.0)
    keeper.bind(net)
    assert keeper.events == {} and not imp.may_regrow
    mask = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) > 0.3
            for n, p in imp.resolve(net).items()}
    keeper.set_masks(mask)
    assert all(bool((p[~mask[n]] == 0).all()) for n, p in keeper.masks.params.items())
    with pytest.raises(PruningConfigError, match="not during training: sparsity=0.5; allowed: 0"):
        PruningCallback(imp, OneShot(), 0.5)


def test_every_built_in_method_has_a_config_file_and_vice_versa():
    import prunelab.pruning.methods as methods
    from prunelab.cli import known_options

    classes = {cls.name: cls for cls in vars(methods).values()
               if isinstance(cls, type) and issubclass(cls, methods.PruningMethod)
               and cls is not methods.PruningMethod and "name" in vars(cls)}
    lottery_only = {"imp"}  # configured by lottery.*, not by pruner=
    assert set(classes) - lottery_only == set(known_options("pruner"))
    for name in known_options("pruner"):
        text = (CONF_DIR / "pruner" / f"{name}.yaml").read_text()
        cls = classes[name]
        assert f"_target_: {cls.__module__.rsplit('.', 1)[0]}.{cls.__name__}" in text, name
        assert f"/schema/pruner/{name}@_here_" in text, name
