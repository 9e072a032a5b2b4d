"""GraSP and SynFlow (pruning at initialization from the network itself): scores against
independent recomputations, exact sparsity, data-free SynFlow, its positive-path error, weights
untouched, and a real fit through the PruningCallback."""

import copy
import functools

import pytest
import pytorch_lightning as pl
import torch
from helpers import compose_config
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.module import ClassifierModule
from prunelab.pruning import OneShot, PruningCallback, PruningConfigError, select_masks
from prunelab.pruning.methods import (
    GlobalMagnitude,
    GraSP,
    NetworkContext,
    SynFlow,
    build_method,
    synflow_check,
)


def tiny_mlp(tail=None, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh(),
              nn.Linear(8, 3)]
    return nn.Sequential(*layers, *([tail] if tail is not None else []))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def weights(net):
    return {n: p for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1}


def batches(n=2, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 4, 4, generator=g), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def no_data():
    raise AssertionError("a data-free method asked for training batches")


def context(net, data=None, target=None, input_shape=(1, 4, 4)):
    params = weights(net)
    return NetworkContext(net=net, params=params,
                          masks={n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()},
                          batches=(lambda: iter(data)) if data is not None else no_data,
                          loss=lambda b: no_data(), input_shape=input_shape, target=target)


def masks_of(method, net, ctx, sparsity):
    stats = {n: {"score": s} for n, s in method.network_scores(ctx).items()}
    return method.compute_masks(ctx.params, ctx.masks, sparsity, stats=stats)


def zeros(masks):
    return sum(int((~m).sum()) for m in masks.values())


def total(masks):
    return sum(m.numel() for m in masks.values())


def state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_same_state(net, before):
    after = net.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k


# -- GraSP ----------------------------------------------------------------------------------------

def grasp_by_finite_differences(net, names, data, temperature, eps=1e-4):
    """theta * H g with H g = (grad(theta + eps g) - grad(theta - eps g)) / (2 eps), in float64 on a
    copy: independent of the double-backward the method uses."""
    ref = copy.deepcopy(net).double()
    params = dict(ref.named_parameters())
    ws = [params[n] for n in names]

    def grad_sum():
        out = [torch.zeros_like(w) for w in ws]
        for x, y in data:
            loss = nn.functional.cross_entropy(ref(x.double()) / temperature, y)
            for acc, d in zip(out, torch.autograd.grad(loss, ws)):
                acc += d
        return out

    g = grad_sum()
    theta = [w.detach().clone() for w in ws]
    with torch.no_grad():
        for w, t, gi in zip(ws, theta, g):
            w.copy_(t + eps * gi)
    plus = grad_sum()
    with torch.no_grad():
        for w, t, gi in zip(ws, theta, g):
            w.copy_(t - eps * gi)
    minus = grad_sum()
    return {n: t * (p - m) / (2 * eps) for n, t, p, m in zip(names, theta, plus, minus)}


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_scores_are_theta_times_hessian_gradient(temperature):
    net, data = tiny_mlp(), batches(2)
    method = GraSP(score_batches=2, temperature=temperature)
    got = method.network_scores(context(net, data))
    want = grasp_by_finite_differences(net, list(weights(net)), data, temperature)
    assert set(got) == set(want)
    for n in got:
        scale = float(want[n].abs().max())
        assert scale > 0
        torch.testing.assert_close(got[n].double(), want[n], atol=1e-4 * scale, rtol=1e-3)


def test_grasp_uses_only_score_batches_batches():
    net, data = tiny_mlp(), batches(3)
    one = GraSP(score_batches=1).network_scores(context(net, data))
    first = GraSP(score_batches=1).network_scores(context(net, data[:1]))
    for n in one:
        torch.testing.assert_close(one[n], first[n])


def test_grasp_removes_the_largest_minus_theta_hg_as_the_reference():
    net, data = tiny_mlp(), batches(1)
    method = GraSP(score_batches=1)
    ctx = context(net, data)
    hg_theta = method.network_scores(ctx)
    masks = masks_of(method, net, ctx, 0.6)
    # the reference: S = -theta * H g, normalized by |sum S|; the top 60% of S are removed
    flat = -torch.cat([hg_theta[n].flatten() for n in ctx.params])
    k = round(0.6 * flat.numel())
    removed = torch.zeros_like(flat, dtype=torch.bool)
    removed[torch.topk(flat / (flat.sum().abs() + 1e-10), k).indices] = True
    assert torch.equal(~torch.cat([masks[n].flatten() for n in ctx.params]), removed)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_grasp_masks_hit_the_exact_sparsity(scope):
    net = TinyCNN()
    ctx = NetworkContext(net=net, params=weights(net),
                         masks={n: torch.ones_like(p, dtype=torch.bool)
                                for n, p in weights(net).items()},
                         batches=lambda: iter(batches(1)), loss=lambda b: no_data())
    masks = masks_of(GraSP(scope=scope), net, ctx, 0.75)
    if scope == "global":
        assert zeros(masks) == round(0.75 * total(masks))
    else:
        for n, m in masks.items():
            assert int((~m).sum()) == round(0.75 * m.numel()), n


def test_grasp_leaves_weights_buffers_mode_and_grads_as_they_were():
    net = TinyCNN().eval()
    before = state(net)
    ctx = context(net, batches(2))
    GraSP(score_batches=2).network_scores(ctx)
    assert_same_state(net, before)
    assert not net.training
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "hot"])
def test_grasp_temperature_must_be_positive(bad):
    with pytest.raises(PruningConfigError) as err:
        GraSP(temperature=bad)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("pruner.temperature=") and "> 0" in msg


def test_grasp_and_synflow_refuse_structured_and_bad_counts():
    for cls in (GraSP, SynFlow):
        with pytest.raises(PruningConfigError, match="granularity"):
            cls(granularity="structured")
    for bad in (0, 2.5, True):
        with pytest.raises(PruningConfigError, match=r"pruner.score_batches=.* >= 1"):
            GraSP(score_batches=bad)
        with pytest.raises(PruningConfigError, match=r"pruner.rounds=.* >= 1"):
            SynFlow(rounds=bad)
    assert GraSP().scope == "global" and SynFlow().scope == "global"
    assert GraSP().score_batches == 1 and GraSP().temperature == 200.0
    assert SynFlow().rounds == 100


# -- SynFlow --------------------------------------------------------------------------------------

def synflow_reference(net, names, masks, input_shape):
    """|theta * dR/dtheta| written out: a float64 copy, every parameter and buffer |.|, eval mode,
    pruned weights zero, R = sum(net(ones))."""
    ref = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        for t in [*ref.parameters(), *ref.buffers()]:
            if t.is_floating_point():
                t.abs_()
        params = dict(ref.named_parameters())
        for n in names:
            params[n].mul_(masks[n])
    r = ref(torch.ones(1, *input_shape, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(r, [params[n] for n in names])
    return {n: (params[n] * g).abs().detach() for n, g in zip(names, grads)}


def iterative_synflow_reference(net, names, sparsity, rounds, input_shape):
    """The reference loop: round k prunes globally to 1 - (1 - s)^(k / rounds)."""
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters()
             if n in names}
    for k in range(1, rounds + 1):
        scores = synflow_reference(net, names, masks, input_shape)
        top = max(float(s.max()) for s in scores.values())
        scores = {n: s / top for n, s in scores.items()}  # float64 ranking, same order
        masks = select_masks(scores, masks, 1 - (1 - sparsity) ** (k / rounds), "global")
    return masks


def test_synflow_reads_no_data():
    net = TinyCNN()
    ctx = context(net, data=None, target=0.8)  # batches() and loss() raise
    masks = masks_of(SynFlow(rounds=3), net, ctx, 0.8)
    assert zeros(masks) == round(0.8 * total(masks))


def test_synflow_one_round_is_single_shot_abs_theta_dr_dtheta():
    net = TinyCNN()
    ctx = context(net)  # no target: one round needs none
    names = list(ctx.params)
    got = SynFlow(rounds=1).network_scores(ctx)
    want = synflow_reference(net, names, ctx.masks, (1, 4, 4))
    top = max(float(s.max()) for s in want.values())
    for n in names:
        torch.testing.assert_close(got[n].double(), want[n] / top, rtol=1e-5, atol=1e-7)
    masks = masks_of(SynFlow(rounds=1), net, ctx, 0.7)
    for n, m in select_masks(want, ctx.masks, 0.7, "global").items():
        assert torch.equal(masks[n], m), n


@pytest.mark.parametrize("rounds", [2, 5])
def test_synflow_rounds_follow_the_exponential_schedule(rounds):
    net = TinyCNN()
    ctx = context(net, target=0.9)
    masks = masks_of(SynFlow(rounds=rounds), net, ctx, 0.9)
    want = iterative_synflow_reference(net, list(ctx.params), 0.9, rounds, (1, 4, 4))
    for n in masks:
        assert torch.equal(masks[n], want[n]), n
    assert zeros(masks) == round(0.9 * total(masks))


def test_synflow_leaves_the_network_as_it_was():
    net = TinyCNN().train()
    before = state(net)
    SynFlow(rounds=4).network_scores(context(net, target=0.9))
    assert_same_state(net, before)
    assert net.training and all(p.dtype == torch.float32 for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())


def test_synflow_avoids_the_layer_collapse_of_global_magnitude():
    # bias-free: every layer's scores sum to R (the conservation that protects a thin layer is
    # exact; an |bias| injects flow that bypasses the layers before it)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 64, bias=False), nn.ReLU(),
                        nn.Linear(64, 64, bias=False), nn.ReLU(), nn.Linear(64, 10, bias=False))
    with torch.no_grad():
        net[3].weight.mul_(0.01)  # a layer of small weights: global magnitude empties it
    ctx = context(net, target=0.95)
    magnitude = GlobalMagnitude().compute_masks(ctx.params, ctx.masks, 0.95)
    assert int(magnitude["3.weight"].sum()) == 0
    one_shot = masks_of(SynFlow(rounds=1), net, ctx, 0.95)
    assert int(one_shot["3.weight"].sum()) == 0  # single-shot synaptic flow collapses it too
    synflow = masks_of(SynFlow(rounds=20), net, ctx, 0.95)
    assert all(int(m.sum()) > 0.2 * 288 for m in synflow.values())  # 288 kept in all
    assert zeros(synflow) == round(0.95 * total(synflow))


@pytest.mark.parametrize("tail, name", [(nn.LogSoftmax(dim=1), "LogSoftmax"),
                                        (nn.Softmax(dim=1), "Softmax"),
                                        (nn.LayerNorm(3), "LayerNorm")])
def test_synflow_refuses_a_network_without_a_positive_path_in_one_line(tail, name):
    net = tiny_mlp(tail)
    for call in (lambda: SynFlow(rounds=3).network_scores(context(net, target=0.5)),
                 lambda: synflow_check(net, (1, 4, 4))):
        with pytest.raises(PruningConfigError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("pruner=synflow cannot score Sequential")
        assert f"({name})" in msg and "positive path" in msg
    synflow_check(tiny_mlp(), (1, 4, 4))  # the same network without the tail is fine


def test_synflow_needs_the_input_shape():
    net = tiny_mlp()
    for call in (lambda: SynFlow(rounds=1).network_scores(context(net, input_shape=None)),
                 lambda: synflow_check(net, None)):
        with pytest.raises(PruningConfigError) as err:
            call()
        assert "\n" not in str(err.value) and "input shape" in str(err.value)


def test_synflow_check_run_uses_the_input_shape_when_known():
    method = SynFlow()
    method.check_run(tiny_mlp(nn.LogSoftmax(dim=1)), OneShot(), 0.9)  # shape unknown: skipped
    method.input_shape = (1, 4, 4)
    with pytest.raises(PruningConfigError, match="LogSoftmax"):
        method.check_run(tiny_mlp(nn.LogSoftmax(dim=1)), OneShot(), 0.9)


# -- through the PruningCallback ------------------------------------------------------------------

class TinyData(pl.LightningDataModule):
    input_shape = (1, 4, 4)
    num_classes = 3

    def train_dataloader(self):
        x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        y = (x.flatten(1).sum(1) > 0).long() + (x.flatten(1)[:, 0] > 1).long()
        return DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize("method", [SynFlow(rounds=5), GraSP(score_batches=2)],
                         ids=["synflow", "grasp"])
def test_fit_prunes_once_to_the_exact_global_sparsity(tmp_path, method):
    pl.seed_everything(0)
    net = TinyCNN()
    cb = PruningCallback(method, OneShot(1), sparsity=0.9)
    module = ClassifierModule(net, 3, optimizer=functools.partial(torch.optim.SGD, lr=0.05))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=str(tmp_path),
                         callbacks=[cb], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=TinyData())
    assert cb.events_done == [0]
    ws = weights(net)
    assert sum(int((p == 0).sum()) for p in ws.values()) == round(0.9 * total(ws))
    assert all(int((p != 0).sum()) > 0 for p in ws.values())


# -- the configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pruner, cls, keys", [
    ("grasp", GraSP, {"score_batches": 1, "temperature": 200.0, "scope": "global"}),
    ("synflow", SynFlow, {"rounds": 100, "scope": "global"}),
])
def test_pruner_config_composes_and_builds_the_method(pruner, cls, keys):
    cfg = compose_config("train", f"pruner={pruner}")
    method = build_method(cfg.pruner)
    assert type(method) is cls and method.name == pruner and method.at_init
    assert {k: getattr(method, k) for k in keys} == keys
    assert method.distribution is None and cfg.sparsity == 0.9
    built = build_method(compose_config("train", f"pruner={pruner}", "pruner.distribution=erk",
                                        "pruner.scope=layer").pruner)
    assert built.distribution == "erk"
