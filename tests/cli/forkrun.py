"""Run ``python -m <module> <args...>`` for many argument lists at the cost of one start-up.

    python tests/forkrun.py jobs.json

``jobs.json`` is a list of ``{"module", "args", "cwd", "out"}``. This process imports torch,
Lightning and prunelab once, without running any torch operation (so no thread pool exists yet),
then forks one child per job, two at a time. A child does what ``python -m`` does
(``runpy.run_module(module, run_name="__main__", alter_sys=True)`` with ``sys.argv`` set), with its
stdout and stderr in ``<out>.stdout`` / ``<out>.stderr``; its exit status goes to ``<out>.rc``.
Used by the bad-input tests, which start about forty commands that each fail in their first
second of work after several seconds of imports.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import traceback

PARALLEL = 2


def child(job: dict) -> None:
    code = 1
    try:
        os.chdir(job["cwd"])
        for fd, suffix in ((1, ".stdout"), (2, ".stderr")):
            target = os.open(job["out"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = [job["module"], *job["args"]]
        runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message"), as the interpreter does: message to stderr, status 1
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> int:
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for name in ("torch", "pytorch_lightning", "prunelab.train", "prunelab.lottery",
                 "prunelab.sensitivity", "prunelab.measure", "prunelab.export", "prunelab.report"):
        importlib.import_module(name)  # once, for every child

    running: dict[int, dict] = {}

    def reap() -> None:
        pid, status = os.wait()
        job = running.pop(pid)
        with open(job["out"] + ".rc", "w") as f:
            f.write(str(os.waitstatus_to_exitcode(status)))

    for job in jobs:
        while len(running) >= PARALLEL:
            reap()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(job)
        running[pid] = job
    while running:
        reap()
    return 0


if __name__ == "__main__":
    sys.exit(main())
