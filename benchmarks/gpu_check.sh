#!/usr/bin/env bash
# Reproduce this project's GPU figures on your GPU, in one command from the checkout:
#   benchmarks/gpu_check.sh DATA=input/digit-recognizer.zip
# It runs two steps (STEPS=, default "stacked recipes"):
#   stacked  many nets per step (docs/performance.md, "Many nets per step"): `make bench` (one net, then 5 and 10
#            nets stacked in one step: images/s over all nets), then the default `make train` (5 folds x 18
#            epochs, nine-view TTA) twice, with nets_per_step=auto (the five folds stacked) and with
#            nets_per_step=1 (one net at a time), each timed, and `make compare` of their out-of-fold predictions.
#   recipes  the GPU recipe (docs/results.md, "The GPU recipe"): configs/best.yaml, then configs/cpu-best.yaml on
#            the same rows and folds as its baseline (RECIPES= changes the list), each in NPROC processes
#            (default 2) that share the GPU, whole nets each (parallel=folds), each timed; then `make compare` of
#            the first recipe against each other one.
# Everything it reports goes to OUT (default gpu-check/): report.log (the GPU and torch version, every command's
# output, the bench's JSON line, a `wall seconds` line per training run, the comparisons) and the metrics.json of
# each run as metrics-<run name>.json. The runs stay in runs/ (gpu-default-auto-*, gpu-default-1-*, gpu-best-*,
# gpu-cpu-best-*), their submissions in submissions/.
# Time: configs/best.yaml is estimated at 10-17 min on an H200 (docs/results.md; not measured yet), the rest at a
# few minutes each. Stopped part-way (Ctrl-C, a time limit)? Run it again with STEPS= the steps still to do: the
# interrupted training run (same name, same settings) resumes from its last finished epoch, and its `wall seconds`
# line then counts only the time since the restart; runs that had finished are trained again.
# Other settings: PYTHON (default .venv/bin/python, else python3), DEVICE (default cuda), QUICK=1 (a quick bench),
# and for a small dry run LIMIT=, EPOCHS= and ARGS="key=value ..." (added to every training command and the bench):
#   benchmarks/gpu_check.sh DATA=... DEVICE=cpu QUICK=1 LIMIT=500 EPOCHS=1 ARGS="tta=false folds=2"
set -euo pipefail
cd "$(dirname "$0")/.."
for setting in "$@"; do export "${setting?}"; done
: "${DATA:?give DATA=<the competition folder or its zip>, e.g. DATA=input/digit-recognizer.zip}"
if [[ -x .venv/bin/python ]]; then PYTHON=${PYTHON:-.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-check}
STEPS=${STEPS:-stacked recipes}
RECIPES=${RECIPES:-configs/best.yaml configs/cpu-best.yaml}
NPROC=${NPROC:-2}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
small=(${LIMIT:+limit=$LIMIT} ${EPOCHS:+epochs=$EPOCHS} ${ARGS:-})
root=${DIGITREC_ROOT:-.}
report=$OUT/report.log
{ date -u; "$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'; } \
  | tee -a "$report"

# `digitrec COMMAND ...`, its output added to the report
digitrec() { "$PYTHON" -m digitrec "$@" 2>&1 | tee -a "$report"; }
newest() { ls -d "$root/runs/$1"-2* 2>/dev/null | tail -n 1; }  # run folders are named <name>-<date>-<time>
# train NAME SETTING...: `digitrec train` started by `launch` (python, or torchrun), timed; keeps its metrics
launch=("$PYTHON")
train() {
  local name=$1 start=$SECONDS; shift
  "${launch[@]}" -m digitrec train "$@" "name=$name" "data=$DATA" "device=$DEVICE" progress=false "${small[@]}" \
    2>&1 | tee -a "$report"
  echo "wall seconds, $name: $((SECONDS - start))" | tee -a "$report"
  cp "$(newest "$name")/metrics.json" "$OUT/metrics-$name.json"
}
# compare A B: is run B more accurate than run A (McNemar's paired test of their out-of-fold predictions)?
compare() { digitrec compare "a=$(newest "$1")" "b=$(newest "$2")"; }

if [[ " $STEPS " == *" stacked "* ]]; then
  digitrec bench --config configs/default.yaml "data=$DATA" "device=$DEVICE" ${QUICK:+quick=1} "${small[@]}"
  for nets in auto 1; do train "gpu-default-$nets" --config configs/default.yaml "nets_per_step=$nets"; done
  compare gpu-default-1 gpu-default-auto
fi

if [[ " $STEPS " == *" recipes "* ]]; then
  launch=("$PYTHON" -m torch.distributed.run --standalone "--nproc-per-node=$NPROC")
  names=()
  for recipe in $RECIPES; do
    names+=("gpu-$(basename "$recipe" .yaml)")
    train "${names[-1]}" --config "$recipe" parallel=folds
  done
  for other in "${names[@]:1}"; do compare "$other" "${names[0]}"; done
fi
