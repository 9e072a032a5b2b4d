"""Shared test fixtures: composed configs, the command runner, two small trained runs, and
small data sets in the real on-disk formats.

Tests are grouped by kind: ``unit/`` (in-process), ``cli/`` (the commands as a user runs
them), ``gpu/`` (skipped without CUDA). This directory is on ``sys.path`` (pytest's rootdir
conftest), so ``helpers`` and ``data_fixtures`` import directly.
"""

import subprocess
import sys

import pytest
from data_fixtures import write_cifar10, write_cifar100, write_fashion_mnist
from helpers import FAST, compose_config, run_cli


@pytest.fixture
def compose():
    """``compose(config_name, *overrides)``: a command's config as Hydra composes it."""
    return compose_config


@pytest.fixture
def cli():
    """``cli(module, args, cwd)``: run ``python -m <module> <args>``; the CompletedProcess."""
    return run_cli


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """Two finished ``train`` runs, trained side by side once per session: ``structured``
    (LeNet-5, 50 % of the channels) and ``unstructured`` (LeNet-300-100, 90 % magnitude).
    Tests may add files under them (measure, export) but must not change what is there."""
    tmp = tmp_path_factory.mktemp("runs")
    args = {"structured": ["model=lenet5", "pruner=structured", "sparsity=0.5"],
            "unstructured": ["pruner=magnitude", "sparsity=0.9"]}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "prunelab.train", *FAST, *a, f"hydra.run.dir={tmp / name}"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, a in args.items()}
    for p in procs.values():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    return tmp


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    return root, write_cifar10(root)


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar100")
    return root, write_cifar100(root)


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion")
    return root, write_fashion_mnist(root)
