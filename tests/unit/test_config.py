"""Compose tests: every option of every config group composes and instantiates."""

from pathlib import Path

import pytest
import torch
from helpers import compose_config
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import prunelab.config  # noqa: F401  (registers the schemas and resolvers)
from prunelab.cli import (
    COMMAND_GROUPS,
    CONF_DIR,
    check_group_options,
    experiments,
    known_options,
)
from prunelab.errors import ConfigError
from prunelab.pruning import PruningMethod, Schedule, build_method

CHECKED_GROUPS = COMMAND_GROUPS["train"]


def check_overrides(argv):
    check_group_options(argv, CHECKED_GROUPS, "train")


def compose_train(*overrides):
    return compose_config("train", *overrides)


def test_defaults_compose_to_a_magnitude_run():
    cfg = compose_train()
    assert build_method(cfg.pruner).name == "magnitude" and cfg.sparsity == 0.5
    assert cfg.trainer.max_epochs == cfg.epochs == 10
    # gradual default: epochs_frac 0.1 .. 0.6 of 10 epochs
    assert (cfg.schedule.start_epoch, cfg.schedule.end_epoch) == (1, 6)


def test_method_specific_default_sparsity(tmp_path):
    assert compose_train("pruner=nm").sparsity == 0.5
    assert compose_train("pruner=nm", "pruner.n=1", "pruner.m=4").sparsity == 0.75
    profile = tmp_path / "p.yaml"
    profile.write_text("target_sparsity: 0.85\nlayers: {a.weight: 0.9}\n")
    assert compose_train("pruner=sensitivity", f"pruner.profile={profile}").sparsity == 0.85


def test_pruner_none_defaults_to_zero_sparsity():
    assert compose_train("pruner=none").sparsity == 0.0
    assert compose_train("pruner=none", "sparsity=0.3").sparsity == 0.3  # rejected later, at run


def _class_of(target):
    import importlib

    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", known_options("pruner"))
def test_every_pruner_file_builds_its_class(name, tmp_path):
    """conf/pruner/<name>.yaml composes, names its class in _target_, and builds an instance of
    it whose registry name is <name> (what results.json reports as "pruner")."""
    profile = tmp_path / "profile.yaml"
    profile.write_text("target_sparsity: 0.6\nlayers: {a.weight: 0.7}\n")
    torch.save({}, tmp_path / "masks.pt")
    extra = {"sensitivity": [f"pruner.profile={profile}"],
             "latency_aware": ["hardware.latency_budget_ms=1.0"],
             "fixed_mask": [f"pruner.masks={tmp_path / 'masks.pt'}"]}.get(name, [])
    cfg = compose_train(f"pruner={name}", *extra)
    target = cfg.pruner._target_
    assert target.startswith("prunelab.pruning.methods.")
    method = build_method(cfg.pruner)
    assert type(method) is _class_of(target) and isinstance(method, PruningMethod)
    assert method.name == name and method.describe()["pruner"] == name
    assert method.needs <= {"gradients", "calibration", "latency", "profile", "network",
                            "pretrained"}
    method.check_sparsity(cfg.sparsity)  # each method's default sparsity is valid for it


def test_every_schedule_file_instantiates_its_schedule():
    for name in known_options("schedule"):
        sched = instantiate(compose_train(f"schedule={name}").schedule)
        assert isinstance(sched, Schedule) and sched.name == name


@pytest.mark.parametrize("group", [g for g in CHECKED_GROUPS])
def test_every_option_of_every_group_composes_and_instantiates(group, tmp_path):
    options = known_options(group)
    assert options, f"group {group} has no options"
    profile = tmp_path / "profile.yaml"
    profile.write_text("target_sparsity: 0.6\nlayers: {features.0.weight: 0.7, classifier.weight: 0.2}\n")
    if group == "experiment":
        options = experiments("train")
    for opt in options:
        if (group, opt) in (("data", "imagefolder"), ("data", "custom"), ("model", "custom")):
            continue  # a folder of images / the user's module: test_imagefolder.py, test_any_model
        torch.save({}, tmp_path / "masks.pt")
        extra = {("pruner", "sensitivity"): [f"pruner.profile={profile}"],
                 ("pruner", "latency_aware"): ["hardware.latency_budget_ms=1.0"],
                 ("pruner", "fixed_mask"): [f"pruner.masks={tmp_path / 'masks.pt'}"],
                 }.get((group, opt), [])
        cfg = compose_train(f"{group}={opt}", *extra)
        OmegaConf.resolve(cfg)
        if group == "data" or group == "experiment":
            dm = instantiate(cfg.data)
            assert len(dm.input_shape) == 3 and dm.num_classes > 1
        if group in ("model", "experiment"):
            shape = (1, 28, 28) if opt in ("mlp", "lenet5", "seed_cnn") else (3, 32, 32)
            net = instantiate(cfg.model, input_shape=shape, num_classes=10)
            assert net(torch.zeros(2, *shape)).shape == (2, 10)
        if group in ("pruner", "experiment"):
            method = build_method(cfg.pruner)
            assert isinstance(method, PruningMethod)
            method.check_sparsity(cfg.sparsity)  # each method's default sparsity is valid for it
        if group in ("schedule", "experiment", "debug"):
            sched = instantiate(cfg.schedule)
            sched.validate(cfg.epochs, 0.5)
        if group == "optimizer":
            opt_obj = instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(2))])
            assert isinstance(opt_obj, torch.optim.Optimizer)
        if group == "lr_scheduler" and cfg.get("lr_scheduler"):
            o = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
            instantiate(cfg.lr_scheduler)(optimizer=o)
        if group == "logger" and cfg.get("logger"):
            import importlib.util

            if opt == "mlflow" and importlib.util.find_spec("mlflow") is None:
                continue  # optional package; its absence is a one-line error (test_bad_input)
            instantiate(cfg.logger, save_dir=str(tmp_path))
        if group == "trainer" or (group == "hardware" and opt == "cpu"):
            trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
            assert trainer.max_epochs == cfg.epochs
        if group == "hardware":
            assert cfg.hardware.accelerator in ("cpu", "gpu")


def test_typos_in_structured_configs_fail_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose_train("pruner.scpoe=global")
    with pytest.raises(ConfigCompositionException):
        compose_train("pruner.scope=glob")
    # each method has its own schema: another method's key fails too
    for overrides in (["pruner.n=2"], ["pruner=nm", "pruner.norm=2"],
                      ["pruner=nm", "pruner.scope=global"], ["pruner=taylor", "pruner.granularity=nm"],
                      ["pruner=none", "pruner.seed=1"], ["pruner=structured", "pruner.profile=p.yaml"],
                      ["pruner=magnitude", "pruner.latency_budget_ms=1"]):
        with pytest.raises(ConfigCompositionException):
            compose_train(*overrides)
    # and every key a user sets today still composes with its method
    cfg = compose_train("pruner=structured", "pruner.norm=2", "pruner.scope=global",
                        "pruner.include=[features.*]", "pruner.exclude=[classifier.*]",
                        "pruner.seed=3", "pruner.default_sparsity=0.4")
    method = build_method(cfg.pruner)
    assert (method.norm, method.scope, method.include, method.exclude, method.seed) == (
        2, "global", ["features.*"], ["classifier.*"], 3) and cfg.sparsity == 0.4
    nm = build_method(compose_train("pruner=nm", "pruner.n=1", "pruner.m=8",
                                    "pruner.skip_incompatible=true").pruner)
    assert (nm.n, nm.m, nm.skip_incompatible) == (1, 8, True)
    taylor = build_method(compose_train("pruner=taylor", "pruner.granularity=structured",
                                        "pruner.score_batches=3").pruner)
    assert (taylor.granularity, taylor.score_batches) == ("structured", 3)
    lat = compose_train("pruner=latency_aware", "pruner.latency_budget_ms=2",
                        "pruner.latency_batch_size=8", "pruner.latency_threads=2").pruner
    assert (lat.latency_budget_ms, lat.latency_batch_size, lat.latency_threads) == (2, 8, 2)
    with pytest.raises(ConfigCompositionException):
        compose_train("schedule=oneshot", "schedule.at_epoch=soon")
    with pytest.raises(ConfigCompositionException):
        compose_train("schedule=gradual", "schedule.rounds=3")


def test_schedule_epochs_follow_run_length():
    cfg = compose_train("epochs=20", "schedule=oneshot")
    assert cfg.schedule.at_epoch == 10
    cfg = compose_train("debug=fast", "schedule=iterative")
    sched = instantiate(cfg.schedule)
    sched.validate(cfg.epochs, 0.5)


def test_check_overrides_lists_known_names():
    with pytest.raises(ConfigError, match="unknown pruner='magnitud'; known: fixed_mask, global_magnitude, "
                                          "grasp, lamp, latency_aware, magnitude, movement, nm, "
                                          "none, random, rigl, sensitivity, set, snip, "
                                          "structured, synflow, taylor"):
        check_overrides(["pruner=magnitud"])
    with pytest.raises(ConfigError, match="unknown model='resnet21'"):
        check_overrides(["model=mlp,resnet21"])
    check_overrides(["pruner=magnitude,random", "sparsity=0.5", "+foo=bar"])


def test_experiments_are_global_overlays():
    cfg = compose_train("experiment=lenet300_mnist")
    assert cfg.sparsity == 0.9 and cfg.epochs == 20 and cfg.model._target_.endswith("MLP")
    assert Path(CONF_DIR / "experiment" / "lenet300_mnist.yaml").read_text().startswith("# @package")


@pytest.mark.parametrize("experiment", experiments("train"))
def test_every_experiment_shrinks_with_debug_fast(experiment):
    cfg = compose_train(f"experiment={experiment}", "debug=fast")
    assert cfg.epochs == 4 and cfg.data.subset == 1000
    instantiate(cfg.schedule).validate(cfg.epochs, 0.5)


def test_speedup_advice_per_target():
    from prunelab.hardware import speedup_warnings
    from prunelab.pruning import NM, Dense, Magnitude, Structured

    unstructured = Magnitude()
    structured = Structured()
    nm = NM()
    assert speedup_warnings(unstructured, 0.5, "cpu")
    assert not speedup_warnings(unstructured, 0.95, "cpu")  # the CSR path may pay off
    assert not speedup_warnings(structured, 0.5, "edge_cpu")
    assert "semi-structured" in speedup_warnings(nm, 0.5, "cpu")[0]
    assert speedup_warnings(unstructured, 0.5, "gpu")
    assert not speedup_warnings(nm, 0.5, "gpu_2to4")
    assert speedup_warnings(structured, 0.5, "gpu_2to4")
    assert not speedup_warnings(Dense(), 0.0, "cpu")


def test_edge_cpu_profile_measures_one_thread_batch_one():
    cfg = compose_train("hardware=edge_cpu")
    assert cfg.hardware.threads == 1 and list(cfg.measure.batch_sizes) == [1]


def test_slurm_launcher_and_named_sweeps_compose():
    cfg = compose_train("hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                        "hydra.launcher.gpus_per_node=1", "experiment=methods_vs_sparsity")
    # Hydra keeps its own node out of compose()'s result unless asked; check the sweep params
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "experiment=methods_vs_sparsity"],
                       return_hydra_config=True)
    assert full.hydra.launcher.partition == "gpu" and full.hydra.launcher.timeout_min == 60
    assert "submitit" in full.hydra.launcher._target_.lower()
    assert full.hydra.sweeper.params.pruner == "magnitude,global_magnitude,random"
    assert cfg.data.batch_size == 64


def test_a_config_dir_of_ones_own_on_the_search_path_passes_the_command_line_checks(tmp_path):
    """docs/adding_a_method.md: a method's YAML in the user's own config directory."""
    from prunelab.cli import check_keys
    from prunelab.errors import ConfigError

    (tmp_path / "pruner").mkdir()
    (tmp_path / "pruner" / "squared.yaml").write_text(
        "defaults:\n  - /schema/pruner/score_then_select@_here_\n  - _self_\n"
        "_target_: prunelab.pruning.methods.Magnitude\n")
    argv = [f"hydra.searchpath=[file://{tmp_path}]", "pruner=squared", "sparsity=0.8"]
    check_group_options(argv, CHECKED_GROUPS, "train")
    check_keys("train", argv)
    with pytest.raises(ConfigError, match="pruner.scpoe: no such option"):
        check_keys("train", [*argv, "pruner.scpoe=global"])
    with pytest.raises(ConfigError, match="pruner/nope"):
        check_keys("train", [argv[0], "pruner=nope"])
