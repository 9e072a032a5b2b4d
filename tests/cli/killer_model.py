"""A model target for sweep tests: ``kill=true`` makes the job's process SIGKILL itself while it
builds the model, as the OOM killer would."""

import os
import signal


def make(kill: bool = False, **kwargs):
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    from prunelab.models.mlp import MLP

    return MLP(**kwargs)
