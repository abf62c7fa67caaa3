#!/usr/bin/env bash
# Appearance-robust fine-tune of a policy checkpoint (issue 16; BASE, default models/avdp_default):
#   1. expert demonstrations of both tasks in process (avdp-dagger --policy expert: the expert drives
#      itself, labels are its intended targets, the same episodes avdp-collect records through ROS
#      at a fraction of the cost): EPISODES clean ones in randomised training scenes (seeds 1000+),
#      PERTURBED_EPISODES with DART bumps (seeds 2000+, --perturb 0.04 0.2) in training scenes, and
#      NOMINAL_EPISODES clean ones in the nominal scene (seeds 3000+), so the fine-tune keeps it
#   2. fine-tune BASE's tokenizer on the new clean frames with colour jitter and shift
#      (--augment default, STEPS_TOK), so the objects survive reconstruction on any table;
#      STEPS_TOK=0 keeps BASE's tokenizer (BASE already fine-tuned this way, e.g. models/avdp_robust)
#   3. move BASE onto the new tokenizer's latents (--init BASE --tokenizer ...) on everything, with
#      VIEWS augmented latent views per frame (--augment default --views VIEWS), STEPS steps
#   4. ROUNDS (3) DAgger rounds in training scenes (DAGGER_EPISODES per task, seeds 20000 + 1000 r) by
#      the latest policy, the expert labelling, plus NOMINAL_DAGGER (20) per task in the nominal scene
#      (seeds 20500 + 1000 r: the fine-tune must keep the look it ships for, and expert episodes alone
#      did not keep it); each followed by STEPS_DAGGER fine-tuning steps (--resume) on everything so far.
#      A round that finished without nominal rollouts (recorded before they existed) keeps its data
#   5. polish: POLISH_STEPS (12000) steps on everything from the last round's weights with a new
#      learning-rate schedule and an EMA of the weights (--init, --ema 0.999), into OUT/polished: the
#      last step of the default's recipe (models/README.md). The rounds resume one schedule that
#      ended at its minimum learning rate; POLISH_STEPS=0 skips it
#   6. evaluate the result (OUT/polished/latest, else OUT/policy/latest) on VAL_EPISODES validation
#      seeds (13000+) per task: nominal and every held-out suite (scripts/eval_appearance.sh;
#      VAL_EPISODES=0 skips it). The held-out test (seeds 100000+) is
#      scripts/eval_appearance.sh POLICY OUT
# Every stage skips what is already there and the trainers resume (--resume), so re-running the
# script after an interruption continues where it stopped. Two recordings / evaluations run at
# once (one per core). THREADS: torch threads per training process (2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
OUT="${OUT:-runs/robust}" BASE="${BASE:-models/avdp_default}" THREADS="${THREADS:-2}" VIEWS="${VIEWS:-4}"
STEPS="${STEPS:-10000}" ROUNDS="${ROUNDS:-3}" DAGGER_EPISODES="${DAGGER_EPISODES:-80}"
BIN="$VENV/bin"
mkdir -p "$OUT"
record() {  # record NAME TASK SEED EPISODES APPEARANCE [avdp-dagger options]: expert episodes, once
  local d="$OUT/$1"
  [ -f "$d/summary.json" ] || "$BIN/avdp-dagger" --policy expert --task "$2" --seed "$3" --episodes "$4" \
    --appearance "$5" --out "$d" --time-limit 30 --no-progress --overwrite "${@:6}" > "$d.log" 2>&1
}
for task in push pick_place; do
  record "expert_$task" "$task" 1000 "${EPISODES:-150}" train &
  record "dart_$task" "$task" 2000 "${PERTURBED_EPISODES:-100}" train --perturb 0.04 0.2
  wait
  [ "${NOMINAL_EPISODES:-50}" -gt 0 ] && record "nominal_$task" "$task" 3000 "${NOMINAL_EPISODES:-50}" nominal
done
CLEAN=() ALL=()
for task in push pick_place; do
  CLEAN+=("$OUT/expert_$task/dataset")
  ALL+=("$OUT/expert_$task/dataset" "$OUT/dart_$task/dataset")
  if [ "${NOMINAL_EPISODES:-50}" -gt 0 ]; then CLEAN+=("$OUT/nominal_$task/dataset"); ALL+=("$OUT/nominal_$task/dataset"); fi
done
opts=(--preset base --threads "$THREADS" --no-progress)
act=(--early-weight 8 --early-frames 4 --override action_temperature=0 --include-failed
     --augment default --views "$VIEWS")
tok="$OUT/tokenizer" tokarg=(--tokenizer "$OUT/tokenizer/latest")
if [ "${STEPS_TOK:-1000}" = 0 ]; then
  tokarg=()  # keep BASE's tokenizer (continuing from a policy that was already fine-tuned for these scenes)
elif [ ! -f "$tok/done" ]; then
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
      "${tokarg[@]}" --steps "$1" "${act[@]}"
  fi
}
train "$steps"
rollouts() {  # rollouts DIR TASK EPISODES SEED APPEARANCE: DAgger episodes by the latest policy, once
  [ -f "$1/summary.json" ] || "$BIN/avdp-dagger" --policy "$policy/latest" --task "$2" --episodes "$3" \
    --seed "$4" --appearance "$5" --out "$1" --threads 1 --no-progress --overwrite > "$1.log" 2>&1
}
NOMINAL_DAGGER="${NOMINAL_DAGGER:-20}"
for round in $(seq 1 "$ROUNDS"); do
  nominal="$NOMINAL_DAGGER"  # a round recorded before nominal rollouts existed stays as it was
  [ -f "$OUT/dagger${round}_push/summary.json" ] && [ ! -d "$OUT/dagger${round}n_push" ] && nominal=0
  for task in push pick_place; do  # one process per task, one torch thread each
    d="$OUT/dagger${round}_$task" n="$OUT/dagger${round}n_$task"
    ( rollouts "$d" "$task" "$DAGGER_EPISODES" $((20000 + 1000 * round)) train
      [ "$nominal" -gt 0 ] && rollouts "$n" "$task" "$nominal" $((20500 + 1000 * round)) nominal || true ) &
    ALL+=("$d/dataset")
    [ "$nominal" -gt 0 ] && ALL+=("$n/dataset")
  done
  wait
  steps=$(( steps + ${STEPS_DAGGER:-6000} ))
  train "$steps"
done
result="$policy/latest"
if [ "${POLISH_STEPS:-12000}" -gt 0 ]; then
  result="$OUT/polished/latest"
  if [ ! -f "$OUT/polished/done" ]; then
    resume=(--init "$policy/latest"); [ -d "$result" ] && resume=(--resume)
    "$BIN/avdp-train-baseline" --data "${ALL[@]}" "${opts[@]}" --out "$OUT/polished" "${resume[@]}" \
      --steps "${POLISH_STEPS:-12000}" --ema 0.999 "${act[@]}"
    touch "$OUT/polished/done"
  fi
fi
if [ "${VAL_EPISODES:-50}" -gt 0 ]; then
  scripts/eval_appearance.sh "$result" "$OUT/val" "${VAL_EPISODES:-50}" 13000
fi
