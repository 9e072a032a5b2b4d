#!/usr/bin/env bash
# The 2020-era method comparison (issue #16 item 8): experiment=compare_methods_2020 (2 models x
# 9 methods x 3 sparsities x 3 seeds = 162 runs) plus the dense arm (2 models x 3 seeds), then
# the report (report.md, report.csv, acc_vs_sparsity.png) with dense and random accuracy beside
# every row. About 1 minute per LeNet-300-100 run and 7 per LeNet-5 run on one CPU core: hours;
# add hydra/launcher=joblib hydra.launcher.n_jobs=N hardware.threads=1 to run N jobs at once, or
# run the LeNet-5 half on a GPU with scripts/gpu_compare_lenet5.sh.
set -euo pipefail
OUT=${OUT:-outputs/compare_2020}
python -m prunelab.train -m experiment=compare_methods_2020 measure.latency=false \
    hydra.sweep.dir="$OUT" "$@"
python -m prunelab.train -m experiment=compare_methods_2020 pruner=none sparsity=0 \
    measure.latency=false hydra.sweep.dir="$OUT" "$@"
python -m prunelab.report "$OUT"
