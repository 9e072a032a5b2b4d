#!/usr/bin/env bash
# Reproductions of issue #3 (method comparison), one Hydra multirun per model; each sweep ends
# with summary.md (mean and std over seeds per method and sparsity) in its sweep directory.
# Wall time on the 2-core CI machine: about 1 minute per LeNet-300-100 run (20 epochs).
set -euo pipefail
OUT=${OUT:-outputs/reproduce}
SEEDS=${SEEDS:-0,1,2}

# LeNet-300-100 / MNIST: 92% (Han et al. 2015: 1.59% error) and 98% (SNIP: 2.4%, DNS: 1.99%),
# random pruning as the control.
python -m prunelab.train -m experiment=lenet300_mnist \
  pruner=magnitude,global_magnitude,taylor,snip,random sparsity=0.92,0.98 seed="$SEEDS" \
  measure.latency=false trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/lenet300"

# the dense baseline of the same recipe
python -m prunelab.train -m experiment=lenet300_mnist pruner=none sparsity=0 seed="$SEEDS" \
  measure.latency=false trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/lenet300_dense"

if [[ "${LENET5:-0}" == 1 ]]; then
  # LeNet-5 (Caffe) / MNIST: 98% (SNIP: 0.8% error), structured at half the MACs.
  python -m prunelab.train -m experiment=lenet5_mnist \
    pruner=global_magnitude,snip,random sparsity=0.98 seed="$SEEDS" \
    measure.latency=false trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/lenet5"
  python -m prunelab.train -m experiment=lenet5_mnist pruner=structured sparsity=0.5 \
    seed="$SEEDS" measure.latency=false trainer.enable_progress_bar=false \
    hydra.sweep.dir="$OUT/lenet5_structured"
fi

if [[ "${STRUCTURED:-0}" == 1 ]]; then
  # structured at half the MACs or more, against the dense model of the same recipe (3 seeds):
  # LeNet-5 (20 epochs, about 4 minutes a run) and seed_cnn (4 epochs, conv 32-64, fc 128)
  python -m prunelab.train -m experiment=lenet5_mnist pruner=none sparsity=0 seed="$SEEDS" \
    measure.latency=false trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/lenet5_dense"
  python -m prunelab.train -m experiment=lenet5_mnist model=seed_cnn epochs=4 \
    pruner=structured sparsity=0.5 seed="$SEEDS" measure.latency=false \
    trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/seed_cnn_structured"
  python -m prunelab.train -m experiment=lenet5_mnist model=seed_cnn epochs=4 \
    pruner=none sparsity=0 seed="$SEEDS" measure.latency=false \
    trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/seed_cnn_dense"
fi

if [[ "${KD:-0}" == 1 ]]; then
  # LeNet-300-100 at 98% with the dense model of the same seed as teacher, 60 epochs (DNS: 1.99%)
  for s in ${SEEDS//,/ }; do
    teacher="$OUT/lenet300_dense/experiment=lenet300_mnist,measure.latency=False,pruner=none,seed=$s,sparsity=0"
    python -m prunelab.train experiment=lenet300_mnist pruner=global_magnitude sparsity=0.98 \
      epochs=60 seed="$s" "distill.teacher='$teacher'" measure.latency=false \
      trainer.enable_progress_bar=false hydra.run.dir="$OUT/lenet300_98_kd/seed=$s"
  done
fi

if [[ "${DISTILL:-0}" == 1 ]]; then
  # issue #5's distillation benchmark: LeNet-5 at 95% (layer-wise magnitude, gradual, 8 epochs)
  # with and without the dense LeNet-5 of the same recipe (seed 0) as teacher, same budget
  python -m prunelab.train model=lenet5 pruner=none sparsity=0 epochs=8 seed=0 \
    measure.latency=false trainer.enable_progress_bar=false hydra.run.dir="$OUT/lenet5_teacher"
  python -m prunelab.train -m model=lenet5 pruner=magnitude sparsity=0.95 epochs=8 seed="$SEEDS" \
    measure.latency=false trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/lenet5_95"
  python -m prunelab.train -m model=lenet5 pruner=magnitude sparsity=0.95 epochs=8 seed="$SEEDS" \
    "distill.teacher='$OUT/lenet5_teacher'" measure.latency=false \
    trainer.enable_progress_bar=false hydra.sweep.dir="$OUT/lenet5_95_kd"
fi
