#!/usr/bin/env bash
# The methods_vs_sparsity study (LeNet-300-100 / MNIST: magnitude, global_magnitude, random x
# sparsity 0.5, 0.8, 0.9, 0.95 x seeds 0, 1, 2 = 36 runs), once with Hydra's basic launcher
# (one job after the other, each using every core) and once with hydra/launcher=joblib (two
# jobs at a time on this 2-core machine, one thread each). Wall times go to
# $OUT/wall_times.txt; each sweep directory ends with report.md and the plots.
#   EPOCHS=3 bash scripts/bench_sweep.sh
set -euo pipefail
EPOCHS=${EPOCHS:-3}
OUT=${OUT:-outputs/bench_sweep}
mkdir -p "$OUT"
COMMON=(experiment=methods_vs_sparsity "epochs=$EPOCHS" measure.runs=20 trainer.enable_progress_bar=false)
t0=$(date +%s)
python -m prunelab.train -m "${COMMON[@]}" hydra.sweep.dir="$OUT/sequential" > "$OUT/sequential.log" 2>&1
t1=$(date +%s)
python -m prunelab.train -m "${COMMON[@]}" hydra/launcher=joblib hydra.launcher.n_jobs=2 \
  hydra.sweep.dir="$OUT/joblib" > "$OUT/joblib.log" 2>&1
t2=$(date +%s)
echo "sequential $((t1 - t0)) s; joblib (2 jobs) $((t2 - t1)) s" | tee "$OUT/wall_times.txt"
