#!/usr/bin/env bash
# The main job (README "Quick start", command 1): set-up on first run, then
#   1. the default policy (models/avdp_default: the action-only policy, checkpoint kind
#      `baseline`) doing both sim tasks closed loop through ROS (MuJoCo bridge + policy node, one
#      process each, as `avdp-run policy` starts them; avdp-eval-ros drives seeded episodes over
#      the topics), printing success, latency and command-rate jitter, with a video, plots and a
#      report per task in runs/demo/policy_<task>/. At wall time (real-time factor 1), which the
#      action-only default holds on an otherwise idle 2-core CPU (docs/benchmarks.md); on a busy or
#      slower machine slow the whole graph down: scripts/demo.sh policy --use-sim-time --real-time-factor 0.25;
#   2. the simulated Panda with the scripted expert doing the task through the robot's topics while
#      the recorder writes a rosbag2 MCAP; a summary, a video of the episode and the converted
#      dataset in runs/demo/.
# Usage: scripts/demo.sh [policy|record] [extra arguments for that stage]
#   scripts/demo.sh policy --episodes 10        # only the policy, more episodes per task
#   scripts/demo.sh record --task pick_place --episodes 3
# Without a stage both run and extra arguments go to the recording stage (avdp-collect).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
stage=all
case "${1:-}" in policy|record) stage="$1"; shift ;; esac
if [ "$stage" != record ]; then
  policy_args=(); [ "$stage" = policy ] && policy_args=("$@")
  for task in push pick_place; do
    "$VENV/bin/avdp-eval-ros" --policy models/avdp_default --task "$task" --episodes 1 --videos 1 \
      --seed 100000 --threads 1 --out "runs/demo/policy_$task" \
      "${policy_args[@]}"
  done
fi
if [ "$stage" != policy ]; then
  "$VENV/bin/avdp-collect" --out runs/demo "$@"
fi
