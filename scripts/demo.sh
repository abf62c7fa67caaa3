#!/usr/bin/env bash
# The main job (README command 1): set-up on first run, then the simulated Panda with the scripted
# expert doing the task through the robot's topics while the recorder writes a rosbag2 MCAP;
# ends with a summary, a video of the episode and the converted dataset in runs/demo/.
# Extra arguments go to avdp-collect, e.g.  scripts/demo.sh --task pick_place --episodes 3
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VENV/bin/avdp-collect" --out runs/demo "$@"
