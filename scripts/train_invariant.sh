#!/usr/bin/env bash
# An appearance-invariant encoder for a policy trained in the nominal scene (BASE, required), so the
# policy acts in any scene look without retraining (docs/appearance.md, "An appearance-invariant
# encoder"). models/avdp_default already has one; its nominal-scene policy, as BASE for a re-run, is
# the checkpoint of revision 61c6d8b (models/README.md says how to get it):
#   1. expert episodes of both tasks in randomised training scenes, DART-perturbed (avdp-dagger
#      --policy expert --perturb 0.04 0.2, PAIR_EPISODES per task, seeds 5000+), every frame also
#      rendered as the nominal scene shows the same state (--nominal-pairs)
#   2. the encoder of BASE's tokenizer trained to give every look BASE's latents of the nominal view
#      (avdp-train-tokenizer --target-look nominal --init BASE, --augment default, STEPS_TOK steps);
#      decoder and latent scale stay BASE's. BASE with it attached (avdp-attach-tokenizer) is OUT/stage1
#   3. DAgger rollouts of OUT/stage1 in training scenes with nominal pairs (DAGGER_EPISODES per task,
#      seeds 30000+): the states the policy itself reaches; only their image pairs are used
#   4. the encoder trained on, to STEPS_TOK2 steps, on 1 + 3 with the stronger --augment invariant
#      (wider light changes, white balance, a few degrees of rotation and zoom); attached: OUT/stage2
#   5. on to STEPS_TOK3 steps with half the images unaugmented (--clean-fraction 0.5): every image
#      was augmented until here, and the policy lost nominal pick_place success to the encoder's small
#      error on clean nominal frames (docs/appearance.md); attached: OUT/encoder
#   6. optional (FINETUNE_STEPS, default 0: OUT/encoder is the result): the policy fine-tuned on the
#      invariant latents. Alone it traded pick_place for push; with NOMINAL_DAGGER=120 and
#      FINETUNE_BLEND=0.5 it is the last stage of the default (scripts/train_default.sh,
#      docs/appearance.md). Data: NOMINAL_EPISODES expert episodes per task in the nominal scene
#      (seeds 3000+) and NOMINAL_DAGGER rollouts of OUT/encoder there (seeds 20500+), so it keeps the
#      look it was best at, plus every labelled episode of 1 and 3, failed rollouts included (the
#      expert's labels are right in any state); avdp-train-baseline --init OUT/encoder, small
#      learning rate, EMA. The encoder is not trained here: the caches hold its latents.
#      Result: OUT/finetune/latest; with FINETUNE_BLEND A (in (0, 1); default 1, none), the policy
#      moved only the fraction A of the way to it (avdp-blend-policy, as WiSE-FT does), OUT/ftblend:
#      half-way kept the fine-tune's gain on held-out tables and most of the start's pick_place
#      (docs/appearance.md). NOMINAL_DAGGER2 (0): a second DAgger round, that many nominal
#      pick_place rollouts of that result (seeds 22000+: the states it reaches itself, its failed
#      grasps included), then the same fine-tune from OUT/encoder again on everything
#      (OUT/finetune2, blended: OUT/ftblend2).
#      FINETUNE_WEIGHTS holds for the first fine-tune only.
#   7. the result is copied to OUT/policy and run on VAL_EPISODES validation seeds (13000+) per task,
#      nominal and every held-out suite (VAL_EPISODES=0 skips it). The held-out test (seeds 100000+):
#      scripts/eval_appearance.sh OUT/policy OUT/test
# ENCODER=POLICY (instead of BASE): POLICY already reads an invariant encoder (models/avdp_default does);
# stages 2, 4 and 5 are skipped, POLICY drives the rollouts of 3 (none with DAGGER_EPISODES=0) and is
# what 6 fine-tunes. With ENCODER_STEPS > 0, POLICY's encoder is first trained on, that many steps, on
# 1 and 3 as in 5 (--augment invariant, --clean-fraction 0.5), its target POLICY's own latents of the
# nominal views (--init POLICY): what `train` gained since POLICY was made (new table surfaces) taught
# without the encoder's 16000 steps from BASE; attached to POLICY: OUT/encoder. ENCODER_STEPS may list
# legs, e.g. "5000 10000": to 5000 steps, then on to 10000 with --resume, the learning-rate schedule
# recomputed for the new end (a warm restart at about half the peak rate). BLEND (1): attach ENCODER's
# encoder moved only that fraction of the way to the trained one (avdp-attach-tokenizer --blend).
# LOOK: the appearance distribution of 1 and 3 (default train; train_spot, train_surfaces and train_clouds
# were tried, docs/appearance.md).
# CAMERA_WEIGHT: camera=W items (e.g. "wrist=3"): that camera's images drawn W times per epoch in every
# encoder stage (avdp-train-tokenizer --camera-weight); default none, every camera alike. OBJECT_WEIGHT: K,
# the latents over the cube and the target weigh 1 + K in every encoder stage's loss (--object-weight; 0).
# FINETUNE_WEIGHTS: one integer per dataset of 6, in its order (pairs, dagger, nominal, daggern; push
# then pick_place in each): how often its windows are drawn (avdp-train-baseline --data-weight).
# Every stage skips what is already there and the trainer resumes, so re-running continues where it
# stopped. Two recordings run at once (one per core). THREADS: torch threads of the trainer (2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
[ -n "${BASE:-}${ENCODER:-}" ] || { echo "$0: set BASE to a policy trained in the nominal scene, or ENCODER to one that
already reads an invariant encoder (see the header)" >&2; exit 2; }
OUT="${OUT:-runs/inv}" THREADS="${THREADS:-2}"
PAIR_EPISODES="${PAIR_EPISODES:-200}" DAGGER_EPISODES="${DAGGER_EPISODES:-100}"
STEPS_TOK="${STEPS_TOK:-5000}" STEPS_TOK2="${STEPS_TOK2:-12000}" STEPS_TOK3="${STEPS_TOK3:-16000}"
NOMINAL_EPISODES="${NOMINAL_EPISODES:-50}" NOMINAL_DAGGER="${NOMINAL_DAGGER:-40}" FINETUNE_STEPS="${FINETUNE_STEPS:-0}"
ENCODER_STEPS="${ENCODER_STEPS:-0}" LOOK="${LOOK:-train}"
BIN="$VENV/bin"
mkdir -p "$OUT"
record() {  # record NAME TASK SEED EPISODES POLICY APPEARANCE [avdp-dagger options]: labelled episodes, once
  local d="$OUT/$1" pairs=(--nominal-pairs)
  [ "$6" = nominal ] && pairs=()  # the nominal scene is its own pair
  [ -f "$d/summary.json" ] || "$BIN/avdp-dagger" --policy "$5" --task "$2" --seed "$3" --episodes "$4" \
    --appearance "$6" "${pairs[@]}" --out "$d" --time-limit 30 --no-progress --overwrite "${@:7}" > "$d.log" 2>&1
}
record pairs_push push 5000 "$PAIR_EPISODES" expert "$LOOK" --perturb 0.04 0.2 &
record pairs_pick_place pick_place 5000 "$PAIR_EPISODES" expert "$LOOK" --perturb 0.04 0.2
wait
DATA=("$OUT/pairs_push/dataset" "$OUT/pairs_pick_place/dataset")
tok="$OUT/tokenizer"
opts=(--target-look nominal --frame-stride 2 --lr 5e-4 --val-every 500 --ckpt-every 500 --threads "$THREADS"
      --out "$tok" --no-progress)
for item in ${CAMERA_WEIGHT:-}; do opts+=(--camera-weight "$item"); done
opts+=(--object-weight "${OBJECT_WEIGHT:-0}")
attach() {  # attach DIR [BLEND]: BASE (or ENCODER) reading the tokenizer's latest encoder, once
  [ -f "$1/checkpoint.json" ] || "$BIN/avdp-attach-tokenizer" --policy "${BASE:-$ENCODER}" --tokenizer "$tok/latest" \
    --out "$1" --blend "${2:-1}"
}
if [ -n "${ENCODER:-}" ]; then
  STAGE1="$ENCODER"  # an invariant policy already: its own rollouts, then only the fine-tune
elif [ ! -f "$OUT/stage1/checkpoint.json" ]; then
  resume=(--init "$BASE"); [ -d "$tok/latest" ] && resume=(--resume)
  "$BIN/avdp-train-tokenizer" --data "${DATA[@]}" "${opts[@]}" --steps "$STEPS_TOK" --augment default "${resume[@]}"
  attach "$OUT/stage1"
fi
if [ "$DAGGER_EPISODES" -gt 0 ]; then
  record dagger_push push 30000 "$DAGGER_EPISODES" "${STAGE1:-$OUT/stage1}" "$LOOK" --threads 1 &
  record dagger_pick_place pick_place 30000 "$DAGGER_EPISODES" "${STAGE1:-$OUT/stage1}" "$LOOK" --threads 1
  wait
  DATA+=("$OUT/dagger_push/dataset" "$OUT/dagger_pick_place/dataset")
fi
if [ -z "${ENCODER:-}" ] && [ ! -f "$OUT/stage2/checkpoint.json" ]; then
  "$BIN/avdp-train-tokenizer" --data "${DATA[@]}" "${opts[@]}" --steps "$STEPS_TOK2" --augment invariant --resume
  attach "$OUT/stage2"
fi
if [ -z "${ENCODER:-}" ] && [ ! -f "$OUT/encoder/checkpoint.json" ]; then
  "$BIN/avdp-train-tokenizer" --data "${DATA[@]}" "${opts[@]}" --steps "$STEPS_TOK3" --augment invariant --resume \
    --clean-fraction 0.5
  attach "$OUT/encoder"
fi
step_of() {  # step_of RUN: the step its latest checkpoint reached (0 if none)
  if [ -f "$1/latest/trainer.json" ]; then
    "$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$1/latest/trainer.json"
  else echo 0; fi
}
LAST_LEG="${ENCODER_STEPS##* }"
if [ -n "${ENCODER:-}" ] && [ "$LAST_LEG" -gt 0 ] && [ ! -f "$OUT/encoder/checkpoint.json" ]; then
  for leg in $ENCODER_STEPS; do
    [ "$(step_of "$tok")" -ge "$leg" ] && continue
    resume=(--init "$ENCODER"); [ -d "$tok/latest" ] && resume=(--resume --init "$ENCODER")
    "$BIN/avdp-train-tokenizer" --data "${DATA[@]}" "${opts[@]}" --steps "$leg" --augment invariant \
      --clean-fraction 0.5 "${resume[@]}"
  done
  attach "$OUT/encoder" "${BLEND:-1}"
fi
POLICY="${ENCODER:-$OUT/encoder}"
[ "$LAST_LEG" -gt 0 ] && POLICY="$OUT/encoder"
if [ "$FINETUNE_STEPS" -gt 0 ]; then
  record nominal_push push 3000 "$NOMINAL_EPISODES" expert nominal &
  record nominal_pick_place pick_place 3000 "$NOMINAL_EPISODES" expert nominal
  wait
  record daggern_push push 20500 "$NOMINAL_DAGGER" "$POLICY" nominal --threads 1 &
  record daggern_pick_place pick_place 20500 "$NOMINAL_DAGGER" "$POLICY" nominal --threads 1
  wait
  DATA+=("$OUT"/{nominal,daggern}_{push,pick_place}/dataset)
  START="$POLICY"
  finetune() {  # finetune RUN BLENDED [avdp-train-baseline options]: START fine-tuned on DATA; sets POLICY
    local ft="$OUT/$1" resume=(--init "$START")
    [ -d "$ft/latest" ] && resume=(--resume)
    [ "$(step_of "$ft")" -ge "$FINETUNE_STEPS" ] ||
      "$BIN/avdp-train-baseline" --data "${DATA[@]}" --out "$ft" --steps "$FINETUNE_STEPS" --lr 1e-4 --ema 0.999 \
        --include-failed --early-weight 8 --early-frames 4 --override action_temperature=0 --threads "$THREADS" \
        --no-progress "${resume[@]}" "${@:3}"
    POLICY="$ft/latest"
    if [ "${FINETUNE_BLEND:-1}" != 1 ]; then  # WiSE-FT: the fine-tune's start moved only that fraction of the way
      [ -f "$OUT/$2/checkpoint.json" ] || "$BIN/avdp-blend-policy" --policy "$START" --tuned "$ft/latest" \
        --alpha "$FINETUNE_BLEND" --out "$OUT/$2"
      POLICY="$OUT/$2"
    fi
  }
  # shellcheck disable=SC2086
  finetune finetune ftblend ${FINETUNE_WEIGHTS:+--data-weight $FINETUNE_WEIGHTS}
  if [ "${NOMINAL_DAGGER2:-0}" -gt 0 ]; then  # a second round: where that result itself fails a grasp
    half=$(( NOMINAL_DAGGER2 / 2 ))
    record dagger2_a pick_place 22000 "$half" "$POLICY" nominal --threads 1 &
    record dagger2_b pick_place $(( 22000 + half )) $(( NOMINAL_DAGGER2 - half )) "$POLICY" nominal --threads 1
    wait
    DATA+=("$OUT"/dagger2_{a,b}/dataset)
    finetune finetune2 ftblend2  # from START again, on every dataset
  fi
fi
mkdir -p "$OUT/policy"
cp "$POLICY/checkpoint.json" "$POLICY/model.safetensors" "$OUT/policy/"  # what scripts/train_default.sh ships
if [ "${VAL_EPISODES:-20}" -gt 0 ]; then
  scripts/eval_appearance.sh "$OUT/policy" "$OUT/val" "${VAL_EPISODES:-20}" 13000
fi
echo "the policy: $OUT/policy (from $POLICY)"
