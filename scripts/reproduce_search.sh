#!/usr/bin/env bash
# Issue #17's policy-search studies (BENCHMARKS.md, "Policy search"): a dense network trained
# once, then one prunelab.search per study. Each search writes pareto.csv, pareto.png,
# report.md (the chosen policies against the uniform ones) and search.json in its directory;
# rerunning a line resumes it. Wall time on the 2-core CI machine (one torch thread per run):
# LeNet-5 about 25 minutes of trials and 1 hour of final retrains; seed_cnn about 30 minutes.
set -euo pipefail
OUT=${OUT:-outputs/search_studies}
COMMON=(measure.latency=false trainer.enable_progress_bar=false hardware.threads=1)

# 1. LeNet-5 / MNIST, validation accuracy against non-zero MACs (unstructured per-layer
#    sparsities), 40 proxy trials of 1 epoch from the dense weights, NSGA-II; the 4 chosen
#    policies, 4 uniform and 4 sensitivity-profile baselines retrained 3 epochs with 3 seeds.
python -m prunelab.train experiment=extreme_mnist model=lenet5 data.batch_size=128 pruner=none \
  sparsity=0 seed=0 "${COMMON[@]}" hydra.run.dir="$OUT/dense_lenet5"
python -m prunelab.search run="$OUT/dense_lenet5" 'objectives=[val_acc,macs]' n_trials=40 \
  proxy_epochs=1 final_epochs=3 final_points=4 'final_seeds=[0,1,2]' \
  'baselines.uniform=[0.5,0.6,0.7,0.8]' study_name=lenet5_macs hydra.run.dir="$OUT/lenet5_macs"

# 2. seed_cnn / MNIST, validation accuracy against latency in ExecuTorch (XNNPACK, 1 thread,
#    batch 1: hardware=edge_cpu) with a 0.05 ms budget, channel ratios per layer, 30 proxy trials
#    of 1 epoch on 10,000 images; chosen and uniform policies retrained 1 epoch on all of MNIST
#    with 3 seeds and timed side by side; then `measure` on the chosen run confirms the latency.
#    (Session 11 ran it with a 0.1 ms budget and one seed.)
python -m prunelab.train experiment=lenet5_mnist model=seed_cnn epochs=4 pruner=none sparsity=0 \
  seed=0 "${COMMON[@]}" hydra.run.dir="$OUT/dense_seedcnn"
python -m prunelab.search run="$OUT/dense_seedcnn" granularity=channels \
  'objectives=[val_acc,latency]' hardware=edge_cpu hardware.runtime=executorch \
  'budgets={latency:0.05}' n_trials=30 proxy_epochs=1 'proxy_overrides=["data.subset=10000"]' \
  final_epochs=1 final_points=3 'final_seeds=[0,1,2]' 'baselines.uniform=[0.5,0.6,0.7,0.8]' \
  'trial_overrides=["measure.latency=false","trainer.enable_progress_bar=false"]' \
  study_name=seedcnn_latency05 hydra.run.dir="$OUT/seedcnn_latency05"
