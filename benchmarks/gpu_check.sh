#!/usr/bin/env bash
# The GPU measurements of issues 29 and 30 in one prepared script, for a short lease on a GPU machine.
#   STEPS=stacked  many nets per step (docs/performance.md, "Many nets per step"): the bench with one net and 5 and
#                  10 nets stacked (images/s over all nets); the default `make train` (5 folds, TTA on) with
#                  nets_per_step=auto and with nets_per_step=1, each timed; McNemar of their OOF (`compare`).
#   STEPS=recipes  the GPU recipe (docs/results.md, "The GPU recipe"): trains each of RECIPES in turn until it has
#                  finished, in NPROC processes (default 2) that share the GPU, whole nets each (parallel=folds),
#                  inside BUDGET seconds all told; a run cut off by the budget goes on in the next
#                  sitting from the archive this one brings back (CARRIED=); once every recipe has finished, the
#                  first is compared with each of the others (McNemar on the same 42000 rows).
# Everything it reports goes to OUT (default gpu-check/), at most 8 files: report.log (every step's output, the
# bench's JSON line and `wall seconds` lines included), metrics-<run>.json of each finished run, and
# runs.tar.gz.part-* (the recipes' run folders without weights.pt and resume.pt, in parts of 15 MiB: a net cut off
# mid-way starts again next sitting; finished nets keep their predictions, which is all the OOF and the submission
# need). Run it from the checkout:
#   benchmarks/gpu_check.sh DATA=input/digit-recognizer.zip STEPS=recipes BUDGET=540 CARRIED=<folder of the parts>
# A dry run on the CPU, small:
#   benchmarks/gpu_check.sh DATA=... DEVICE=cpu LIMIT=500 EPOCHS=1 QUICK=1 ARGS="tta=false folds=2"
set -euo pipefail
cd "$(dirname "$0")/.."
for setting in "$@"; do export "${setting?}"; done
: "${DATA:?give DATA=<the competition folder or zip>}"
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-check}
STEPS=${STEPS:-stacked recipes}
RECIPES=${RECIPES:-configs/best.yaml configs/cpu-best.yaml}
BUDGET=${BUDGET:-540}
NPROC=${NPROC:-2}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
small=(${LIMIT:+limit=$LIMIT} ${EPOCHS:+epochs=$EPOCHS} ${ARGS:-})
root=${DIGITREC_ROOT:-.}
report=$OUT/report.log
stamp=$(date +%Y%m%d-%H%M%S)
{ date -u; "$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'; } \
  | tee -a "$report"

# `digitrec COMMAND KEY=VALUE...` on DATA and DEVICE, its output added to the report; `launch` puts a launcher before it
launch=("$PYTHON")
digitrec() { "${launch[@]}" -m digitrec "$@" "data=$DATA" "device=$DEVICE" 2>&1 | tee -a "$report"; }
newest() { ls -d "$root/runs/$1"-2* 2>/dev/null | tail -n 1; }  # run folders are named <name>-<date>-<time>
finished() { local run; run=$(newest "$1"); [[ -n "$run" && -f "$run/metrics.json" ]]; }

if [[ " $STEPS " == *" stacked "* ]]; then
  digitrec bench --config configs/default.yaml "stacks=5 10" ${QUICK:+quick=1}
  for nets in auto 1; do
    SECONDS=0
    digitrec train --config configs/default.yaml "name=gpu-$nets-$stamp" "nets_per_step=$nets" progress=false "${small[@]}"
    echo "wall seconds, default nets_per_step=$nets: $SECONDS" | tee -a "$report"
    cp "$(newest "gpu-$nets-$stamp")/metrics.json" "$OUT/metrics-$nets.json"
  done
  "$PYTHON" -m digitrec compare "a=$(newest "gpu-1-$stamp")" "b=$(newest "gpu-auto-$stamp")" 2>&1 | tee -a "$report"
fi

if [[ " $STEPS " == *" recipes "* ]]; then
  if [[ -n "${CARRIED:-}" ]]; then
    mkdir -p "$root/runs"
    cat "$CARRIED"/runs.tar.gz.part-* | tar -xz -C "$root/runs"
  fi
  names=()
  deadline=$((SECONDS + BUDGET))
  for recipe in $RECIPES; do
    name=$(basename "$recipe" .yaml)
    names+=("$name")
    left=$((deadline - SECONDS))
    if finished "$name" || ((left < 60)); then continue; fi
    start=$SECONDS
    # the same command again resumes the newest unfinished run of the name; `timeout` cuts it at the budget
    launch=(timeout --signal=TERM "$left" "$PYTHON" -m torch.distributed.run --standalone "--nproc-per-node=$NPROC")
    digitrec train --config "$recipe" parallel=folds progress=false "${small[@]}" || true
    launch=("$PYTHON")
    echo "wall seconds, $name this sitting: $((SECONDS - start))" | tee -a "$report"
  done
  # each recipe's newest run, looked up once now that this sitting's training is over ("" when it has none)
  declare -A run_of=()
  runs_now=()
  for name in "${names[@]}"; do
    run_of[$name]=$(newest "$name")
    if [[ -n "${run_of[$name]}" ]]; then runs_now+=("$(basename "${run_of[$name]}")"); fi
    if [[ -f "${run_of[$name]}/metrics.json" ]]; then cp "${run_of[$name]}/metrics.json" "$OUT/metrics-$name.json"; fi
  done
  first=${run_of[${names[0]}]}
  for other in "${names[@]:1}"; do
    if [[ -f "$first/metrics.json" && -f "${run_of[$other]}/metrics.json" ]]; then
      "$PYTHON" -m digitrec compare "a=${run_of[$other]}" "b=$first" 2>&1 | tee -a "$report"
    fi
  done
  if ((${#runs_now[@]})); then
    rm -f "$OUT"/runs.tar.gz.part-*
    tar -cz -C "$root/runs" --exclude=weights.pt --exclude=resume.pt --exclude=.lock "${runs_now[@]}" \
      | split -b 15M - "$OUT/runs.tar.gz.part-"
    ls -l "$OUT" | tee -a "$report"
  fi
fi
