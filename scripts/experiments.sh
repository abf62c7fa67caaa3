#!/usr/bin/env bash
# The model-core experiments, on top of scripts/train_default.sh's runs (same OUT):
#   labels: video model on all episodes (reused), IDM and baseline trained with action labels on
#           only LABELS (20%) of the training episodes, evaluated closed-loop;
#   steps:  the IDM policy evaluated with 1, 2, 4, 8 Euler steps per predicted frame (action head
#           at its default), and the action-only policy (the default recipe: it solves the tasks,
#           so a change with the step count can show) with 1, 2, 4, 8 steps per action chunk.
# Knobs (environment): OUT (runs/default), LABELS (0.2), STEPS_IDM / STEPS_BASE (10000 / 15000),
# EARLY_WEIGHT / EARLY_FRAMES / TEMPERATURE (as scripts/train_default.sh),
# EVAL_EPISODES (50), SWEEP_EPISODES (20), THREADS (2), ONLY (labels | steps | both, default both).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
OUT="${OUT:-runs/default}" LABELS="${LABELS:-0.2}" THREADS="${THREADS:-2}" ONLY="${ONLY:-both}"
BIN="$VENV/bin"
DATA=("$OUT/data_push/dataset" "$OUT/data_pick_place/dataset")
for extra in "$OUT/data_push_dart/dataset" "$OUT/data_pick_place_dart/dataset"; do
  [ -d "$extra" ] && DATA+=("$extra")  # recovery episodes, when train_default.sh recorded them
done
for d in "${DATA[@]}" "$OUT/video/latest" "$OUT/tokenizer/latest" "$OUT/idm/latest" "$OUT/baseline/latest"; do
  [ -e "$d" ] || { echo "missing $d: run scripts/train_default.sh first (same OUT)" >&2; exit 1; }
done
common=(--data "${DATA[@]}" --preset base --threads "$THREADS" --no-progress --label-fraction "$LABELS"
        --early-weight "${EARLY_WEIGHT:-8}" --early-frames "${EARLY_FRAMES:-4}" --override "action_temperature=${TEMPERATURE:-0}")
tag="labels${LABELS}"
if [ "$ONLY" != steps ]; then
  "$BIN/avdp-train-idm" "${common[@]}" --video "$OUT/video/latest" --out "$OUT/idm_$tag" --steps "${STEPS_IDM:-10000}"
  "$BIN/avdp-train-baseline" "${common[@]}" --tokenizer "$OUT/tokenizer/latest" --out "$OUT/baseline_$tag" \
    --steps "${STEPS_BASE:-15000}"
  for policy in "idm_$tag" "baseline_$tag"; do
    for task in push pick_place; do
      "$BIN/avdp-eval" --policy "$OUT/$policy" --task "$task" --episodes "${EVAL_EPISODES:-50}" \
        --out "$OUT/eval_${policy}_$task" --no-progress
    done
  done
fi
if [ "$ONLY" != labels ]; then
  for steps in 1 2 4 8; do
    for task in push pick_place; do
      "$BIN/avdp-eval" --policy "$OUT/idm" --task "$task" --episodes "${SWEEP_EPISODES:-20}" --video-steps "$steps" \
        --out "$OUT/sweep_video${steps}_$task" --no-progress
      "$BIN/avdp-eval" --policy "$OUT/baseline" --task "$task" --episodes "${SWEEP_EPISODES:-20}" --action-steps "$steps" \
        --out "$OUT/sweep_action${steps}_$task" --no-progress
    done
  done
fi
