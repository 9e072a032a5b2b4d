"""Installable anywhere: a wheel of prunelab, installed into a fresh virtual environment, runs
the default command from an unrelated directory (the bundled MNIST and the configs travel inside
the wheel). Offline: the wheel is built with the setuptools at hand, and the environment sees
this one's packages (``--system-site-packages``); only prunelab comes from the wheel."""

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
               "SHA256SUMS.uncompressed"]
#: the console scripts pyproject.toml declares ([project.scripts]; read here, not listed again)
SCRIPTS = re.findall(r"^(prunelab-[a-z]+) = ", (REPO / "pyproject.toml").read_text().split(
    "[project.scripts]")[1].split("\n[")[0], flags=re.M)


def test_the_wheel_declares_a_console_script_per_command():
    from prunelab.cli import COMMAND_GROUPS

    assert sorted(SCRIPTS) == sorted(f"prunelab-{c}" for c in COMMAND_GROUPS)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _run(cmd, cwd, timeout=300):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built offline from a copy of the source (the checkout itself stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", src / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    dist = tmp / "dist"
    proc = _run([sys.executable, "-m", "pip", "wheel", ".", "-w", dist, "--no-deps",
                 "--no-build-isolation", "--no-index"], cwd=src)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(dist.glob("prunelab-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def env_dir(wheel, tmp_path_factory):
    """A fresh venv that sees this environment's packages but imports prunelab from the wheel."""
    root = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root)
    python = root / "bin" / "python"
    # --ignore-installed: install into the venv even though the editable install is visible,
    # and leave that one alone
    proc = _run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index",
                 wheel], cwd=root)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return root


def test_wheel_carries_the_data_and_the_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in MNIST_FILES:
        assert f"prunelab/datasets/mnist/{name}" in names, name
    confs = {f"prunelab/{p.relative_to(REPO / 'src' / 'prunelab').as_posix()}"
             for p in (REPO / "src" / "prunelab" / "conf").rglob("*.yaml")}
    assert "prunelab/conf/train.yaml" in confs
    assert confs <= names, sorted(confs - names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line.split(":", 1)[1].strip().lower() for line in
                zipfile.ZipFile(wheel).read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert any(r.startswith("pyyaml") for r in requires), requires
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    for script in SCRIPTS:
        assert f"{script} = prunelab." in text, script


@pytest.mark.slow
def test_wheel_trains_from_another_directory(env_dir, tmp_path):
    python = env_dir / "bin" / "python"
    where = tmp_path / "elsewhere"
    where.mkdir()
    code = ("import prunelab, prunelab.data as d; "
            "print(prunelab.__file__); print(d.BUNDLED_MNIST_DIR)")
    proc = _run([python, "-c", code], cwd=where)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module_file, mnist_dir = (Path(line) for line in proc.stdout.split())
    assert module_file.is_relative_to(env_dir), module_file  # not the editable checkout
    assert mnist_dir.is_relative_to(env_dir), mnist_dir

    run = tmp_path / "run"
    proc = _run([python, "-m", "prunelab.train", "debug=fast", "data.subset=400", "epochs=2",
                 "measure.latency=false", "logger=none", f"hydra.run.dir={run}"], cwd=where)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run / "results.json").read_text())
    assert res["data"] == "mnist" and 0.3 < res["test_acc"] <= 1.0
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert list(where.iterdir()) == []  # nothing written where it was launched


@pytest.mark.slow  # -m slow (README): the default suite stays under 10 minutes
def test_console_scripts_in_the_venv(env_dir, tmp_path):
    """The commands are console scripts of the wheel: each resolves to a callable ``main``
    of the installed package, and each one's ``--help`` runs and exits 0."""
    for name in SCRIPTS:
        assert (env_dir / "bin" / name).is_file(), name
    code = ("from importlib.metadata import entry_points; "
            "eps = [ep for ep in entry_points(group='console_scripts') "
            "if ep.name.startswith('prunelab-') and ep.dist.locate_file('').is_relative_to("
            f"{str(env_dir)!r})]; "
            "print(' '.join(sorted(ep.name for ep in eps if callable(ep.load()))))")
    proc = _run([env_dir / "bin" / "python", "-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == sorted(SCRIPTS)

    for name in SCRIPTS:
        proc = _run([env_dir / "bin" / name, "--help"], cwd=tmp_path)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        command = name.replace("prunelab-", "prunelab.")
        assert command in proc.stdout and "Examples" in proc.stdout, name
        assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # --help writes nothing
