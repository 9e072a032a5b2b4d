#!/usr/bin/env python
"""Quality check of issue #2: LeNet-300-100 on MNIST, gradual magnitude pruning to 90% sparsity
in 20 epochs, against the dense baseline trained the same way, over several seeds.

Runs two Hydra multiruns (dense: ``pruner=none sparsity=0``; pruned: the ``lenet300_mnist``
experiment as it is), then prints a markdown table of mean and std test accuracy per arm.

    python scripts/reproduce_quality.py --seeds 0 1 2 --out outputs/quality
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = {
    "dense": ["pruner=none", "sparsity=0"],
    "gradual global magnitude 90%": [],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--experiment", default="lenet300_mnist")
    ap.add_argument("--out", default="outputs/quality")
    ap.add_argument("extra", nargs="*", help="extra overrides for both arms")
    args = ap.parse_args()
    rows = []
    for arm, overrides in ARMS.items():
        sweep = Path(args.out) / arm.split()[0]
        cmd = [sys.executable, "-m", "prunelab.train", "-m", f"experiment={args.experiment}",
               *overrides, f"seed={','.join(map(str, args.seeds))}",
               "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}", *args.extra]
        print("$", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        res = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
        accs = [r["test_acc"] for r in res]
        rows.append((arm, res, accs, wall))
    print("\n| arm | sparsity | test acc mean | std | per seed | epochs | wall time (all seeds) |")
    print("|---|---|---|---|---|---|---|")
    for arm, res, accs, wall in rows:
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {arm} | {res[0]['sparsity']['global']:.4f} | {100 * statistics.mean(accs):.2f}% | "
              f"{100 * sd:.2f} | {', '.join(f'{100 * a:.2f}' for a in accs)} | "
              f"{res[0]['epochs']} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
