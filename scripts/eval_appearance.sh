#!/usr/bin/env bash
# A policy on the nominal scene and every held-out appearance suite, both tasks, held-out seeds:
#   scripts/eval_appearance.sh POLICY OUT [EPISODES (100)] [FIRST_SEED (100000)]
# Two evaluations run at once (one per core, one torch thread each); each cell skips if its
# OUT/<suite>_<task>/summary.json exists, so an interrupted run continues. Ends with the table of
# `avdp-eval --report OUT` (success with its binomial standard error).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
[ $# -ge 2 ] || { echo "usage: $0 POLICY OUT [EPISODES] [FIRST_SEED]" >&2; exit 2; }
POLICY="$1" OUT="$2" EPISODES="${3:-100}" SEED="${4:-100000}"
mkdir -p "$OUT"
for suite in nominal heldout_table heldout_light heldout_camera; do
  for task in push pick_place; do
    e="$OUT/${suite}_$task"
    [ -f "$e/summary.json" ] || "$VENV/bin/avdp-eval" --policy "$POLICY" --task "$task" --appearance "$suite" \
      --episodes "$EPISODES" --seed "$SEED" --threads 1 --out "$e" --no-progress > "$e.log" 2>&1 &
  done
  wait
done
"$VENV/bin/avdp-eval" --report "$OUT"
