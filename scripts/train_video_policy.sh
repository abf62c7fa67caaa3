#!/usr/bin/env bash
# The video + IDM policy on the shipped tokenizer's latents, at the action-only fine-tune's budget,
# and the diagnostics that say what its video model is worth (docs/video_policy.md):
#   OUT=runs/v17 scripts/train_video_policy.sh
#   1. the video model (avdp-train-video) on every recorded episode (VIDEO_DATA: the runs of
#      scripts/train_robust.sh and scripts/train_invariant.sh), VIDEO_STEPS in all (a cosine schedule
#      over all of them; about 1 step/s on one core, so this stage spans sessions: stop it any
#      time, re-running resumes from its last checkpoint, every 500 steps)
#   2. the IDM with the UWM head (avdp-train-idm --head uwm): encoder and head started from BASE (the
#      action-only policy the comparison is against) and trained IDM_STEPS on the labelled episodes
#      with the recipe of train_invariant.sh's fine-tune (lr 1e-4, EMA, failed DAgger rollouts
#      included, start windows x8), so it differs from that fine-tune only by the future it reads
#   3. the latest video model attached (avdp-attach-video): OUT/policy_step<video step>
#   4. on VAL_EPISODES validation seeds (13000+) per task, nominal scene: the IDM reading the
#      expert's true future (--future oracle, the upper bound), pure noise (--future-t 1: its
#      action-only mode) and the video model's prediction at future_t 0 and 0.5; `avdp-eval
#      --report OUT/diag_step<video step>` tables them
# VIDEO_ONLY=1 runs stage 1 alone; SKIP_VIDEO=1 skips it (uses OUT/video/latest as it is).
# Every stage skips what is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
OUT="${OUT:-runs/v17}" BASE="${BASE:-runs/inv/encoder}" TOKENIZER="${TOKENIZER:-models/avdp_default}"
VIDEO_STEPS="${VIDEO_STEPS:-40000}" IDM_STEPS="${IDM_STEPS:-4000}" VAL_EPISODES="${VAL_EPISODES:-50}"
INV="${INV:-runs/inv}" ROBUST="${ROBUST:-runs/robust}"
LABELLED=("$INV"/{pairs,dagger,nominal,daggern}_{push,pick_place}/dataset)
read -r -a VIDEO_DATA <<< "${VIDEO_DATA:-$(ls -d "${LABELLED[@]}" "$ROBUST"/*_{push,pick_place}/dataset 2>/dev/null | tr '\n' ' ')}"
mkdir -p "$OUT"
step() { "$VENV/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$1/latest/trainer.json" 2>/dev/null || echo 0; }

if [ -z "${SKIP_VIDEO:-}" ] && [ "$(step "$OUT/video")" -lt "$VIDEO_STEPS" ]; then
  resume=(--tokenizer "$TOKENIZER")
  [ -d "$OUT/video/latest" ] && resume=(--resume)
  "$VENV/bin/avdp-train-video" --data "${VIDEO_DATA[@]}" --out "$OUT/video" --steps "$VIDEO_STEPS" --batch-size 32 \
    --threads 1 --val-every 2000 --ckpt-every 500 --no-progress "${resume[@]}"
fi
[ -n "${VIDEO_ONLY:-}" ] && exit 0
[ -d "$OUT/video/latest" ] || { echo "$0: no video model in $OUT/video yet (run stage 1)" >&2; exit 2; }
VSTEP="$(step "$OUT/video")"
snap="$OUT/video_step$VSTEP"  # a copy: the running trainer rewrites latest/
[ -d "$snap" ] || { mkdir -p "$snap" && cp "$OUT/video/latest/checkpoint.json" "$OUT/video/latest/model.safetensors" "$snap/"; }

if [ "$(step "$OUT/uwm")" -lt "$IDM_STEPS" ]; then
  resume=(--video "$snap" --init-actor "$BASE")
  [ -d "$OUT/uwm/latest" ] && resume=(--resume)
  "$VENV/bin/avdp-train-idm" --data "${LABELLED[@]}" --out "$OUT/uwm" --head uwm --steps "$IDM_STEPS" --lr 1e-4 \
    --ema 0.999 --include-failed --early-weight 8 --early-frames 4 --override action_temperature=0 --threads 2 \
    --no-progress "${resume[@]}"
fi
POLICY="$OUT/policy_step$VSTEP"
[ -d "$POLICY" ] || "$VENV/bin/avdp-attach-video" --policy "$OUT/uwm/latest" --video "$snap" --out "$POLICY"

if [ "$VAL_EPISODES" -gt 0 ]; then
  for task in push pick_place; do
    for arm in "oracle --future oracle" "noise --future-t 1" "model_t0 --future-t 0" "model_t05 --future-t 0.5"; do
      read -r name flags <<< "$arm"
      e="$OUT/diag_step$VSTEP/${name}_$task"
      mkdir -p "$OUT/diag_step$VSTEP"
      # shellcheck disable=SC2086
      [ -f "$e/summary.json" ] || "$VENV/bin/avdp-eval" --policy "$POLICY" --task "$task" $flags \
        --episodes "$VAL_EPISODES" --seed 13000 --threads 1 --out "$e" --no-progress > "$e.log" 2>&1 &
      [ "$(jobs -rp | wc -l)" -lt 2 ] || wait -n
    done
  done
  wait
  "$VENV/bin/avdp-eval" --report "$OUT/diag_step$VSTEP"
fi
