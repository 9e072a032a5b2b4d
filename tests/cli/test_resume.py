"""Fault injection: real ``prunelab.train`` processes SIGKILLed during the pruning ramp, after
the target and after the last epoch (testing and measurement), then resumed with the documented
command. The resumed run must be the uninterrupted run: the same masks and weights bit for bit
(CPU), one consistent run directory (no ``-v1`` files, ``results.json`` naming files that
exist), and the total wall time. Also: ``resume=`` with another config is refused naming the
keys, and no command rewrites a finished or refused run's files."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from prunelab.files import LOCK_NAME

#: 5 epochs of 25 steps (400 samples, 16 per batch; grouped by 8 under data.steps_per_batch=auto);
#: the gradual schedule prunes in epochs 0-3 (target 0.7 from epoch 3)
ARGS = ["debug=fast", "data.subset=400", "data.batch_size=16", "epochs=5", "sparsity=0.7",
        "measure.latency=false", "trainer.enable_progress_bar=false"]


def start_train(args, cwd):
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, "-m", "prunelab.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def file_hashes(directory: Path) -> dict[str, str]:
    """Every file's sha256, but the lock file a SIGKILLed run leaves behind (the next command
    there takes the lock over and removes it)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    out = dict(ckpt["state_dict"])
    out.update({f"mask:{k}": v for k, v in ckpt["callbacks"]["PruningCallback"]["masks"].items()})
    return out


KILLS = {2: "during the pruning ramp", 4: "after the target", 5: "after the last epoch"}


def kill_when_due(procs: dict, lasts: dict, timeout: float = 400) -> None:
    """SIGKILL each process once its ``last.ckpt`` was written as often as its key says (each
    save is a new file: written to a temporary name and renamed)."""
    seen = {k: set() for k in procs}
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs.values()):
        assert time.time() < deadline
        for k, proc in procs.items():
            if proc.poll() is not None:
                continue
            try:
                st = lasts[k].stat()
                seen[k].add((st.st_ino, st.st_mtime_ns))
            except FileNotFoundError:
                pass
            if len(seen[k]) >= k:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        time.sleep(0.001)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, and runs of the same command killed at each point of ``KILLS``
    (all started together: the machine has two cores)."""
    base = tmp_path_factory.mktemp("resume")
    ref = start_train([*ARGS, f"hydra.run.dir={base / 'ref'}"], base)
    dirs = {k: base / f"killed_{k}" for k in KILLS}
    procs = {k: start_train([*ARGS, f"hydra.run.dir={d}"], base) for k, d in dirs.items()}
    kill_when_due(procs, {k: d / "checkpoints" / "last.ckpt" for k, d in dirs.items()})
    out, err = ref.communicate(timeout=400)
    assert ref.returncode == 0, err[-3000:]
    return base / "ref", dirs


@pytest.mark.slow  # long (a minute on 2 cores): pytest -m slow
def test_killed_runs_resume_to_the_uninterrupted_run(reference):
    ref_dir, dirs = reference
    elapsed = {}
    for k, run_dir in dirs.items():
        assert not (run_dir / "results.json").exists(), f"finished before the kill ({KILLS[k]})"
        killed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        assert killed["epoch"] == k - 1
        elapsed[k] = next(v["elapsed_s"] for v in killed["callbacks"].values() if "elapsed_s" in v)
    # refused, in one line and writing nothing: another config; a truncated checkpoint (what
    # a full disk or a copy cut short leaves; prunelab itself writes them atomically)
    run_dir = dirs[2]
    before = file_hashes(run_dir)
    proc = run_cli("prunelab.train", [f"resume={run_dir}", "pruner=random", "optimizer.lr=0.01"],
                   run_dir.parent)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds a run with a different config" in lines[0], proc.stderr
    assert "optimizer.lr (0.001 vs 0.01)" in lines[0] and "pruner._target_" in lines[0]
    assert file_hashes(run_dir) == before
    cut = run_dir.parent / "truncated"
    shutil.copytree(run_dir, cut)
    last = cut / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    cut_before = file_hashes(cut)
    proc = run_cli("prunelab.train", [f"resume={cut}"], run_dir.parent)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a readable checkpoint" in lines[0], proc.stderr
    assert file_hashes(cut) == cut_before

    # the documented commands: resume=<the run directory> (its own overrides and directory),
    # or the same command again in the same directory (what a rerun sweep does for its jobs)
    procs = {k: start_train([*ARGS, f"hydra.run.dir={d}"] if k == 4 else [f"resume={d}"],
                            d.parent) for k, d in dirs.items()}
    for k, proc in procs.items():
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        assert f"prunelab: resuming {dirs[k]} from last.ckpt (end of epoch {k - 1})" in out

    ref_res = json.loads((ref_dir / "results.json").read_text())
    for k, run_dir in dirs.items():
        files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert files == ["best.ckpt", "last.ckpt"], files  # no -v1, no .tmp left behind
        for name in ("best.ckpt", "last.ckpt"):
            ref, got = weights(ref_dir / "checkpoints" / name), weights(run_dir / "checkpoints" / name)
            assert ref.keys() == got.keys()
            for key in ref:
                assert torch.equal(ref[key], got[key]), (name, key, KILLS[k])
        res = json.loads((run_dir / "results.json").read_text())
        for key in ("test_acc", "test_loss", "best_val_acc", "sparsity", "config_hash",
                    "epochs_run"):
            assert res[key] == ref_res[key], (key, KILLS[k])
        assert Path(res["best_checkpoint"]) == run_dir / "checkpoints" / "best.ckpt"
        assert res["wall_time_s"] > elapsed[k]  # the killed attempt's time is counted
        # the per-epoch history: the epochs before the kill kept, in order, none logged twice;
        # only the training row of the checkpoint's own epoch may be missing (Lightning logs it
        # just after writing last.ckpt, and these kills land right after that write)
        ref_rows = (ref_dir / "csv" / "metrics.csv").read_text().splitlines()
        got = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
        assert got == [r for r in ref_rows if r in got], KILLS[k]
        missing = [r for r in ref_rows if r not in got]
        assert len(missing) <= 1 and all(r.startswith(f"{k - 1},") for r in missing), missing


@pytest.mark.slow  # long (a minute on 2 cores): pytest -m slow
def test_resume_with_another_config_names_the_keys_and_writes_nothing(reference, tmp_path):
    reference, _ = reference
    before = file_hashes(reference)
    # a finished run: another config is refused, the same one skipped (one after the other:
    # each holds the run's lock); neither touches a file of the run
    refused = run_cli("prunelab.train", [f"resume={reference}", "sparsity=0.9"], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"prunelab: error: {reference} already holds results.json of another config: sparsity "
        f"(0.7 vs 0.9); rerun with its settings or choose a new directory"], refused.stderr
    assert file_hashes(reference) == before
    skipped = run_cli("prunelab.train", [f"resume={reference}"], tmp_path)
    assert skipped.returncode == 0
    assert "already has this run's results.json; skipped" in skipped.stdout
    assert file_hashes(reference) == before


def test_a_second_writer_is_refused_naming_the_holder_until_it_dies(tmp_path):
    from prunelab.files import directory_lock

    run_dir = tmp_path / "run"
    first = start_train([*ARGS, f"hydra.run.dir={run_dir}"], tmp_path)
    lock = run_dir / LOCK_NAME
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip()):
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.01)
    second = run_cli("prunelab.train", [*ARGS, f"hydra.run.dir={run_dir}"], tmp_path)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert lines == [f"prunelab: error: {run_dir} is in use by process {first.pid} (another "
                     f"prunelab command writing there); wait for it to finish or use another "
                     f"directory"], second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    with directory_lock(run_dir):  # the kernel released the dead holder's lock
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()  # a clean exit removes the file
