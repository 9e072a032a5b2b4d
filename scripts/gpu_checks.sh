#!/usr/bin/env bash
# The GPU checks of one device session (results in BENCHMARKS.md): the CUDA tests, the 2:4
# benchmark and the training-overhead benchmark on the GPU. Each step has its own time limit so
# that one hanging step leaves the others' results. Writes logs and JSON under $OUT.
#   OUT=/tmp/gpu bash scripts/gpu_checks.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/prunelab_gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
  $PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__, torch.cuda.get_device_name(), 'sm', torch.cuda.get_device_capability())"
} 2>&1 | tee "$OUT/env.txt"
echo "== 2:4 semi-structured"
rc=0
timeout 120 $PY scripts/bench_2to4.py --out "$OUT/bench_2to4.json" 2>&1 | tee "$OUT/bench_2to4.txt" || rc=1
echo "== tests that need a GPU"
timeout 200 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/gpu/test_gpu.py tests/unit/test_semi_structured.py 2>&1 | tee "$OUT/pytest_gpu.txt" || rc=1
echo "== training overhead on the GPU"
timeout ${OVERHEAD_TIMEOUT:-240} $PY scripts/bench_overhead.py --device cuda --models resnet20 mlp --reps 5 --epochs-per-rep 2 \
    --subset resnet20=20000 mlp=20000 --out "$OUT/bench_overhead_gpu.json" 2>&1 \
    | tee "$OUT/bench_overhead_gpu_full.txt" | grep -v "^  rep " || rc=1
exit $rc
