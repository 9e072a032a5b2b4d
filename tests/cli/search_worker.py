"""A search process with a cheap objective, for the tests of the study layer across processes:
``python search_worker.py <storage url> <n_trials> <delay s> <log file>``. Each trial appends
``<run_dir> <trial number> <pid> start|done`` lines to the log and sleeps ``delay`` seconds."""

import os
import sys
import time
from pathlib import Path

from prunelab.policy_search.study import fill, make_sampler, open_storage, open_study, reclaim_dead

url, n_trials, delay, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
storage = open_storage(url, heartbeat=None)
study = open_study(storage, "s", ["maximize"], {"objectives": ["val_acc"]},
                   make_sampler("random", 1, os.getpid(), None))
reclaim_dead(study)


def objective(trial):
    x = trial.suggest_float("ratio:a", 0.0, 0.9, step=0.05)
    run_dir = trial.user_attrs.get("run_dir") or f"trials/{trial.number:04d}"
    trial.set_user_attr("run_dir", run_dir)
    with open(log, "a") as f:
        f.write(f"{run_dir} {trial.number} {os.getpid()} start\n")
    time.sleep(delay)
    with open(log, "a") as f:
        f.write(f"{run_dir} {trial.number} {os.getpid()} done\n")
    return x


fill(study, objective, n_trials, 1, None, 3)
