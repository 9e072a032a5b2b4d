"""Plain helpers for tests (the fixtures in conftest.py wrap them)."""

import os
import subprocess
import sys

#: A training run shrunk to seconds (no latency timing, no logger, no progress bar).
FAST = ["debug=fast", "data.subset=400", "epochs=2", "measure.latency=false",
        "trainer.enable_progress_bar=false", "logger=none"]


def run_cli(module, args, cwd, timeout=300, env=None):
    """``python -m <module> <args>`` in ``cwd``; the CompletedProcess (text output)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def compose_config(config_name, *overrides, return_hydra_config=False):
    """A command's config (``conf/<config_name>.yaml``) composed with ``overrides``."""
    from hydra import compose, initialize_config_dir

    from prunelab.cli import CONF_DIR
    from prunelab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3",
                               job_name=config_name):
        return compose(config_name, overrides=list(overrides),
                       return_hydra_config=return_hydra_config)
