#!/usr/bin/env bash
# Reproduces the default policy checkpoint (models/avdp_default) from scratch; CPU is enough, a GPU
# is used if present:
#   1. record expert episodes of both sim tasks through ROS (bridge + expert + recorder) and convert:
#      EPISODES clean ones (seeds 1000+) and PERTURBED_EPISODES with DART-style bumps on the
#      executed target, labelled with the expert's intended target (seeds 2000+): recovery data
#   2. train the tokenizer and the video model on the clean episodes, the IDM (video model frozen)
#      and, for an honest comparison, the action-only baseline on clean + perturbed episodes
#      (failed demonstrations are left out of action training)
#   3. DAgger rounds (DAGGER_ROUNDS, 4): the action-only policy drives new episodes, the expert only
#      labels them (avdp-dagger, with its own chunk per observation), and the action-only policy is
#      fine-tuned with them
#   4. a targeted DAgger round on the push layouts the policy gets wrong (TARGETED_EPISODES), then a
#      fine-tune with an EMA of the weights
#   5. an appearance-invariant encoder for the action-only policy (INVARIANT, 1; 0 = off): first the
#      policy is not retrained, its tokenizer's encoder learns to map every scene look to the latents of the
#      nominal scene (scripts/train_invariant.sh with BASE = that policy, OUT/invariant), then trained on
#      5000 steps on new pairs with its own nominal latents as the target (ENCODER_STEPS, OUT/surfaces):
#      the shipped encoder was made when `train` had two table surfaces and learnt tiles and planks so.
#      A run from scratch sees all four in the first stage already; there the second trains on, 5000
#      more steps, on pairs of the same seeds (5000+). Then (OUT/clouds) the encoder trained on, to
#      10000 steps in two legs, on pairs in scenes with soft stains on the table (LOOK=train_clouds),
#      and the policy fine-tuned onto its latents (4000 steps on those pairs and 100 + 240 nominal
#      expert and DAgger episodes) and blended half-way back (FINETUNE_BLEND=0.5, avdp-blend-policy);
#      then 120 nominal pick_place rollouts of that blend and the same fine-tune and blend again
#      (NOMINAL_DAGGER2=120): push on held-out tables, the cell the encoder alone left at 74%, rose to
#      91%, and nominal pick_place is 98% (93% after the first fine-tune; test seeds, n = 100;
#      docs/appearance.md)
#   6. evaluate both policies and the expert closed-loop on held-out seeds (100000+)
#   7. with EXPORT=1, copy the IDM checkpoint (EXPORT=baseline: the action-only one, with the invariant
#      encoder unless INVARIANT=0) to models/avdp_default
# Knobs (environment): OUT (runs/default), EPISODES per task (150), PERTURBED_EPISODES per task (150),
# PERTURB ("0.04 0.2": peak offset m, yaw rad), STEPS_TOK (2500: at 500 the tokenizer still
# dropped the green target), CROP (the scene camera's region of interest, "0.40625,0.203125,0.5,0.5":
# the table; "" = whole frames), STEPS_VIDEO
# (2500), BATCH_VIDEO (16), STEPS_IDM (10000), STEPS_BASE (15000), LABELS (label fraction for idm/baseline, 1.0),
# EARLY_WEIGHT / EARLY_FRAMES (8 / 4: episode-start windows drawn 8x as often), TEMPERATURE (action
# sampler noise scale stored in the checkpoints, 0), DAGGER_ROUNDS (4), DAGGER_EPISODES per task
# and round (100), DAGGER_TASKS ("push pick_place"), STEPS_DAGGER (12000 fine-tuning steps per
# round), DAGGER_ROS (0), TARGETED_EPISODES (180), EVAL_EPISODES (50), THREADS (torch threads per
# training process, 2), INVARIANT (1), EXPORT (0: 1 copies the IDM, "baseline" the action-only policy to
# models/).
# The label-scarcity and sampling-steps experiments build on this: scripts/experiments.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
OUT="${OUT:-runs/default}" EPISODES="${EPISODES:-150}" LABELS="${LABELS:-1.0}" THREADS="${THREADS:-2}"
BIN="$VENV/bin"
PERTURB="${PERTURB:-0.04 0.2}"
CLEAN=() ALL=()
for task in push pick_place; do
  if [ ! -f "$OUT/data_$task/dataset/manifest.json" ]; then
    "$BIN/avdp-collect" --task "$task" --episodes "$EPISODES" --seed 1000 --out "$OUT/data_$task" --no-video \
      --time-limit 30 || true  # exit 1 = some episode failed; the dataset is still written
  fi
  if [ "${PERTURBED_EPISODES:-150}" -gt 0 ] && [ ! -f "$OUT/data_${task}_dart/dataset/manifest.json" ]; then
    # shellcheck disable=SC2086
    "$BIN/avdp-collect" --task "$task" --episodes "${PERTURBED_EPISODES:-150}" --seed 2000 --perturb $PERTURB \
      --out "$OUT/data_${task}_dart" --no-video --time-limit 30 || true
  fi
  CLEAN+=("$OUT/data_$task/dataset")
  ALL+=("$OUT/data_$task/dataset")
  [ "${PERTURBED_EPISODES:-150}" -gt 0 ] && ALL+=("$OUT/data_${task}_dart/dataset")
done
opts=(--preset base --threads "$THREADS" --no-progress)
act=(--early-weight "${EARLY_WEIGHT:-8}" --early-frames "${EARLY_FRAMES:-4}" --label-fraction "$LABELS"
     --override "action_temperature=${TEMPERATURE:-0}")
crop=(); CROP="${CROP-0.40625,0.203125,0.5,0.5}"; [ -n "$CROP" ] && crop=(--crop "camera=$CROP")
"$BIN/avdp-train-tokenizer" --data "${CLEAN[@]}" "${opts[@]}" --out "$OUT/tokenizer" --steps "${STEPS_TOK:-2500}" \
  "${crop[@]}"
"$BIN/avdp-train-video" --data "${CLEAN[@]}" "${opts[@]}" --tokenizer "$OUT/tokenizer/latest" --out "$OUT/video" \
  --steps "${STEPS_VIDEO:-2500}" --batch-size "${BATCH_VIDEO:-16}"
"$BIN/avdp-train-idm" --data "${ALL[@]}" "${opts[@]}" --video "$OUT/video/latest" --out "$OUT/idm" \
  --steps "${STEPS_IDM:-10000}" "${act[@]}"
"$BIN/avdp-train-baseline" --data "${ALL[@]}" "${opts[@]}" --tokenizer "$OUT/tokenizer/latest" --out "$OUT/baseline" \
  --steps "${STEPS_BASE:-15000}" "${act[@]}"
# DAgger rounds (DAGGER_ROUNDS, 4; 0 = off): each round the latest action-only policy drives
# DAGGER_EPISODES per task in process (avdp-dagger; round r on seeds 5000 + 1000 r) while the expert
# only labels them (leashed, phase re-synced with the state); then the baseline is fine-tuned for
# STEPS_DAGGER more steps on everything plus all DAgger episodes so far (failed ones too: their
# labels are the expert's). DAGGER_ROS=1 records them through the ROS graph instead (avdp-collect
# --policy: the policy node drives, the expert node labels), ~6x slower on a 2-core CPU.
steps="${STEPS_BASE:-15000}"
DAG=()
for round in $(seq 1 "${DAGGER_ROUNDS:-4}"); do
  for task in ${DAGGER_TASKS:-push pick_place}; do
    d="$OUT/dagger${round}_$task"
    if [ ! -f "$d/dataset/manifest.json" ]; then
      if [ "${DAGGER_ROS:-0}" = 1 ]; then
        "$BIN/avdp-collect" --task "$task" --episodes "${DAGGER_EPISODES:-100}" --seed $((5000 + 1000 * round)) \
          --policy "$OUT/baseline/latest" --real-time-factor 0.5 --time-limit 15 --out "$d" --no-video \
          --set avdp_policy.torch_threads=1 || true  # exit 1 = the policy failed some: expected
      else
        "$BIN/avdp-dagger" --policy "$OUT/baseline/latest" --task "$task" --episodes "${DAGGER_EPISODES:-100}" \
          --seed $((5000 + 1000 * round)) --out "$d" --threads "$THREADS" --no-progress
      fi
    fi
    DAG+=("$d/dataset")
  done
  steps=$(( steps + ${STEPS_DAGGER:-12000} ))
  "$BIN/avdp-train-baseline" --data "${ALL[@]}" "${DAG[@]}" "${opts[@]}" --out "$OUT/baseline" --resume \
    --steps "$steps" "${act[@]}" --include-failed
done
# A targeted round (TARGETED_EPISODES, 180; 0 = off): the policy's push failures gather where the
# cube must go away from the robot (bench/task_layouts.py --summary), so one more DAgger round
# drives only such layouts (cube -> goal within +-45 degrees of +x, seeds 14000+), then the
# policy is fine-tuned from its last checkpoint (--init: a new schedule) with an EMA of its weights.
final="$OUT/baseline"
if [ "${TARGETED_EPISODES:-180}" -gt 0 ]; then
  d="$OUT/dagger_targeted_push"
  if [ ! -f "$d/dataset/manifest.json" ]; then
    # shellcheck disable=SC2046
    "$BIN/avdp-dagger" --policy "$OUT/baseline/latest" --task push --out "$d" --threads "$THREADS" --no-progress \
      --seeds $("$BIN/python" bench/task_layouts.py --task push --first 14000 --count "${TARGETED_EPISODES:-180}" \
                --angle -45 45 --seeds-only)
  fi
  final="$OUT/baseline_targeted"
  "$BIN/avdp-train-baseline" --data "${ALL[@]}" "${DAG[@]}" "$d/dataset" "${opts[@]}" --out "$final" \
    --init "$OUT/baseline/latest" --steps "${STEPS_DAGGER:-12000}" --ema 0.999 "${act[@]}" --include-failed
fi
final="$final/latest"
if [ "${INVARIANT:-1}" != 0 ]; then
  BASE="$final" OUT="$OUT/invariant" THREADS="$THREADS" VAL_EPISODES=0 scripts/train_invariant.sh
  ENCODER="$OUT/invariant/policy" ENCODER_STEPS=5000 DAGGER_EPISODES=0 OUT="$OUT/surfaces" THREADS="$THREADS" \
    VAL_EPISODES=0 scripts/train_invariant.sh
  # the encoder on for soft stains (train_clouds), then the policy fine-tuned onto it, blended half-way back;
  # then a second round of the result's own nominal pick_place rollouts and the fine-tune again
  ENCODER="$OUT/surfaces/policy" ENCODER_STEPS="5000 10000" LOOK=train_clouds DAGGER_EPISODES=0 NOMINAL_DAGGER=120 \
    NOMINAL_DAGGER2=120 FINETUNE_STEPS=4000 FINETUNE_BLEND=0.5 OUT="$OUT/clouds" THREADS="$THREADS" VAL_EPISODES=0 \
    scripts/train_invariant.sh
  final="$OUT/clouds/policy"
fi
for policy in idm baseline expert; do
  for task in push pick_place; do
    src="$OUT/$policy"; [ "$policy" = expert ] && src=expert; [ "$policy" = baseline ] && src="$final"
    "$BIN/avdp-eval" --policy "$src" --task "$task" --episodes "${EVAL_EPISODES:-50}" \
      --out "$OUT/eval_${policy}_$task" --no-progress
  done
done
if [ "${EXPORT:-0}" != 0 ]; then
  src="$OUT/idm/latest"; [ "$EXPORT" = baseline ] && src="$final"
  mkdir -p models/avdp_default
  cp "$src/checkpoint.json" "$src/model.safetensors" models/avdp_default/
  echo "exported $src -> models/avdp_default"
fi
