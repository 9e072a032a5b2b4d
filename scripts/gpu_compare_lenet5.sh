#!/usr/bin/env bash
# The LeNet-5 half of experiment=compare_methods_2020 (issue #16 item 8) on a GPU machine, where
# the 2-core CPU needs about 7 minutes a run (84 runs: 10 hours). 9 methods x 3 sparsities x
# SEEDS plus the dense arm, JOBS runs at a time on the one GPU (LeNet-5 on MNIST uses a sliver of
# it), fp32 like the CPU half (hardware=gpu with precision 32-true), then the report over all runs.
#   OUT=/tmp/cmp bash scripts/gpu_compare_lenet5.sh          # JOBS=8 SEEDS="0 1 2"
# On the 2-core CPU (a median 5.8 minutes a run in channels_last, two at a time: about 4 hours;
# how BENCHMARKS.md's LeNet-5 table was measured):
#   HW="hardware=cpu hardware.memory_format=channels_last" JOBS=2 THREADS=1 OUT=... bash ...
# On a device without hydra-core/omegaconf, install their wheels first (see the device README).
# A rerun skips the runs that have results.json (the train command's own rule), so a run cut
# short by a time limit continues where it stopped when $OUT is kept.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OUT=${OUT:-/tmp/cmp2020_lenet5} PY=${PY:-python3}
JOBS=${JOBS:-8}
SEEDS=${SEEDS:-0 1 2}
# the methods and sparsities of the experiment's own sweep (conf/experiment/compare_methods_2020.yaml)
sweep_values() {
  $PY -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['hydra']['sweeper']['params'][sys.argv[2]].replace(',', ' '))" \
    src/prunelab/conf/experiment/compare_methods_2020.yaml "$1"
}
PRUNERS=${PRUNERS:-$(sweep_values pruner)}
SPARSITIES=${SPARSITIES:-$(sweep_values sparsity)}
EXTRA=${EXTRA:-}                                        # more overrides for every run
HW=${HW:-hardware=gpu hardware.precision=32-true}      # HW=hardware=cpu: a check on a CPU
THREADS=${THREADS:-2}                                   # torch threads per run
export EXTRA HW THREADS
mkdir -p "$OUT/runs" "$OUT/logs"
{
  for seed in $SEEDS; do
    echo "dense_s$seed pruner=none sparsity=0 seed=$seed"
    for p in $PRUNERS; do
      for sp in $SPARSITIES; do echo "${p}_${sp}_s$seed pruner=$p sparsity=$sp seed=$seed"; done
    done
  done
} | xargs -P "$JOBS" -L1 bash -c '
  name=$0
  # shellcheck disable=SC2086  # HW and EXTRA hold several overrides each
  $PY -m prunelab.train experiment=compare_methods_2020 model=lenet5 "$@" $HW \
    hardware.threads=$THREADS measure.latency=false trainer.enable_progress_bar=false $EXTRA \
    hydra.run.dir="$OUT/runs/$name" > "$OUT/logs/$name.log" 2>&1 && echo "done: $name" || echo "FAILED: $name (log: $OUT/logs/$name.log)"'
$PY -m prunelab.report "$OUT/runs"
