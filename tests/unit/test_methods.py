"""Pruning methods of issue #3: structured, N:M, Taylor, SNIP, L1 regularization."""

import functools

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.module import ClassifierModule
from prunelab.graph import coupled_parameters
from prunelab.pruning import (
    NM,
    SNIP,
    OneShot,
    PruningCallback,
    PruningConfigError,
    Structured,
    Taylor,
)
from prunelab.pruning.granularity import channel_norms, channel_sums, nm_mask, select_channels
from prunelab.pruning.regularizers import L1, GroupL1


class ConvBN(nn.Module):
    """conv -> bn -> relu -> conv -> bn -> relu -> pool -> fc (output)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))

    def output_layer_name(self):
        return "fc"


# -- structured -------------------------------------------------------------------------------
def test_channel_norms_l1_and_l2_rank_differently():
    w = torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert channel_norms(w, 1).tolist() == [3.0, 4.0]  # L1 keeps channel 1
    assert channel_norms(w, 2).tolist() == [3.0, 2.0]  # L2 keeps channel 0
    assert channel_sums(torch.tensor([[3.0, -1.0], [0.5, 0.25]])).tolist() == [2.0, 0.75]
    lin = nn.Linear(4, 2, bias=False)
    lin.weight.data = w.clone()
    for norm, pruned in ((1, 0), (2, 1)):
        params = {"weight": lin.weight}
        ones = {"weight": torch.ones(2, 4, dtype=torch.bool)}
        m = Structured(norm=norm).compute_masks(params, ones, 0.5)["weight"]
        assert not m[pruned].any() and m[1 - pruned].all()


def test_select_channels_layer_scope_exact_and_keeps_last_channel():
    scores = {"a": torch.tensor([4.0, 1.0, 3.0, 2.0]), "b": torch.tensor([1.0, 2.0])}
    keep = {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}
    out = select_channels(scores, keep, 0.5, "layer", {"a": 10, "b": 10}, 60)
    assert out["a"].tolist() == [True, False, True, False] and out["b"].tolist() == [False, True]
    out = select_channels(scores, keep, 0.66, "layer", {"a": 10, "b": 10}, 60)
    assert int(out["a"].sum()) == 1 and int(out["b"].sum()) == 1  # never the last channel
    with pytest.raises(ValueError, match="cannot be reached by whole channels"):
        select_channels(scores, keep, 0.7, "layer", {"a": 10, "b": 10}, 60)


def test_select_channels_protected_layer_untouched_and_target_redistributed():
    scores = {"a": torch.arange(10.0), "out": torch.zeros(10)}
    keep = {k: torch.ones(10, dtype=torch.bool) for k in scores}
    out = select_channels(scores, keep, 0.25, "layer", {"a": 1, "out": 1}, 20,
                          protected=frozenset({"out"}))
    assert out["out"].all()
    assert int((~out["a"]).sum()) == 5  # 25% of all 20 weights, taken from the eligible layer


def test_select_channels_global_normalizes_by_channel_size():
    # per weight, layer "big" channels are smaller than layer "small" ones
    scores = {"big": torch.tensor([10.0, 10.0, 40.0]), "small": torch.tensor([2.0, 3.0])}
    keep = {k: torch.ones_like(v, dtype=torch.bool) for k, v in scores.items()}
    out = select_channels(scores, keep, 0.4, "global", {"big": 10, "small": 1}, 32)
    # per weight: big = 1, 1, 4; small = 2, 3. Goal: 13 zeros. big0 (10 weights) goes first; a
    # second big channel would overshoot more than it helps, so small0 fills in (11 zeros); small1
    # is the small layer's last channel.
    assert out["big"].tolist() == [False, True, True]
    assert out["small"].tolist() == [False, True]


def test_structured_pruned_channel_output_is_exactly_zero():
    torch.manual_seed(0)
    net = ConvBN()
    for bn in (net.bn1, net.bn2):  # non-trivial affine parameters and running stats
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(0.1, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
    pruner = Structured()
    masks = pruner.prepare(net)
    assert list(masks.params) == ["conv1.weight", "conv2.weight", "fc.weight"]
    follows_conv1 = {n for n, c in masks.coupled.items()
                     if any(w == "conv1.weight" for w, _, _ in c.sources)}
    assert follows_conv1 == {"conv1.bias", "bn1.weight", "bn1.bias"}
    new = pruner.compute_masks(masks.params, masks.as_dict(), 0.4)
    masks.update(new)
    masks.apply_()
    assert new["fc.weight"].all()  # the output layer's classes are never pruned
    acts = {}
    net.bn1.register_forward_hook(lambda m, i, o: acts.__setitem__("bn1", o))
    net.bn2.register_forward_hook(lambda m, i, o: acts.__setitem__("bn2", o))
    net.eval()
    net(torch.randn(5, 3, 6, 6))
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        dead = ~new[f"{conv}.weight"].reshape(8, -1).any(1)
        assert dead.any()
        assert (acts[bn][:, dead] == 0).all()
        assert (acts[bn][:, ~dead] != 0).any()
    zeros = int((net.conv1.weight == 0).sum() + (net.conv2.weight == 0).sum())
    total = sum(p.numel() for p in masks.params.values())
    assert abs(zeros / total - 0.4) <= 72 / total  # within one conv2 channel (8*3*3 weights)


def test_coupled_parameters_of_registry_models():
    from prunelab.models import build_model

    net = build_model("resnet20", (3, 32, 32), 10)
    cp = coupled_parameters(net, ["conv1.weight", "fc.weight"])
    assert cp["conv1.weight"] == ["bn1.weight", "bn1.bias"]
    assert cp["fc.weight"] == ["fc.bias"]


# -- N:M ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 8), (4, 8, 3, 3)])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8)])
def test_nm_every_group_has_exactly_n_nonzeros(shape, n, m):
    torch.manual_seed(1)
    w = torch.randn(*shape)
    mask = nm_mask(w.abs(), torch.ones_like(w, dtype=torch.bool), n, m, m - n)
    groups = mask.permute(0, *range(2, w.dim()), 1).reshape(-1, m)
    assert (groups.sum(1) == n).all()
    kept = (w.abs() * mask).permute(0, *range(2, w.dim()), 1).reshape(-1, m)
    dropped = (w.abs() * ~mask).permute(0, *range(2, w.dim()), 1).reshape(-1, m)
    assert (kept.max(1).values >= dropped.max(1).values).all()


def test_nm_exact_small_case_and_old_zeros():
    w = torch.tensor([[0.1, 0.4, 0.3, 0.2, 5.0, 1.0, 2.0, 3.0]])
    ones = torch.ones_like(w, dtype=torch.bool)
    assert nm_mask(w, ones, 2, 4, 2).int().tolist() == [[0, 1, 1, 0, 1, 0, 0, 1]]
    old = ones.clone()
    old[0, 4] = False  # the largest is already pruned: stays pruned
    assert nm_mask(w, old, 2, 4, 2).int().tolist() == [[0, 1, 1, 0, 0, 0, 1, 1]]


def test_nm_pruner_errors_and_skip():
    with pytest.raises(PruningConfigError, match=r"pruner.n=4 and pruner.m=4: need integers with "
                                                 r"1 <= n < m"):
        NM(n=4, m=4)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 4, 10))
    with pytest.raises(PruningConfigError, match=r"pruner=nm: 0.weight has input dimension 1, not "
                                                 r"a multiple of m=4"):
        NM().resolve(net)
    p = NM(skip_incompatible=True)
    assert list(p.resolve(net)) == ["2.weight"] and p.skipped == ["0.weight"]
    with pytest.raises(PruningConfigError, match="sparsity must be 0.5"):
        p.check_sparsity(0.7)


# -- gradient-based -----------------------------------------------------------------------------
def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def fit(net, callback, epochs, tmp_path, lr=0.0, extra=()):
    module = ClassifierModule(net, 2, optimizer=functools.partial(torch.optim.SGD, lr=lr))
    pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
               enable_checkpointing=False, enable_model_summary=False,
               default_root_dir=str(tmp_path), callbacks=[callback, *extra]).fit(module, tiny_data())
    return module


def manual_wg(net, loader, batches=None):
    acc = {n: torch.zeros_like(p) for n, p in net.named_parameters() if n.endswith("weight")}
    for i, (x, y) in enumerate(loader):
        if batches is not None and i >= batches:
            break
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        for n, p in net.named_parameters():
            if n in acc:
                acc[n] += (p.detach() * p.grad).abs()
    return acc


def test_taylor_scores_equal_accumulated_abs_w_times_grad(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    expected = manual_wg(net, tiny_data())  # lr=0: weights fixed, so epoch 0 repeats this
    seen = {}

    class Spy(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen[trainer.current_epoch] = cb._wg and {k: v.clone() for k, v in cb._wg.items()}

    cb = PruningCallback(Taylor(), OneShot(1), sparsity=0.5)
    fit(net, cb, 2, tmp_path, extra=[Spy()])
    for n, v in expected.items():
        assert torch.allclose(seen[0][n], v, atol=1e-6), n
    assert not seen[1]  # nothing gathered in the epoch after the last step: no slowdown
    # the mask keeps the largest accumulated scores of each layer
    for n, v in expected.items():
        m = cb.masks[n]
        assert int((~m).sum()) == round(0.5 * m.numel())
        assert v[m].min() >= v[~m].max()


def test_snip_prunes_at_init_from_batches_without_touching_bn(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    init = {k: v.clone() for k, v in net.state_dict().items()}
    probe = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    probe.load_state_dict(init)
    expected = manual_wg(probe, tiny_data(), batches=2)
    pruner = SNIP(score_batches=2)
    assert pruner.at_init and pruner.scope == "global" and pruner.needs == {"calibration"}
    cb = PruningCallback(pruner, OneShot(5), sparsity=0.75)  # schedule ignored: at_init
    masks_at_start = {}

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not masks_at_start:
                masks_at_start.update(cb.masks.as_dict())
                masks_at_start["rm"] = net[1].running_mean.clone()

    fit(net, cb, 1, tmp_path, extra=[Spy()])
    assert cb.events_done == [0]
    assert torch.equal(masks_at_start["rm"], init["1.running_mean"])  # scoring left BN alone
    allw = torch.cat([expected[n].flatten() for n in ("0.weight", "3.weight")])
    keep = torch.cat([masks_at_start[n].flatten() for n in ("0.weight", "3.weight")])
    assert int((~keep).sum()) == round(0.75 * keep.numel())
    assert allw[keep].min() >= allw[~keep].max()


# -- L1 regularization --------------------------------------------------------------------------
def test_l1_and_group_l1_penalties_exact():
    w = nn.Parameter(torch.tensor([[3.0, -4.0], [0.0, 1.0]]))
    assert L1(0.1, [w])().item() == pytest.approx(0.8)
    assert GroupL1(0.1, [w])().item() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="regularizer.weight=-1"):
        L1(-1, [w])


def test_l1_loss_grows_by_exactly_lambda_sum_abs_w(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    weights = [net[0].weight, net[2].weight]
    lam = 1e-2
    x, y = next(iter(tiny_data()))
    with torch.no_grad():
        base = F.cross_entropy(net(x), y).item()
        expected = base + lam * sum(w.abs().sum().item() for w in weights)
    got = {}

    class Capture(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            got.setdefault(batch_idx, float(outputs["loss"] if isinstance(outputs, dict)
                                            else outputs))

    module = ClassifierModule(net, 2, optimizer=functools.partial(torch.optim.SGD, lr=0.0),
                              regularizer=L1(lam, weights))
    pl.Trainer(max_epochs=1, limit_train_batches=1, accelerator="cpu", logger=False,
               enable_progress_bar=False, enable_checkpointing=False,
               callbacks=[Capture()]).fit(module, tiny_data())
    assert got[0] == pytest.approx(expected, rel=1e-6)
    assert got[0] - base == pytest.approx(lam * sum(w.abs().sum().item() for w in weights), rel=1e-5)


def test_taylor_accumulation_survives_checkpoint_resume(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    cb = PruningCallback(Taylor(), OneShot(1), sparsity=0.5)

    class Stop(pl.Callback):  # interrupted after epoch 0: |w*g| gathered, epoch 1's event pending
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    fit(net, cb, 2, tmp_path, extra=[Stop()])
    state = cb.state_dict()
    assert state["wg"] is not None and state["accumulating"]
    cb2 = PruningCallback(Taylor(), OneShot(1), sparsity=0.5)
    cb2.load_state_dict(state)
    cb2.bind(net)
    assert all(torch.equal(cb2._wg[k], state["wg"][k]) for k in state["wg"])


def test_structured_global_l2_compares_rms_across_fan_in():
    # equal RMS weights in both layers; the narrow layer has one slightly weaker channel
    a = nn.Parameter(torch.ones(4, 4))
    b = nn.Parameter(torch.ones(4, 100))
    a.data[2] *= 0.9
    params = {"a": a, "b": b}
    ones = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    m = Structured(norm=2, scope="global").compute_masks(params, ones, 4 / 416)
    assert not m["a"][2].any() and m["b"].all()
