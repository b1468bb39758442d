#!/usr/bin/env bash
# Many nets per step on a GPU, measured in one go (docs/performance.md, "Many nets per step"):
#   1. the bench: one net and 5 and 10 nets stacked, images/s over all nets;
#   2. the default `make train` (5 folds, TTA on) with nets_per_step=auto (stacked) and with nets_per_step=1,
#      each timed;
#   3. McNemar of the two runs' OOF (`make compare`).
# What it reports goes to OUT (default gpu-check/): machine.txt, bench.log (its last line is JSON), train-auto.log, train-1.log, compare.log, and the
# two runs' metrics.json. Run it from the checkout:
#   benchmarks/gpu_check.sh DATA=input/digit-recognizer.zip
# A dry run of the same steps on the CPU, small:
#   benchmarks/gpu_check.sh DATA=... DEVICE=cpu LIMIT=500 EPOCHS=1 QUICK=1 ARGS=tta=false
set -euo pipefail
cd "$(dirname "$0")/.."
for setting in "$@"; do export "${setting?}"; done
: "${DATA:?give DATA=<the competition folder or zip>}"
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
small=(${LIMIT:+limit=$LIMIT} ${EPOCHS:+epochs=$EPOCHS} ${ARGS:-})
runs=${DIGITREC_ROOT:-.}/runs
stamp=$(date +%Y%m%d-%H%M%S)
{ date -u; "$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'; } \
  | tee "$OUT/machine.txt"

"$PYTHON" -m digitrec bench --config configs/default.yaml "data=$DATA" "device=$DEVICE" "stacks=5 10" \
  ${QUICK:+quick=1} 2>&1 | tee "$OUT/bench.log"

for nets in auto 1; do
  SECONDS=0
  "$PYTHON" -m digitrec train --config configs/default.yaml "data=$DATA" "device=$DEVICE" "name=gpu-$nets-$stamp" \
    "nets_per_step=$nets" progress=false "${small[@]}" 2>&1 | tee "$OUT/train-$nets.log"
  echo "wall seconds: $SECONDS" | tee -a "$OUT/train-$nets.log"
  cp "$runs"/gpu-$nets-$stamp-*/metrics.json "$OUT/metrics-$nets.json"
done
"$PYTHON" -m digitrec compare "a=$(ls -d "$runs"/gpu-1-$stamp-*)" "b=$(ls -d "$runs"/gpu-auto-$stamp-*)" 2>&1 \
  | tee "$OUT/compare.log"
