#!/usr/bin/env bash
# Reproduces the default policy checkpoint (models/avdp_default) from scratch; CPU is enough, a GPU
# is used if present:
#   1. record expert episodes of both sim tasks through ROS (bridge + expert + recorder) and convert
#   2. train the tokenizer, the video model (all episodes), the IDM (action-labelled episodes,
#      video model frozen) and, for an honest comparison, the action-only baseline
#   3. evaluate both policies and the expert closed-loop on held-out seeds (100000+)
#   4. with EXPORT=1, copy the IDM checkpoint (without optimizer state) to models/avdp_default
# Knobs (environment): OUT (runs/default), EPISODES per task (150), STEPS_TOK (500), STEPS_VIDEO
# (2500), BATCH_VIDEO (16), STEPS_IDM (5000), STEPS_BASE (5000), LABELS (label fraction for idm/baseline, 1.0),
# EVAL_EPISODES (50), THREADS (torch threads per training process, 2), EXPORT (0).
# The label-scarcity and sampling-steps experiments build on this: scripts/experiments.sh.
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
  --steps "${STEPS_VIDEO:-2500}" --batch-size "${BATCH_VIDEO:-16}"
"$BIN/avdp-train-idm" "${common[@]}" --video "$OUT/video/latest" --out "$OUT/idm" \
  --steps "${STEPS_IDM:-5000}" --label-fraction "$LABELS"
"$BIN/avdp-train-baseline" "${common[@]}" --tokenizer "$OUT/tokenizer/latest" --out "$OUT/baseline" \
  --steps "${STEPS_BASE:-5000}" --label-fraction "$LABELS"
for policy in idm baseline expert; do
  for task in push pick_place; do
    src="$OUT/$policy"; [ "$policy" = expert ] && src=expert
    "$BIN/avdp-eval" --policy "$src" --task "$task" --episodes "${EVAL_EPISODES:-50}" \
      --out "$OUT/eval_${policy}_$task" --no-progress
  done
done
if [ "${EXPORT:-0}" = 1 ]; then
  mkdir -p models/avdp_default
  cp "$OUT/idm/latest/checkpoint.json" "$OUT/idm/latest/model.safetensors" models/avdp_default/
  echo "exported $OUT/idm/latest -> models/avdp_default"
fi
