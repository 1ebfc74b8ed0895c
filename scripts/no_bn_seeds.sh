#!/usr/bin/env bash
# How often does the net train without BN? One 800-step run per (depth, seed) at one lr, BN off, the default
# init (model.init_std 0.05), judged as the studies judge (final val/acc >= 0.9; without BN the population and
# batch statistics are the same). One run at a time, one thread each (OMP_NUM_THREADS=1, as the single-seed
# reference studies ran; the thread count changes a run's floating-point sums, so every row uses the same).
# Resumable: a (depth, seed, lr) already in the CSV is skipped, so rerunning the script goes on where it stopped.
#   BNEXP_DATA_DIR=../shared/data/mnist nice -n 10 bash scripts/no_bn_seeds.sh [DEPTHS] [SEEDS] [LR]
#   defaults: "8 12" "0 1 2 3 4 5 6 7 8 9" 0.001
# Output: docs/results/no_bn_seeds/runs.csv (depth,seed,lr,val_acc,trains,diverged,cpu_s,threads); each run's
# metrics.json stays in outputs/no_bn_seeds/d<depth>-s<seed>-lr<lr>/.
set -euo pipefail
DEPTHS=${1:-"8 12"}
SEEDS=${2:-"0 1 2 3 4 5 6 7 8 9"}
LR=${3:-0.001}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
csv=${NO_BN_CSV:-docs/results/no_bn_seeds/runs.csv}
mkdir -p "$(dirname "$csv")" outputs/no_bn_seeds
[[ -s $csv ]] || echo "depth,seed,lr,val_acc,trains,diverged,cpu_s,threads" > "$csv"
for depth in $DEPTHS; do
  for seed in $SEEDS; do
    if grep -q "^$depth,$seed,$LR," "$csv"; then continue; fi
    dir=outputs/no_bn_seeds/d$depth-s$seed-lr$LR-t$OMP_NUM_THREADS
    rm -rf "$dir"  # a run stopped half way: start it again
    python -m bnexp.run model.bn=off model.depth="$depth" optim.lr="$LR" seed="$seed" logger=none \
      trainer.progress_bar=false hydra.run.dir="$dir" > "$dir.log" 2>&1 || { echo "failed: $dir (see $dir.log)" >&2; continue; }
    python - "$dir/metrics.json" "$depth" "$seed" "$LR" "$OMP_NUM_THREADS" >> "$csv" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
acc, diverged = m.get("val/acc"), bool(m.get("diverged", False))
trains = acc is not None and acc == acc and acc >= 0.9 and not diverged
print(f"{sys.argv[2]},{sys.argv[3]},{sys.argv[4]},{acc:.4f},{int(trains)},{int(diverged)},{m.get('cpu_s', 0):.1f},{sys.argv[5]}")
PY
  done
done
