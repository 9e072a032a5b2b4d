#!/usr/bin/env bash
# Lottery tickets on LeNet-300-100 / MNIST (Frankle & Carbin 2019 setup, shorter training):
# winning tickets for 3 seeds, then the two controls with the tickets' masks, then one report.
#   bash scripts/reproduce_lottery.sh            # all of it (about 45 min on 2 CPU cores)
#   EPOCHS=5 SEEDS=0,1,2 OUT=outputs/lottery bash scripts/reproduce_lottery.sh
# Each job uses one thread; the two controls run side by side. Rerunning continues where it
# stopped (finished levels are kept).
set -euo pipefail
EPOCHS=${EPOCHS:-5}
SEEDS=${SEEDS:-0,1,2}
OUT=${OUT:-outputs/lottery}
COMMON=(experiment=lth_lenet300 "epochs=$EPOCHS" hardware.threads=1 trainer.enable_progress_bar=false
        "hydra.sweep.dir=$OUT")
python -m prunelab.lottery -m "${COMMON[@]}" lottery.control=none "seed=$SEEDS"
for control in random_reinit random_mask; do
  python -m prunelab.lottery -m "${COMMON[@]}" "lottery.control=$control" "seed=$SEEDS" \
    "lottery.masks_from=$OUT" > "$OUT.$control.log" 2>&1 &
done
wait
python -m prunelab.report "$OUT"
