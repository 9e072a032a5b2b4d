"""The scratch control's pieces: a fresh compact architecture, the compute budget, the fixed
mask and the bad values."""

import pytest
import torch
from omegaconf import OmegaConf

from prunelab.compress.compact import compact, save_compact
from prunelab.control import _budget, check_control, fresh_architecture
from prunelab.errors import ConfigError
from prunelab.models import build_from_config
from prunelab.pruning.methods import FixedMask
from prunelab.pruning.params import PruningConfigError

LENET5 = {"_target_": "prunelab.models.LeNet5"}


def _compact_saved(node, dead, tmp_path):
    """A zoo model whose first layer has ``dead`` dead outputs, compacted and saved."""
    torch.manual_seed(0)
    net = build_from_config(node, (1, 28, 28), 10)
    with torch.no_grad():
        net.features[0].weight[:dead] = 0
        net.features[0].bias[:dead] = 0
    small, _ = compact(net.eval(), (1, 28, 28))
    path = save_compact(small, tmp_path / "a.pt", input_shape=(1, 28, 28), num_classes=10,
                        model_config=node)
    return net, small, path


def test_fresh_architecture_has_the_compact_shapes_and_new_weights(tmp_path):
    net, small, path = _compact_saved(LENET5, 2, tmp_path)  # two dead filters
    torch.manual_seed(1)
    fresh = fresh_architecture(str(path))
    got, want = fresh.state_dict(), small.state_dict()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert got["features.0.weight"].shape[0] == net.features[0].weight.shape[0] - 2
    for k, v in want.items():
        if k.endswith("weight") and v.dim() > 1:
            assert not torch.equal(got[k], v), k  # not the trained weights
            assert torch.isfinite(got[k]).all() and got[k].abs().sum() > 0
    torch.manual_seed(1)
    again = fresh_architecture(str(path))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), got.values()))
    assert fresh(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_scratch_b_scales_epochs_by_the_macs_ratio_up_to_the_cap():
    cfg = OmegaConf.create({"epochs": 10, "control_budget": "compute", "control_max_factor": 3})
    res = {"macs": {"dense": 1000, "compact": 800, "nonzero": 100}}
    assert _budget(cfg, res, structured=True) == (12, 1.25)
    assert _budget(cfg, res, structured=False) == (30, 3.0)  # 10x, capped at 3
    cfg.control_budget = "epochs"
    assert _budget(cfg, res, structured=False) == (10, 1.0)


@pytest.mark.parametrize("values, message", [
    ({"control": "finetune"}, "control='finetune'; allowed: scratch, null"),
    ({"control": "scratch", "control_budget": "flops"},
     "control_budget='flops'; allowed: epochs, compute"),
    ({"control": "scratch", "sparsity": 0.0}, "control=scratch trains this run's final pruned "
                                              "architecture from a fresh initialization, but "
                                              "this run has no final mask"),
    ({"control": "scratch", "epochs": 0}, "control=scratch trains for the pruned run's epochs"),
])
def test_bad_control_values_are_one_line(values, message):
    cfg = OmegaConf.create({"control": None, "control_budget": "epochs", "epochs": 2,
                            "pruner": {"_target_": "prunelab.pruning.methods.Magnitude"},
                            **values})
    with pytest.raises(ConfigError) as err:
        check_control(cfg, float(values.get("sparsity", 0.5)))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_fixed_mask_trains_the_given_mask_and_names_a_mismatch(tmp_path):
    torch.save({"fc.weight": torch.tensor([[True, False], [False, False]])}, tmp_path / "m.pt")
    method = FixedMask(masks=str(tmp_path / "m.pt"))
    net = torch.nn.Sequential()
    net.add_module("fc", torch.nn.Linear(2, 2))
    params = method.resolve(net)
    masks = method.compute_masks(params, {"fc.weight": torch.ones(2, 2, dtype=torch.bool)}, 0.75)
    assert masks["fc.weight"].tolist() == [[True, False], [False, False]]
    method.check_run(net, None, 0.75)
    with pytest.raises(PruningConfigError, match=r"sparsity=0.5 but pruner.masks=.* prunes "
                                                 r"0.750000 of these parameters"):
        method.check_run(net, None, 0.5)
    with pytest.raises(PruningConfigError, match="pruner.masks='/nope.pt' cannot be read"):
        FixedMask(masks="/nope.pt")


def _row(pruner, sparsity, acc, seed=0):
    return {"data": "mnist", "model": "mlp", "pruner": pruner, "target_sparsity": sparsity,
            "seed": seed, "test_acc": acc, "sparsity": {"global": sparsity, "per_layer": {}},
            "wall_time_s": 1.0, "group_hash": f"{pruner}{sparsity}"}


def test_the_sweep_report_puts_dense_and_random_beside_every_row():
    from prunelab.analysis.sweep import markdown, summarize

    rows = summarize([_row("none", 0.0, 0.98), _row("none", 0.0, 0.96, seed=1),
                      _row("random", 0.9, 0.90), _row("random", 0.98, 0.70),
                      _row("rigl", 0.9, 0.97), _row("lamp", 0.98, 0.95)])
    by = {(r["pruner"], r["target_sparsity"]): r for r in rows}
    assert by[("rigl", 0.9)]["dense_acc"] == pytest.approx(0.97)
    assert by[("rigl", 0.9)]["random_acc"] == pytest.approx(0.90)
    assert by[("lamp", 0.98)]["random_acc"] == pytest.approx(0.70)
    lines = markdown(rows).splitlines()
    assert "| dense acc | random acc |" in lines[0]
    lamp = next(ln for ln in lines if "| lamp |" in ln)
    assert "| 97.00 | 70.00 |" in lamp
    # a sweep without dense or random runs has no such columns
    assert "dense acc" not in markdown(summarize([_row("lamp", 0.98, 0.95)]))


def test_fresh_architecture_uses_the_zoo_models_own_init_scheme(tmp_path):
    node = {"_target_": "prunelab.models.MLP", "hidden": [64, 32], "init": "xavier_normal"}
    _, _, path = _compact_saved(node, 8, tmp_path)  # eight dead hidden units
    torch.manual_seed(3)
    fresh = fresh_architecture(str(path))
    w = fresh.features[0].weight
    assert w.shape == (56, 784)
    xavier = (2.0 / (784 + 56)) ** 0.5  # N(0, 2/(fan_in+fan_out)), not PyTorch's default
    assert abs(float(w.std()) - xavier) < 0.1 * xavier
    assert float(fresh.features[0].bias.abs().sum()) == 0.0  # the scheme zeroes biases


def test_a_finished_control_of_another_budget_is_refused_in_one_line(tmp_path):
    from prunelab.train import with_control

    cfg = OmegaConf.create({"control": "scratch", "control_budget": "compute"})
    done = {"test_acc": 0.9, "control": {"budget": "epochs", "dir": "control_scratch"}}
    with pytest.raises(ConfigError, match=r"control_budget=compute: .* already has its "
                                          r"control=scratch with control_budget=epochs"):
        with_control(cfg, tmp_path, done)
    cfg.control_budget = "epochs"
    assert with_control(cfg, tmp_path, done) is done  # the same budget: nothing to do
