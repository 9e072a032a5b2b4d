"""Bad input: a one-line error naming the value and what is allowed, a non-zero exit, and no
result written (no results.json, no checkpoint)."""

import os
import subprocess
import sys

import pytest

CASES = {
    "sparsity_range": (["sparsity=1.2"], "sparsity=1.2 is outside the allowed range [0, 1)"),
    "sparsity_negative": (["sparsity=-0.1"], "sparsity=-0.1 is outside the allowed range [0, 1)"),
    "sparsity_nan": (["sparsity=abc"], "sparsity='abc' is not a number; allowed: a number in [0, 1)"),
    "unknown_pruner": (["pruner=magnitud"],
                       "unknown pruner='magnitud'; known: global_magnitude, magnitude, none, random"),
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
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Launch every bad command at once (they fail fast), then collect."""
    tmp = tmp_path_factory.mktemp("bad")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    procs = {}
    for name, (args, _) in CASES.items():
        run_dir = tmp / name
        cmd = [sys.executable, "-m", "prunelab.train", "debug=fast", f"hydra.run.dir={run_dir}",
               *args]
        procs[name] = (subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True), run_dir)
    out = {}
    for name, (p, run_dir) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr, run_dir)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_error_and_writes_no_result(outcomes, case):
    rc, stdout, stderr, run_dir = outcomes[case]
    expected = CASES[case][1]
    assert rc != 0
    errors = [ln for ln in stderr.splitlines() if ln.startswith("prunelab: error: ")]
    assert len(errors) == 1, stderr[-2000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in stderr
    assert not (run_dir / "results.json").exists()
    assert not (run_dir / "checkpoints").exists()
