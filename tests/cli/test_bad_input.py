"""Bad input: a one-line error naming the value and what is allowed, a non-zero exit, and no
result written (no results.json, no checkpoint)."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import FAST

CASES = {
    "sparsity_range": (["sparsity=1.2"], "sparsity=1.2 is outside the allowed range [0, 1)"),
    "sparsity_negative": (["sparsity=-0.1"], "sparsity=-0.1 is outside the allowed range [0, 1)"),
    "sparsity_nan": (["sparsity=abc"], "sparsity='abc' is not a number; allowed: a number in [0, 1)"),
    "unknown_pruner": (["pruner=magnitud"],
                       "unknown pruner='magnitud'; known: fixed_mask, global_magnitude, grasp, lamp, latency_aware, "
                       "magnitude, movement, nm, none, random, rigl, sensitivity, set, snip, structured, "
                       "synflow, taylor"),
    "unknown_model": (["model=resnet21"], "unknown model='resnet21'; known: conv2, conv4, conv6"),
    "unknown_data": (["data=imagenet"], "unknown data='imagenet'; known: cifar10, cifar100"),
    "unknown_schedule": (["schedule=cubic"], "unknown schedule='cubic'; known: gradual, iterative, "
                                             "oneshot"),
    "schedule_too_late": (["schedule=oneshot", "schedule.at_epoch=4"],
                          "schedule=oneshot prunes at epoch 4 but the run has epochs=4"),
    "unquoted_list_item": (["pruner.include=[fc1=x]"],
                           "cannot parse 'pruner.include=[fc1=x]' (no viable alternative at "
                           "input '[fc1='); allowed: key=value, group=option, +key=value; quote "
                           "a list item holding '=' or ',' for Hydra: 'key=[\"a=b\"]'"),
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
    "hardware_runtime_unknown": (["hardware.runtime=tflite"],
                                 "hardware.runtime='tflite'; allowed: eager, executorch, onnxruntime"),
    "hardware_memory_format_unknown": (["hardware.memory_format=nhwc"],
                                       "hardware.memory_format='nhwc'; allowed: contiguous, "
                                       "channels_last"),
    "latency_aware_without_budget": (["pruner=latency_aware", "schedule=oneshot"],
                                     "pruner=latency_aware needs hardware.latency_budget_ms="),
    "latency_aware_gradual": (["pruner=latency_aware", "hardware.latency_budget_ms=1"],
                              "pruner=latency_aware prunes once: use schedule=oneshot"),
    "unknown_attack": (["eval.adversarial=cw"],
                       "eval.adversarial='cw'; allowed: fgsm, pgd, autoattack, null"),
    "negative_epsilon": (["eval.adversarial=fgsm", "eval.epsilon=-1"],
                         "eval.epsilon=-1 is outside (0, 1] (pixel units"),
    "eval_epsilon_above_one": (["eval.adversarial=pgd", "eval.epsilon=2"],
                               "eval.epsilon=2 is outside (0, 1] (pixel units"),
    "train_unknown_attack": (["train.adversarial=cw"],
                             "train.adversarial='cw'; allowed: fgsm, pgd, null"),
    "train_epsilon_above_one": (["train.adversarial=pgd", "train.epsilon=1.5"],
                                "train.epsilon=1.5 is outside (0, 1] (pixel units"),
    "train_fraction_zero": (["train.adversarial=fgsm", "train.fraction=0"],
                            "train.fraction=0 is outside (0, 1] (the share of each training batch"),
    "train_steps_zero": (["train.adversarial=pgd", "train.steps=0"],
                         "train.steps=0 must be an integer >= 1"),
    "train_start_after_end": (["train.adversarial=pgd", "train.start_epoch=4"],
                              "train.start_epoch=4 is not before the run's end (epochs=4)"),
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
    "rigl_with_a_schedule": (["pruner=rigl", "schedule=iterative"],
                             "schedule=iterative: pruner=rigl is sparse from step 0 (its masks "
                             "move at the final sparsity); it takes no pruning schedule"),
    "set_schedule_key": (["pruner=set", "schedule.start_epoch=0"],
                         "schedule.start_epoch=0: pruner=set is sparse from step 0"),
    "rigl_without_training": (["pruner=rigl", "epochs=0"],
                              "epochs=0 with pruner=rigl: its masks move during training"),
    "rigl_delta_t": (["pruner=rigl", "pruner.delta_t=0"],
                     "pruner.delta_t=0 must be an integer > 0"),
    "set_drop_fraction": (["pruner=set", "pruner.drop_fraction=1"],
                          "pruner.drop_fraction=1.0 must be in (0, 1)"),
    "movement_without_trained_weights": (["pruner=movement"],
                                         "pruner=movement prunes by how trained weights move "
                                         "during fine-tuning: give init_from=<run dir|.ckpt|.pt>"),
    "rewind_epoch_after_first_round": (["schedule=iterative", "schedule.rewind=weights",
                                        "schedule.rewind_epoch=5"],
                                       "schedule.rewind_epoch=5 must be before the first pruning "
                                       "round (epoch 0)"),
    "scratch_without_a_mask": (["pruner=none", "sparsity=0", "control=scratch"],
                               "control=scratch trains this run's final pruned architecture from "
                               "a fresh initialization, but this run has no final mask"),
    "erk_structured": (["pruner=structured", "pruner.distribution=erk"],
                       "pruner.distribution=erk sets each weight tensor's sparsity, which needs "
                       "pruner.granularity=unstructured (this is structured)"),
}
if importlib.util.find_spec("torchattacks") is None:  # the optional extra prunelab[robust]
    CASES["autoattack_not_installed"] = (["eval.adversarial=autoattack"],
                                         "eval.adversarial=autoattack needs the torchattacks "
                                         "package (its AutoAttack): pip install torchattacks")

#: Issue 16's bad input (the new methods, control=scratch, the attacks): one line, exit 2, and
#: not even the run directory is made.
ISSUE16_CASES = sorted({"rigl_with_a_schedule", "set_schedule_key", "rigl_without_training",
                        "rigl_delta_t", "set_drop_fraction", "movement_without_trained_weights",
                        "rewind_epoch_after_first_round", "scratch_without_a_mask",
                        "erk_structured", "negative_epsilon", "eval_epsilon_above_one",
                        "train_epsilon_above_one"} | ({"autoattack_not_installed"} & set(CASES)))

#: A sweep job's directory name: Hydra's override syntax (= and ,) inside a path value.
SWEEP_JOB = "{tmp}/multirun/pruner=magnitude,sparsity=0.7"

#: The other commands, and what every command shares: an unknown option, a checkpoint that needs
#: pickle, a run directory without a checkpoint (module, arguments, the one line expected).
#: The lottery's tiny run (as in tests/cli/test_lottery.py): bad values are refused before it trains.
LOTTERY_TINY = ["data=synthetic", "data.input_shape=[1,8,8]", "data.num_samples=640",
                "data.val_size=128", "data.num_test_samples=128", "data.batch_size=64",
                "model=mlp", "model.hidden=[32,16]", "epochs=2", "logger=none",
                "trainer.enable_progress_bar=false"]

COMMAND_CASES = {
    "measure_unknown_key": ("prunelab.measure", ['foo=1'],
                    'foo: no such option'),
    "measure_runs_text": ("prunelab.measure", ['runs=abc'],
                    'runs=abc'),
    "measure_unknown_hardware_phone": ("prunelab.measure", ["hardware=phone"],
                    "hardware='phone'; known: cpu, edge_cpu, gpu, gpu_2to4"),
    "measure_no_run": ("prunelab.measure", [],
                    'run= is required'),
    "measure_missing_run": ("prunelab.measure", ['run=nope'],
                    "run='nope' does not exist"),
    "measure_memory_format": ("prunelab.measure", ['run=nope', 'memory_format=nhwc'],
                    "memory_format='nhwc'; allowed: measured, contiguous, channels_last"),
    "measure_qat_epochs": ("prunelab.measure", ['run=nope', 'qat_epochs=-1'],
                    'qat_epochs=-1 must be an integer >= 0 (0: no int8_qat variant)'),
    "measure_batch_sizes": ("prunelab.measure", ['run=nope', 'batch_sizes=[0]'],
                    'batch_sizes=[0] must be integers >= 1'),
    "measure_threads": ("prunelab.measure", ['run=nope', 'hardware=edge_cpu', 'hardware.threads=x'],
                    "hardware.threads='x'"),
    "lottery_levels": ("prunelab.lottery", [*LOTTERY_TINY, 'lottery.levels=0'],
                    'lottery.levels=0 must be an integer >= 1'),
    "lottery_fraction_above": ("prunelab.lottery", [*LOTTERY_TINY, 'lottery.prune_fraction=1.5'],
                    'lottery.prune_fraction=1.5 is outside the allowed range (0, 1)'),
    "lottery_fraction_zero": ("prunelab.lottery", [*LOTTERY_TINY, 'lottery.prune_fraction=0'],
                    'lottery.prune_fraction=0.0 is outside the allowed range (0, 1)'),
    "lottery_rewind_step": ("prunelab.lottery", [*LOTTERY_TINY, 'lottery.rewind_step=100000'],
                    "lottery.rewind_step=100000 is beyond level 0's length: allowed 0..15 (2 epochs of 8 iterations)"),
    "lottery_rewind_epoch": ("prunelab.lottery", [*LOTTERY_TINY, 'lottery.rewind_epoch=2'],
                    "lottery.rewind_epoch=2 is beyond level 0's length"),
    "lottery_memory_format": ("prunelab.lottery", [*LOTTERY_TINY, "hardware.memory_format=nhwc"],
                              "hardware.memory_format='nhwc'; allowed: contiguous, channels_last"),
    "lottery_control": ("prunelab.lottery", [*LOTTERY_TINY, 'lottery.control=reinit'],
                    "lottery.control='reinit'; allowed: none, random_reinit, random_mask"),
    "lottery_train_experiment2": ("prunelab.lottery", [*LOTTERY_TINY, 'experiment=lenet300_mnist'],
                    'experiment=lenet300_mnist belongs to prunelab.train'),
    "lottery_unknown_model": ("prunelab.lottery", [*LOTTERY_TINY, 'model=mlpp'],
                    "unknown model='mlpp'; known: conv2, conv4"),
    "lottery_typo_key": ("prunelab.lottery", [*LOTTERY_TINY, 'lottery.levles=3'],
                    'lottery.levles: no such option'),
    "lottery_layer_fraction_glob": ("prunelab.lottery", [*LOTTERY_TINY, '++lottery.layer_fractions={conv9.*:0.1}'],
                    "lottery.layer_fractions pattern 'conv9.*' matches no prunable parameter"),
    "sensitivity_checkpoint": ("prunelab.sensitivity", ['run={tmp}', 'checkpoint=middle'],
                    "checkpoint='middle'; allowed: best, last"),
    "sensitivity_ratios": ("prunelab.sensitivity", ['run={tmp}', 'ratios=[0.5,1.5]'],
                    'ratios=[0.5, 1.5] must be numbers in (0, 1)'),
    "sensitivity_target": ("prunelab.sensitivity", ['run={tmp}', 'target_sparsity=1'],
                    'target_sparsity=1 must be a number in (0, 1)'),
    "sensitivity_group": ("prunelab.sensitivity", ['run={tmp}', 'model=mlp'],
                    'model: no such option'),
    "train_unknown_option": ("prunelab.train", ["debug=fast", "foo=bar"],
                             "foo: no such option"),
    "train_resume_needs_pickle": ("prunelab.train",
                                  ["debug=fast", "resume={tmp}/prun/checkpoints/last.ckpt"],
                                  "needs pickle to load"),
    "train_resume_outside_a_run": ("prunelab.train", ["debug=fast", "resume={tmp}/pickled.ckpt"],
                                   "is not in a run's checkpoints/ folder"),
    "train_resume_in_a_sweep": ("prunelab.train", ["-m", "debug=fast", "resume={tmp}/prun"],
                                "resume= continues one run; to continue a killed sweep"),
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
    # a sweep job's directory, unquoted: the whole path reaches the command
    "train_resume_sweep_job": ("prunelab.train", ["debug=fast", f"resume={SWEEP_JOB}"],
                               "multirun/pruner=magnitude,sparsity=0.7': no checkpoint"),
    "train_teacher_sweep_job": ("prunelab.train", ["debug=fast", f"distill.teacher={SWEEP_JOB}"],
                                "multirun/pruner=magnitude,sparsity=0.7': no checkpoint"),
    "sensitivity_run_sweep_job": ("prunelab.sensitivity", [f"run={SWEEP_JOB}"],
                                  "multirun/pruner=magnitude,sparsity=0.7': no checkpoint"),
    "measure_run_sweep_job": ("prunelab.measure", [f"run={SWEEP_JOB}"],
                              "multirun/pruner=magnitude,sparsity=0.7': no checkpoint"),
    # README's form (no ++) reaches the lottery's own check of the globs
    "lottery_layer_fractions_readme_form": ("prunelab.lottery", [
        "debug=fast", "lottery.layer_fractions={conv9.*: 0.1}"],
        "lottery.layer_fractions pattern 'conv9.*' matches no prunable parameter"),
}
COMMANDS = ("train", "lottery", "sensitivity", "measure", "export", "report")

SENSITIVITY_CASES = {
    "sens_missing_run": (["run=/nonexistent/run"], "run='/nonexistent/run' does not exist"),
    "sens_not_prunelab": (["run={tmp}/other.ckpt"], "is not a prunelab checkpoint"),
    "sens_no_run": ([], "run= is required"),
}

#: Issue 14 (train, after debug=fast): stderr is this one line and nothing else, exit status 2,
#: and no directory is created (not the run directory, not outputs/, not data/ by a failed
#: download). Offline is certain: the children's HTTP(S) proxy is a closed local port.
STRICT_CASES = {
    "data_root_missing": (["data.root=/nonexistent"],
                          ("mnist files not found under data.root='/nonexistent' and the download "
                           "failed (it needs internet access)",
                           "put MNIST/raw/{train-images-idx3-ubyte,")),
    "data_dir_missing_a_file": (["data.root={tmp}/partial"],
                                ("mnist: t10k-labels-idx1-ubyte[.gz] missing from ",
                                 "partial/MNIST/raw (it has the other 3 IDX files)")),
    "fashion_mnist_offline": (["data=fashion_mnist"],
                              ("fashion_mnist files not found under data.root=",
                               "the download failed (it needs internet access)",
                               "put FashionMNIST/raw/{train-images-idx3-ubyte,")),
    "seed_not_a_number": (["seed=abc"], ("seed='abc' must be an integer >= 0",)),
    "val_size_too_large": (["data.val_size=70000"],
                           ("data.val_size=70000 leaves no training data: the mnist training set "
                            "has 60000 samples; allowed: 0..59999",)),
    "nm_n_above_m": (["pruner=nm", "pruner.n=5", "pruner.m=4"],
                     ("pruner.n=5 and pruner.m=4: need integers with 1 <= n < m",)),
    "trainer_gradient_clip_val": (["+trainer.gradient_clip_val=1.0"],
                                  ("trainer.gradient_clip_val=1.0: prunelab steps the optimizer "
                                   "itself", "use module.gradient_clip_val=1.0")),
    "trainer_accumulate_grad_batches": (["+trainer.accumulate_grad_batches=2"],
                                        ("trainer.accumulate_grad_batches=2: prunelab steps the "
                                         "optimizer itself", "use data.batch_size=256")),
    # init_from (docs/pretrained.md): the fixture's files
    "init_from_missing": (["init_from=/nonexistent/dense.pt"],
                          ("init_from='/nonexistent/dense.pt' does not exist; allowed: a prunelab "
                           "run directory, a Lightning .ckpt or a state_dict .pt file",)),
    "init_from_run_without_checkpoint": (["init_from={tmp}/norun"],
                                         ("init_from='", "norun': no checkpoints/best.ckpt or "
                                          "checkpoints/last.ckpt there")),
    "init_from_needs_pickle": (["init_from={tmp}/pickled.ckpt"],
                               ("init_from='", "pickled.ckpt' needs pickle to load (pickled object "
                                "argparse.Namespace); prunelab loads checkpoints with "
                                "weights_only=True")),
    "init_from_not_a_torch_file": (["init_from={tmp}/profile.yaml"],
                                   ("init_from='", "profile.yaml' is not a readable checkpoint")),
    "init_from_shapes": (["init_from={tmp}/small_mlp.pt"],
                         ("small_mlp.pt: shapes do not fit: features.0.weight (32, 784) vs "
                          "(300, 784), features.0.bias (32,) vs (300,), features.2.weight (16, 32) "
                          "vs (100, 300), ...",)),
    "init_from_strict": (["init_from={tmp}/no_bias.pt"],
                         ("no_bias.pt: 1 missing key (classifier.bias); init_strict=false loads "
                          "the keys that fit",)),
    "finetune_without_init_from": (["experiment=finetune_pruned"],
                                   ("init_from is required by this experiment",)),
    "epochs_negative": (["epochs=-1"], ("epochs=-1 must be an integer >= 0",)),
}

#: Issue 14: commands that train briefly (after tests/helpers.FAST).
RUN_CASES = {
    "fast_dev_run": ["+trainer.fast_dev_run=true"],
    "sgd_preset_lenet5": ["model=lenet5", "optimizer=sgd", "pruner=none"],
    "diverged": ["model=lenet5", "optimizer=sgd", "optimizer.lr=100", "pruner=none"],
    "partial_profile": ["pruner=sensitivity", "pruner.profile={tmp}/partial_profile.yaml"],
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
    (tmp / "prun" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)},
               tmp / "prun" / "checkpoints" / "last.ckpt")
    (tmp / "norun").mkdir()
    layers = ("features.0", "features.2", "classifier")  # LeNet-300-100's names (init_from)
    for name, widths in (("small_mlp.pt", (784, 32, 16, 10)), ("no_bias.pt", (784, 300, 100, 10))):
        state = {}
        for layer, n_in, n_out in zip(layers, widths, widths[1:]):
            state[f"{layer}.weight"] = torch.zeros(n_out, n_in)
            state[f"{layer}.bias"] = torch.zeros(n_out)
        if name == "no_bias.pt":
            del state["classifier.bias"]
        torch.save(state, tmp / name)
    from prunelab.data.mnist import BUNDLED_MNIST_DIR

    partial = tmp / "partial" / "MNIST" / "raw"  # an MNIST directory missing one IDX file
    partial.mkdir(parents=True)
    for f in sorted(BUNDLED_MNIST_DIR.iterdir()):
        if not f.name.startswith("t10k-labels"):
            (partial / f.name).symlink_to(f)
    (tmp / "partial_profile.yaml").write_text(  # names one of the MLP's three layers
        "target_sparsity: 0.5\nlayers:\n  classifier.weight: 0.5\n")
    Path(SWEEP_JOB.replace("{tmp}", str(tmp))).mkdir(parents=True)
    # offline for certain: any download goes to a closed local port and fails at once
    env = dict(os.environ, PYTHONWARNINGS="ignore", http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
    jobs = []
    for module, cases, pre in (("prunelab.train", CASES, ["debug=fast"]),
                               ("prunelab.train", STRICT_CASES, ["debug=fast"]),
                               ("prunelab.train", {k: (v, None) for k, v in RUN_CASES.items()},
                                FAST),
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


@pytest.mark.parametrize("case", ISSUE16_CASES)
def test_issue16_bad_input_exits_2_and_creates_no_directory(outcomes, case):
    rc, stdout, stderr, run_dir = outcomes[case]
    assert rc == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunelab: error: "), stderr[-2000:]
    assert not run_dir.exists()
    assert not (run_dir.parent / "outputs").exists()


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


@pytest.mark.parametrize("case", sorted(STRICT_CASES))
def test_issue14_bad_input_is_one_line_exit_2_and_creates_no_directory(outcomes, case):
    rc, stdout, stderr, run_dir = outcomes[case]
    assert rc == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunelab: error: "), stderr[-2000:]
    for part in STRICT_CASES[case][1]:
        assert part in lines[0], lines[0]
    tmp = run_dir.parent
    assert not run_dir.exists()
    assert not (tmp / "outputs").exists() and not (tmp / "data").exists()


def test_fast_dev_run_prunes_to_the_target_in_one_batch(outcomes):
    rc, stdout, stderr, run_dir = outcomes["fast_dev_run"]
    assert rc == 0, stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs_run"] == 1
    assert results["sparsity"]["global"] == pytest.approx(0.5, abs=1e-4)


def test_sgd_preset_trains_lenet5_without_diverging(outcomes):
    import math

    rc, stdout, stderr, run_dir = outcomes["sgd_preset_lenet5"]
    assert rc == 0, stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert math.isfinite(results["test_loss"]) and results["test_acc"] > 0.2


def test_a_nan_loss_is_one_line_naming_epoch_step_and_lr_and_writes_no_result(outcomes):
    import re

    rc, stdout, stderr, run_dir = outcomes["diverged"]
    assert rc == 2, stderr[-2000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("prunelab: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert re.fullmatch(r"prunelab: error: loss is (nan|inf) at epoch 0 step \d+: training "
                        r"diverged; lower optimizer\.lr \(lr 100\) or set "
                        r"module\.gradient_clip_val", errors[0]), errors[0]
    assert not (run_dir / "results.json").exists()
    assert not list(run_dir.rglob("*.ckpt"))  # diverged weights are never checkpointed


def test_a_partial_sensitivity_profile_warns_that_it_misses_the_target(outcomes):
    rc, stdout, stderr, run_dir = outcomes["partial_profile"]
    assert rc == 0, stderr[-2000:]
    warnings = [ln for ln in stderr.splitlines() if ln.startswith("prunelab: warning: pruner.")]
    assert len(warnings) == 1, stderr[-2000:]
    assert warnings[0].startswith("prunelab: warning: pruner.profile names 1 of the 3 prunable "
                                  "layers (the others stay dense): the run reaches total "
                                  "sparsity 0.0019, not sparsity=0.5")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["sparsity"]["global"] == pytest.approx(0.0019, abs=1e-4)  # what it said


def _read_only(directory):
    """A command prefix under which ``directory`` is read-only for the command: a read-only
    bind mount in a private mount namespace as root (whom file modes do not stop), else the
    directory's mode."""
    import shutil

    if os.geteuid() != 0:
        directory.chmod(0o555)
        return []
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("root without user namespaces: no read-only directory to test with")
    script = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && cd "$PWD" && '
              'exec "$@"')  # cd: a working directory inside it is the read-only one, too
    return ["unshare", "-rm", "sh", "-c", script, str(directory)]


def test_a_read_only_output_directory_is_one_line_and_creates_nothing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        prefix = _read_only(ro)
        named = subprocess.run([*prefix, sys.executable, "-m", "prunelab.train", *FAST,
                                f"hydra.run.dir={ro / 'run'}"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
        default = subprocess.run([*prefix, sys.executable, "-m", "prunelab.train", *FAST],
                                 cwd=ro, env=env, capture_output=True, text=True, timeout=300)
    finally:
        ro.chmod(0o755)
    for proc, label in ((named, f"hydra.run.dir={ro / 'run'}"), (default, "the output directory "
                                                                          "outputs/")):
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr[-2000:]
        assert lines[0].startswith(f"prunelab: error: {label}: cannot write in {ro}: [Errno "), \
            lines[0]
        assert "Read-only file system" in lines[0] or "Permission denied" in lines[0], lines[0]
    assert list(ro.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_path_and_the_os_error(tmp_path):
    """The file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes writing the first checkpoint
    fail with a real OS error, as a full disk does."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # .hydra/ fits, no .ckpt

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "prunelab.train", *FAST,
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, preexec_fn=limit,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("prunelab: error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith(f"prunelab: error: cannot write in {run_dir}: [Errno 27] File "
                                "too large"), errors[0]
    assert not (run_dir / "results.json").exists()
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".ckpt", ".pt", ".tmp")]
