#!/usr/bin/env bash
# Appearance-robust fine-tune of a policy checkpoint (issue 16; BASE, default models/avdp_default):
#   1. record expert episodes of both tasks through ROS in randomised training scenes
#      (avdp-collect --appearance train): EPISODES clean ones (seeds 1000+) and PERTURBED_EPISODES
#      with DART-style bumps (seeds 2000+), labelled with the expert's intended target
#   2. a DAgger round in the same scenes (avdp-dagger --appearance train, DAGGER_EPISODES per task,
#      seeds 20000+): BASE drives, the expert labels (BASE has never seen these scenes: this is
#      where it goes wrong)
#   3. fine-tune BASE's tokenizer on the new frames with colour jitter and shift (--augment default,
#      STEPS_TOK), so the objects survive reconstruction on any table
#   4. move BASE onto the new tokenizer's latents (--init BASE --tokenizer ...) on everything, with
#      VIEWS augmented latent views per frame (--augment default --views VIEWS), STEPS steps
#   5. ROUNDS more DAgger rounds (seeds 20000 + 1000 r) by the latest policy, each followed by
#      STEPS_DAGGER fine-tuning steps (--resume)
#   6. evaluate on VAL_EPISODES validation seeds (13000+) per task: nominal and every held-out suite
# Every stage skips what is already there and the trainers resume (--resume), so re-running the
# script after an interruption continues where it stopped. THREADS: torch threads per process (2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
OUT="${OUT:-runs/robust}" BASE="${BASE:-models/avdp_default}" THREADS="${THREADS:-2}" VIEWS="${VIEWS:-4}"
STEPS="${STEPS:-12000}" ROUNDS="${ROUNDS:-2}" DAGGER_EPISODES="${DAGGER_EPISODES:-60}"
BIN="$VENV/bin"
mkdir -p "$OUT"
CLEAN=() ALL=()
for task in push pick_place; do
  if [ ! -f "$OUT/data_$task/dataset/manifest.json" ]; then
    "$BIN/avdp-collect" --task "$task" --episodes "${EPISODES:-120}" --seed 1000 --appearance train \
      --out "$OUT/data_$task" --no-video --time-limit 30 || true  # exit 1 = some episode failed
  fi
  if [ ! -f "$OUT/data_${task}_dart/dataset/manifest.json" ]; then
    "$BIN/avdp-collect" --task "$task" --episodes "${PERTURBED_EPISODES:-100}" --seed 2000 --perturb 0.04 0.2 \
      --appearance train --out "$OUT/data_${task}_dart" --no-video --time-limit 30 || true
  fi
  CLEAN+=("$OUT/data_$task/dataset")
  ALL+=("$OUT/data_$task/dataset" "$OUT/data_${task}_dart/dataset")
done
dagger() {  # dagger POLICY ROUND: one round in training scenes, both tasks
  for task in push pick_place; do
    d="$OUT/dagger$2_$task"
    if [ ! -f "$d/summary.json" ]; then
      "$BIN/avdp-dagger" --policy "$1" --task "$task" --episodes "$DAGGER_EPISODES" --seed $((20000 + 1000 * $2)) \
        --appearance train --out "$d" --threads "$THREADS" --no-progress --overwrite
    fi
    ALL+=("$d/dataset")
  done
}
dagger "$BASE" 0
opts=(--preset base --threads "$THREADS" --no-progress)
act=(--early-weight 8 --early-frames 4 --override action_temperature=0 --include-failed
     --augment default --views "$VIEWS")
tok="$OUT/tokenizer"
if [ ! -f "$tok/done" ]; then
  resume=(--init "$BASE"); [ -d "$tok/latest" ] && resume=(--resume)
  "$BIN/avdp-train-tokenizer" --data "${CLEAN[@]}" "${opts[@]}" --out "$tok" --steps "${STEPS_TOK:-1000}" \
    --augment default --frame-stride 2 "${resume[@]}"
  touch "$tok/done"
fi
policy="$OUT/policy" steps="$STEPS"
train() {  # train STEPS: the policy on everything so far, to STEPS total steps
  if [ -d "$policy/latest" ]; then
    "$BIN/avdp-train-baseline" --data "${ALL[@]}" "${opts[@]}" --out "$policy" --resume --steps "$1" "${act[@]}"
  else
    "$BIN/avdp-train-baseline" --data "${ALL[@]}" "${opts[@]}" --out "$policy" --init "$BASE" \
      --tokenizer "$tok/latest" --steps "$1" "${act[@]}"
  fi
}
train "$steps"
for round in $(seq 1 "$ROUNDS"); do
  dagger "$policy/latest" "$round"
  steps=$(( steps + ${STEPS_DAGGER:-8000} ))
  train "$steps"
done
for suite in nominal heldout_table heldout_light heldout_camera; do
  for task in push pick_place; do
    e="$OUT/val_${suite}_$task"
    [ -f "$e/summary.json" ] || "$BIN/avdp-eval" --policy "$policy/latest" --task "$task" --appearance "$suite" \
      --episodes "${VAL_EPISODES:-50}" --seed 13000 --threads 1 --out "$e" --no-progress
  done
done
"$BIN/avdp-eval" --report "$OUT"
