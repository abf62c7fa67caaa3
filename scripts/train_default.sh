#!/usr/bin/env bash
# Reproduces the default policy checkpoint from scratch (CPU is enough; a GPU is used if present):
#   1. record expert episodes of both sim tasks through ROS (bridge + expert + recorder) and convert
#   2. train the tokenizer, the video model (all episodes), the IDM (action-labelled episodes)
#      and, for an honest comparison, the action-only baseline
#   3. evaluate both policies closed-loop on held-out seeds
# Knobs (environment): OUT (runs/default), EPISODES per task (150), STEPS_TOK (500), STEPS_VIDEO
# (1500), STEPS_IDM (2000), STEPS_BASE (2000), LABELS (label fraction for idm/baseline, 1.0),
# EVAL_EPISODES (50), THREADS (torch threads per training process, 2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
OUT="${OUT:-runs/default}" EPISODES="${EPISODES:-150}" LABELS="${LABELS:-1.0}" THREADS="${THREADS:-2}"
BIN="$VENV/bin"
DATA=()
for task in push pick_place; do
  if [ ! -f "$OUT/data_$task/dataset/manifest.json" ]; then
    "$BIN/avdp-collect" --task "$task" --episodes "$EPISODES" --seed 1000 --out "$OUT/data_$task" --no-video \
      --time-limit 30
  fi
  DATA+=("$OUT/data_$task/dataset")
done
common=(--data "${DATA[@]}" --preset base --threads "$THREADS" --no-progress)
"$BIN/avdp-train-tokenizer" "${common[@]}" --out "$OUT/tokenizer" --steps "${STEPS_TOK:-500}"
"$BIN/avdp-train-video" "${common[@]}" --tokenizer "$OUT/tokenizer/latest" --out "$OUT/video" \
  --steps "${STEPS_VIDEO:-1500}"
"$BIN/avdp-train-idm" "${common[@]}" --video "$OUT/video/latest" --out "$OUT/idm" \
  --steps "${STEPS_IDM:-2000}" --label-fraction "$LABELS"
"$BIN/avdp-train-baseline" "${common[@]}" --tokenizer "$OUT/tokenizer/latest" --out "$OUT/baseline" \
  --steps "${STEPS_BASE:-2000}" --label-fraction "$LABELS"
for policy in idm baseline; do
  for task in push pick_place; do
    "$BIN/avdp-eval" --policy "$OUT/$policy" --task "$task" --episodes "${EVAL_EPISODES:-50}" \
      --out "$OUT/eval_${policy}_$task" --no-progress
  done
done
