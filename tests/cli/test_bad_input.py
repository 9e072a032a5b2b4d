"""Bad input: a one-line error naming the value and what is allowed, a non-zero exit, and no
result written (no results.json, no checkpoint)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    "sparsity_range": (["sparsity=1.2"], "sparsity=1.2 is outside the allowed range [0, 1)"),
    "sparsity_negative": (["sparsity=-0.1"], "sparsity=-0.1 is outside the allowed range [0, 1)"),
    "sparsity_nan": (["sparsity=abc"], "sparsity='abc' is not a number; allowed: a number in [0, 1)"),
    "unknown_pruner": (["pruner=magnitud"],
                       "unknown pruner='magnitud'; known: global_magnitude, latency_aware, magnitude, nm, none, "
                       "random, sensitivity, snip, structured, taylor"),
    "unknown_model": (["model=resnet21"], "unknown model='resnet21'; known: conv2, conv4, conv6"),
    "unknown_data": (["data=imagenet"], "unknown data='imagenet'; known: cifar10, cifar100"),
    "unknown_schedule": (["schedule=cubic"], "unknown schedule='cubic'; known: gradual, iterative, "
                                             "oneshot"),
    "schedule_too_late": (["schedule=oneshot", "schedule.at_epoch=4"],
                          "schedule=oneshot prunes at epoch 4 but the run has epochs=4"),
    "include_matches_nothing": (["pruner.include=[nothing.*]"],
                                "pruner.include=['nothing.*'] matches no parameter"),
    "none_with_sparsity": (["pruner=none", "sparsity=0.5"],
                           "pruner=none cannot reach sparsity=0.5"),
    "model_does_not_fit": (["model=vgg16"], "model=vgg16 does not fit input_shape=(1, 28, 28)"),
    "resume_missing": (["resume=/nonexistent/run"], "resume='/nonexistent/run': no checkpoint"),
    "unknown_norm": (["pruner=structured", "pruner.norm=3"], "pruner.norm=3 is not one of 1, 2"),
    "n_not_below_m": (["pruner=nm", "pruner.n=4", "pruner.m=4"],
                      "pruner.n=4 and pruner.m=4: need integers with 1 <= n < m"),
    "m_not_dividing": (["pruner=nm", "model=lenet5"],
                       "pruner=nm: features.0.weight has input dimension 1, not a multiple of m=4"),
    "nm_wrong_sparsity": (["pruner=nm", "sparsity=0.7"],
                          "pruner=nm keeps n=2 of every m=4: sparsity must be 0.5"),
    "profile_unknown_layers": (["pruner=sensitivity", "pruner.profile={tmp}/profile.yaml"],
                               "pruner.profile names layers the model does not prune: conv9.weight"),
    "profile_missing": (["pruner=sensitivity"], "pruner=sensitivity needs pruner.profile=<yaml>"),
    "unknown_regularizer": (["regularizer=l2"], "unknown regularizer='l2'; known: group_l1, l1, none"),
    "profile_file_missing": (["pruner=sensitivity", "pruner.profile=/nope/profile.yaml"],
                             "pruner.profile='/nope/profile.yaml' does not exist"),
    "profile_scaled_past_one": (["pruner=sensitivity", "pruner.profile={tmp}/mlp_profile.yaml",
                                 "sparsity=0.6"],
                                "layer classifier.weight would reach sparsity 1.080"),
    "structured_unreachable": (["pruner=structured", "sparsity=0.999"],
                               "sparsity=0.999 is beyond what pruner=structured can reach"),
    "gpu_without_gpu": (["hardware=gpu"], "hardware=gpu but no CUDA GPU is available"),
    "latency_budget_below_floor": (["model=lenet5", "pruner=latency_aware", "schedule=oneshot",
                                    "hardware.latency_budget_ms=0.0001"],
                                   "is below the smallest reachable latency on this target"),
    "latency_aware_without_budget": (["pruner=latency_aware", "schedule=oneshot"],
                                     "pruner=latency_aware needs hardware.latency_budget_ms="),
    "latency_aware_gradual": (["pruner=latency_aware", "hardware.latency_budget_ms=1"],
                              "pruner=latency_aware prunes once: use schedule=oneshot"),
    "unknown_attack": (["eval.adversarial=cw"], "eval.adversarial='cw'; allowed: fgsm, pgd, null"),
    "negative_epsilon": (["eval.adversarial=fgsm", "eval.epsilon=-1"],
                         "eval.epsilon=-1 must be a number > 0"),
    "mlflow_missing": (["logger=mlflow"], "logger=mlflow needs the mlflow package"),
    "ddp_more_devices_than_cores": (["trainer=ddp", "trainer.devices=64"],
                                    "devices=64 but this machine has"),
    "steps_per_batch_zero": (["data.steps_per_batch=0"],
                             "data.steps_per_batch=0 must be an integer >= 1"),
    "steps_per_batch_ddp": (["trainer=ddp", "trainer.devices=2", "data.steps_per_batch=4"],
                            "data.steps_per_batch=4 needs single-device training"),
    "gpu_2to4_without_gpu": (["hardware=gpu_2to4", "pruner=nm"],
                             "hardware=gpu_2to4 but no CUDA GPU is available"),
    "negative_lr": (["optimizer.lr=-1"], "Invalid learning rate: -1"),
    "trainer_epochs_cut_schedule": (["schedule=oneshot", "schedule.at_epoch=3",
                                     "trainer.max_epochs=2"], "prunes at epoch 3 but the run has "
                                                              "epochs=2"),
}

#: The other commands, and what every command shares: an unknown option, a checkpoint that needs
#: pickle, a run directory without a checkpoint (module, arguments, the one line expected).
COMMAND_CASES = {
    "train_unknown_option": ("prunelab.train", ["debug=fast", "foo=bar"],
                             "foo: no such option"),
    "train_resume_needs_pickle": ("prunelab.train", ["debug=fast", "resume={tmp}/pickled.ckpt"],
                                  "needs pickle to load"),
    "train_lottery_experiment": ("prunelab.train", ["experiment=lth_lenet300"],
                                 "experiment=lth_lenet300 belongs to prunelab.lottery"),
    "lottery_unknown_option": ("prunelab.lottery", ["foo=1"], "foo: no such option"),
    "lottery_train_experiment": ("prunelab.lottery", ["experiment=lenet300_mnist"],
                                 "experiment=lenet300_mnist belongs to prunelab.train"),
    "sensitivity_unknown_option": ("prunelab.sensitivity", ["run={tmp}/norun", "foo=1"],
                                   "foo: no such option"),
    "sensitivity_needs_pickle": ("prunelab.sensitivity", ["run={tmp}/pickled.ckpt"],
                                 "needs pickle to load"),
    "sensitivity_run_without_checkpoint": ("prunelab.sensitivity", ["run={tmp}/norun"],
                                           "no checkpoints/best.ckpt"),
    "measure_unknown_option": ("prunelab.measure", ["run={tmp}/norun", "foo=1"],
                               "foo: no such option"),
    "measure_needs_pickle": ("prunelab.measure", ["run={tmp}/pickled.ckpt"],
                             "needs pickle to load"),
    "measure_run_without_checkpoint": ("prunelab.measure", ["run={tmp}/norun"],
                                       "no checkpoints/best.ckpt"),
    "measure_unknown_hardware": ("prunelab.measure", ["run={tmp}/norun", "hardware=tpu"],
                                 "unknown hardware='tpu'"),
    "export_unknown_option": ("prunelab.export", ["run={tmp}/norun", "foo=1"],
                              "foo: no such option"),
    "export_needs_pickle": ("prunelab.export", ["run={tmp}/pickled.ckpt"],
                            "needs pickle to load"),
    "export_run_without_checkpoint": ("prunelab.export", ["run={tmp}/norun"],
                                      "no checkpoints/best.ckpt"),
    "report_unknown_option": ("prunelab.report", ["{tmp}/norun", "foo=1"],
                              "foo: no such option"),
}
COMMANDS = ("train", "lottery", "sensitivity", "measure", "export", "report")

SENSITIVITY_CASES = {
    "sens_missing_run": (["run=/nonexistent/run"], "run='/nonexistent/run' does not exist"),
    "sens_not_prunelab": (["run={tmp}/other.ckpt"], "is not a prunelab checkpoint"),
    "sens_no_run": ([], "run= is required"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every bad command (``python -m prunelab.train ...``), then collect exit status,
    stdout and stderr."""
    import torch

    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "profile.yaml").write_text("target_sparsity: 0.5\nlayers:\n  conv9.weight: 0.5\n")
    (tmp / "mlp_profile.yaml").write_text("target_sparsity: 0.5\nlayers:\n  classifier.weight: 0.9\n")
    torch.save({"weights": torch.zeros(3)}, tmp / "other.ckpt")
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, tmp / "pickled.ckpt")
    (tmp / "norun").mkdir()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    jobs = []
    for module, cases, pre in (("prunelab.train", CASES, ["debug=fast"]),
                               ("prunelab.sensitivity", SENSITIVITY_CASES, [])):
        for name, (args, _) in cases.items():
            args = [a.replace("{tmp}", str(tmp)) for a in args]
            jobs.append({"module": module, "cwd": str(tmp), "out": str(tmp / f"{name}.log"),
                         "args": [*pre, f"hydra.run.dir={tmp / name}", *args], "name": name})
    for name, (module, args, _) in COMMAND_CASES.items():
        jobs.append({"module": module, "cwd": str(tmp), "out": str(tmp / f"{name}.log"),
                     "name": name, "args": [f"hydra.run.dir={tmp / name}"] * (
                         module in ("prunelab.train", "prunelab.lottery"))
                     + [a.replace("{tmp}", str(tmp)) for a in args]})
    for command in COMMANDS:
        name = f"help_{command}"
        jobs.append({"module": f"prunelab.{command}", "cwd": str(tmp), "name": name,
                     "out": str(tmp / f"{name}.log"), "args": ["--help"]})
    if hasattr(os, "fork"):  # each command forked from one process that imported everything
        (tmp / "jobs.json").write_text(json.dumps(jobs))
        subprocess.run([sys.executable, str(Path(__file__).with_name("forkrun.py")),
                        str(tmp / "jobs.json")], cwd=tmp, env=env, check=True, timeout=600)
    else:  # one interpreter per command
        for job in jobs:
            with open(job["out"] + ".stdout", "w") as out, open(job["out"] + ".stderr", "w") as err:
                rc = subprocess.run([sys.executable, "-m", job["module"], *job["args"]], cwd=tmp,
                                    env=env, stdout=out, stderr=err, timeout=300).returncode
            Path(job["out"] + ".rc").write_text(str(rc))
    return {job["name"]: (int(Path(job["out"] + ".rc").read_text()),
                          Path(job["out"] + ".stdout").read_text(),
                          Path(job["out"] + ".stderr").read_text(), tmp / job["name"])
            for job in jobs}


@pytest.mark.parametrize("case", sorted(CASES) + sorted(SENSITIVITY_CASES))
def test_bad_input_is_one_line_error_and_writes_no_result(outcomes, case):
    rc, stdout, stderr, run_dir = outcomes[case]
    expected = {**CASES, **SENSITIVITY_CASES}[case][1]
    assert rc != 0
    errors = [ln for ln in stderr.splitlines() if ln.startswith("prunelab: error: ")]
    assert len(errors) == 1, stderr[-2000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in stderr
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "profile.yaml").exists()


@pytest.mark.parametrize("case", sorted(COMMAND_CASES))
def test_every_command_answers_bad_input_in_one_line_and_writes_nothing(outcomes, case):
    rc, stdout, stderr, run_dir = outcomes[case]
    assert rc == 2, stderr[-2000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("prunelab: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert COMMAND_CASES[case][2] in errors[0], errors[0]
    assert not run_dir.exists()  # not even the run directory Hydra would have made
    tmp = run_dir.parent
    assert sorted(p.name for p in (tmp / "norun").iterdir()) == []
    assert not (tmp / "outputs").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_shows_its_own_groups_and_examples(outcomes, command):
    rc, stdout, stderr, _ = outcomes[f"help_{command}"]
    assert rc == 0, stderr[-2000:]
    assert f"prunelab.{command}" in stdout and "Examples" in stdout
    assert "schema/" not in stdout and "Traceback" not in stderr
    experiments = "lth_lenet300" in stdout, "lenet300_mnist" in stdout
    assert experiments == {"train": (False, True), "lottery": (True, False)}.get(
        command, (False, False))
