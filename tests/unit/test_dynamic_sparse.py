"""Dynamic sparse training (SET, RigL), the ERK/uniform distributions and LAMP: exact counts,
masks that move at constant sparsity, regrown weights at zero with reset moments, and a resume
that reproduces the uninterrupted run bit for bit."""

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.module import ClassifierModule
from prunelab.pruning import FinalSparsityCheckpoint, OneShot, PruningCallback
from prunelab.pruning.distribution import kept_counts, layer_densities
from prunelab.pruning.methods import LAMP, SET, GlobalMagnitude, RigL
from prunelab.pruning.params import PruningConfigError
from prunelab.pruning.scores import ScoreContext, lamp

LENET300 = {"fc1": (300, 784), "fc2": (100, 300), "out": (10, 100)}


def test_erk_density_is_proportional_to_the_kernel_ratio_and_meets_the_budget():
    for sparsity in (0.5, 0.9, 0.98, 0.99):
        dens = layer_densities(LENET300, sparsity, "erk")
        numel = {n: math.prod(s) for n, s in LENET300.items()}
        kept = sum(dens[n] * numel[n] for n in dens)
        assert kept == pytest.approx((1 - sparsity) * sum(numel.values()), rel=1e-9)
        free = [n for n in dens if dens[n] < 1.0]
        ratios = {n: dens[n] / (sum(LENET300[n]) / numel[n]) for n in free}
        assert max(ratios.values()) == pytest.approx(min(ratios.values()))  # one epsilon
        assert dens["out"] >= dens["fc2"] >= dens["fc1"]  # small layers denser
        counts = kept_counts(LENET300, sparsity, "erk")
        assert all(counts[n] == round(dens[n] * numel[n]) for n in dens)
    # at 50 % the output layer (and fc2) would exceed density 1: kept dense, the rest solved again
    dens = layer_densities(LENET300, 0.5, "erk")
    assert dens["out"] == 1.0 and dens["fc1"] < 0.5


def test_uniform_gives_every_layer_the_same_sparsity():
    assert list(layer_densities(LENET300, 0.9, "uniform").values()) == [pytest.approx(0.1)] * 3
    with pytest.raises(ValueError, match="distribution='gauss'; allowed: uniform, erk"):
        layer_densities(LENET300, 0.9, "gauss")


def test_erk_on_a_score_then_select_method_hits_each_layers_count():
    torch.manual_seed(0)
    params = {n: torch.randn(s) for n, s in LENET300.items()}
    method = GlobalMagnitude(distribution="erk")
    assert method.scope == "erk"
    old = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    masks = method.compute_masks(params, old, 0.98)
    counts = kept_counts(LENET300, 0.98, "erk")
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    # within a layer the largest magnitudes stay
    for n, m in masks.items():
        assert params[n].abs()[m].min() >= params[n].abs()[~m].max()
    with pytest.raises(PruningConfigError, match="needs pruner.granularity=unstructured"):
        GlobalMagnitude(granularity="structured", distribution="erk")


def test_lamp_score_is_the_squared_weight_over_the_sum_of_the_larger_ones():
    torch.manual_seed(1)
    w = torch.randn(7, 5)
    got = lamp(w, ScoreContext("w")).reshape(-1)
    flat = w.reshape(-1) ** 2
    for i in range(flat.numel()):  # the paper's definition, weight by weight
        larger = flat[(flat > flat[i]) | ((flat == flat[i]) & (torch.arange(flat.numel()) >= i))]
        assert got[i] == pytest.approx(float(flat[i] / larger.sum()), rel=1e-5)
    assert got.max() == pytest.approx(1.0)  # a layer's largest weight scores 1
    params = {"a": torch.randn(50, 40), "b": torch.randn(10, 50) * 0.01}  # b tiny: still kept
    old = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    masks = LAMP().compute_masks(params, old, 0.95)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.95 * 2500)
    assert all(m.any() for m in masks.values())


def _params_and_masks(method, sparsity=0.9):
    torch.manual_seed(2)
    params = {"fc1": nn.Parameter(torch.randn(64, 100)), "fc2": nn.Parameter(torch.randn(10, 64))}
    for p in params.values():
        p.grad = torch.randn_like(p)
    old = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    masks = method.compute_masks(params, old, sparsity)
    with torch.no_grad():
        for n, p in params.items():
            p.mul_(masks[n])
    return params, masks


@pytest.mark.parametrize("cls", [SET, RigL])
def test_an_update_replaces_the_drop_fraction_at_constant_counts(cls):
    method = cls(delta_t=10, drop_fraction=0.3, decay="constant", t_end=1.0)
    params, masks = _params_and_masks(method)
    counts = kept_counts({n: tuple(p.shape) for n, p in params.items()}, 0.9, "erk")
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    new = method.update(params, masks, step=10, total=1000)
    for n, p in params.items():
        old_m, new_m = masks[n], new[n]
        k = round(0.3 * counts[n])
        assert int(new_m.sum()) == counts[n]  # constant per layer
        dropped, grown = old_m & ~new_m, new_m & ~old_m
        assert int(dropped.sum()) == k and int(grown.sum()) == k  # the masks moved by k
        kept_mag = p.detach().abs()[old_m]
        assert p.detach().abs()[dropped].max() <= kept_mag.sort().values[k - 1]  # smallest went
        if cls is RigL:  # regrown where |grad| is largest among the pruned
            g = p.grad.abs()
            assert g[grown].min() >= g[~old_m & ~grown].max()
    assert method.updates == 1


def test_drop_fraction_decays_by_cosine_to_t_end_and_updates_stop_there():
    m = RigL(delta_t=100, drop_fraction=0.3, t_end=0.75)
    assert m.fraction_at(0, 1000) == pytest.approx(0.3)
    assert m.fraction_at(375, 1000) == pytest.approx(0.15)
    assert m.fraction_at(750, 1000) == pytest.approx(0.0, abs=1e-12)
    assert [s for s in range(1, 1001) if m.due(s, 1000)] == [100, 200, 300, 400, 500, 600, 700]
    assert SET(decay="constant").fraction_at(900, 1000) == 0.3


@pytest.mark.parametrize("kwargs, message", [
    ({"delta_t": 0}, "pruner.delta_t=0 must be an integer > 0"),
    ({"drop_fraction": 0.0}, "pruner.drop_fraction=0.0 must be in (0, 1)"),
    ({"drop_fraction": 1.0}, "pruner.drop_fraction=1.0 must be in (0, 1)"),
    ({"t_end": 0}, "pruner.t_end=0 must be in (0, 1]"),
    ({"distribution": "normal"}, "pruner.distribution='normal' is not one of uniform, erk"),
    ({"decay": "linear"}, "pruner.decay='linear' is not one of cosine, constant"),
])
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(PruningConfigError) as err:
        RigL(**kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _data(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=16)


def _trainer(tmp_path, callbacks, epochs):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(tmp_path), callbacks=callbacks,
                      num_sanity_val_steps=0)


class StepSpy(pl.Callback):
    """After every optimizer step (hooked after the pruning callback's): per-layer counts, the
    regrown weights and the optimizer moments of every moved weight."""

    def __init__(self, pruning):
        self.pruning, self.before, self.records = pruning, None, []

    def on_train_start(self, trainer, pl_module):
        self.opt = trainer.optimizers[0]
        self.opt.register_step_pre_hook(self._pre)
        self.opt.register_step_post_hook(self._post)

    def _pre(self, opt, args, kwargs):
        self.before = self.pruning.masks.as_dict() if self.pruning.events_done else None

    def _post(self, opt, args, kwargs):
        if self.before is None:
            return
        rec = {"counts": {}, "moved": 0, "grown_nonzero": 0, "moments_nonzero": 0}
        for n, p in self.pruning.masks.params.items():
            m = self.pruning.masks[n]
            rec["counts"][n] = int(m.sum())
            moved = m != self.before[n]
            rec["moved"] += int(moved.sum())
            rec["grown_nonzero"] += int((p.detach()[moved & m] != 0).sum())
            rec["pruned_nonzero"] = rec.get("pruned_nonzero", 0) + int((p.detach()[~m] != 0).sum())
            for v in opt.state[p].values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    rec["moments_nonzero"] += int((v[moved] != 0).sum())
        self.records.append(rec)


@pytest.mark.parametrize("cls", [SET, RigL])
def test_training_moves_masks_at_constant_sparsity_with_zero_regrowth(tmp_path, cls):
    pl.seed_everything(0)
    net = MLP()
    method = cls(delta_t=3, drop_fraction=0.3, t_end=0.75)
    cb = PruningCallback(method, OneShot(0), sparsity=0.8)
    spy = StepSpy(cb)
    module = ClassifierModule(net, 2, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
    _trainer(tmp_path, [cb, spy], epochs=3).fit(module, _data())
    total = 3 * 12
    assert cb._total_steps == total
    updates = [r for r in spy.records if r["moved"]]
    assert len(updates) == len([s for s in range(1, total + 1) if method.due(s, total)]) > 0
    assert method.updates == len(updates)
    counts = kept_counts({n: tuple(p.shape) for n, p in cb.masks.params.items()}, 0.8, "erk")
    assert all(r["counts"] == counts for r in spy.records)  # every step, every layer exact
    assert all(r["grown_nonzero"] == 0 and r["moments_nonzero"] == 0 for r in updates)
    assert all(r["pruned_nonzero"] == 0 for r in spy.records)
    assert cb.state_dict()["method"]["updates"] == len(updates)


@pytest.mark.parametrize(("delta_t", "idle"), [(27, True), (26, False)])
def test_a_run_too_short_for_one_update_warns_once(tmp_path, capsys, delta_t, idle):
    # 36 steps, t_end 0.75: updates before step 27, so delta_t=27 never moves a mask
    pl.seed_everything(0)
    method = RigL(delta_t=delta_t, drop_fraction=0.3, t_end=0.75)
    cb = PruningCallback(method, OneShot(0), sparsity=0.8)
    module = ClassifierModule(MLP(), 2, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
    _trainer(tmp_path, [cb], epochs=3).fit(module, _data())
    assert method.updates == (0 if idle else 1)
    err = [line for line in capsys.readouterr().err.splitlines() if "prunelab: warning" in line]
    if idle:
        assert cb.warnings == [
            "pruner=rigl moves its masks every pruner.delta_t=27 optimizer steps until t_end=0.75 "
            "of the run, but the run has 36 steps: no mask will move (static sparse training); "
            "lower pruner.delta_t or train longer"]
        assert err == [f"prunelab: warning: {cb.warnings[0]}"]
        # kept in the checkpoint: a resume that skips on_train_start still reports it, once
        again = PruningCallback(RigL(delta_t=delta_t), OneShot(0), sparsity=0.8)
        again.load_state_dict(cb.state_dict())
        again.load_state_dict(cb.state_dict())
        assert again.warnings == cb.warnings
    else:
        assert cb.warnings == [] and err == []


@pytest.mark.parametrize("cls", [SET, RigL])
def test_a_resumed_run_reproduces_masks_and_weights_bit_for_bit(tmp_path, cls):
    def run(directory, epochs, stop_after=None, ckpt_path=None):
        pl.seed_everything(0)
        net = MLP()
        cb = PruningCallback(cls(delta_t=2, drop_fraction=0.4, decay="cosine", t_end=1.0),
                             OneShot(0), sparsity=0.7)
        ck = FinalSparsityCheckpoint(dirpath=str(directory), filename="best", monitor="val/acc",
                                     mode="max", save_last=True)
        extra = []
        if stop_after is not None:
            class Stop(pl.Callback):
                def on_train_epoch_end(self, trainer, pl_module):
                    if trainer.current_epoch == stop_after:
                        trainer.should_stop = True
            extra = [Stop()]
        module = ClassifierModule(net, 2,
                                  optimizer=lambda params: torch.optim.Adam(params, lr=1e-2))
        _trainer(tmp_path, [cb, ck, *extra], epochs=epochs).fit(
            module, _data(), _data(64, 1), ckpt_path=ckpt_path)
        return net, cb

    ref_net, ref_cb = run(tmp_path / "a", 4)
    run(tmp_path / "b", 4, stop_after=1)
    net, cb = run(tmp_path / "b2", 4, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert ref_cb.pruner.updates == cb.pruner.updates > 10
    for n in ref_cb.masks:
        assert torch.equal(ref_cb.masks[n], cb.masks[n])
    for (k, a), (_, b) in zip(ref_net.state_dict().items(), net.state_dict().items()):
        assert torch.equal(a, b), k
