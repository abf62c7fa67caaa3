"""Where the task puts its objects, per seed: the cube, the goal (push target or bin) and the
direction from one to the other, read from the simulator itself after `PandaSim.reset(seed)`.

A policy's failures are rarely spread evenly over the layouts. This shows where they gather, and it
picks the seeds of one kind of layout to collect more data on:

    python bench/task_layouts.py --task push --summary runs/eval_push/summary.json   # failures by direction
    python bench/task_layouts.py --task push --first 14000 --count 100 --angle -45 45 --seeds-only
    avdp-dagger --policy models/avdp_default --task push --seeds $(python bench/task_layouts.py ...) ...

The angle is that of cube -> goal in the robot's base frame, in degrees: 0 = away from the robot
(+x), 90 = to its left (+y). The cube's yaw is its turn about the vertical, in degrees, wrapped into
[-45, 45): a square cube looks the same every 90 degrees, so that is all a grasp has to match.
A pick_place policy's failed grasps can gather at some yaws (an earlier default's did, docs/appearance.md):
`--summary` also gives success per cube-yaw sector, and `--cube-yaw LO HI` picks such layouts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

BINS = np.arange(-180, 181, 45)
YAW_BINS = np.arange(-45, 46, 15)


def layouts(task: str, seeds: list[int]) -> list[dict]:
    """Cube and goal positions (table plane, m), their distance, the cube -> goal angle and the cube's yaw
    per seed."""
    from avdp_ros.sim.env import PandaSim, SimConfig
    from avdp_ros.sim.expert import body_yaw, wrap

    # The smallest render size: only the reset's object placement is read, no frame is drawn.
    sim = PandaSim(SimConfig(task=task, image_width=16, image_height=16))
    try:
        rows = []
        for seed in seeds:
            info = sim.reset(seed)
            poses = sim.object_poses()
            cube_pose, goal_pose = (poses[n] for n in info["object_names"][:2])
            cube, goal = cube_pose[:2], goal_pose[:2]
            d = goal - cube
            rows.append({"seed": seed, "cube": cube.round(3).tolist(), "goal": goal.round(3).tolist(),
                         "distance_m": round(float(np.hypot(*d)), 3),
                         "angle_deg": round(float(np.degrees(np.arctan2(d[1], d[0]))), 1),
                         "cube_yaw_deg": round(float(np.degrees(wrap(body_yaw(cube_pose[3:]), np.pi / 2))), 1)})
        return rows
    finally:
        sim.close()


def by_sector(rows: list[dict], success: dict[int, bool], key: str = "angle_deg", bins=BINS) -> str:
    """A Markdown table of success per sector of `key`: the cube -> goal direction or the cube's yaw."""
    head = "direction" if key == "angle_deg" else "cube yaw"
    lines = [f"| {head} (deg) | episodes | success |", "| --- | --- | --- |"]
    for lo, hi in zip(bins[:-1], bins[1:]):
        sector = [r for r in rows if lo <= r[key] < hi or (hi == bins[-1] and r[key] == hi)]
        ok = sum(success[r["seed"]] for r in sector)
        rate = f"{100 * ok / len(sector):.0f}%" if sector else "-"
        lines.append(f"| {lo} to {hi} | {len(sector)} | {rate} ({ok}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="push")
    ap.add_argument("--first", type=int, default=14000, help="first seed to look at")
    ap.add_argument("--count", type=int, default=50, help="seeds to list (that pass --angle and --cube-yaw)")
    ap.add_argument("--angle", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="keep layouts whose cube -> goal angle (deg) lies in [LO, HI]")
    ap.add_argument("--cube-yaw", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="keep layouts whose cube yaw (deg, in [-45, 45)) lies in [LO, HI]")
    ap.add_argument("--summary", type=Path, default=None,
                    help="an avdp-eval / avdp-dagger summary.json: success per direction and per cube yaw")
    ap.add_argument("--seeds-only", action="store_true", help="print the seeds, space-separated")
    a = ap.parse_args(argv)
    if a.summary is not None:
        episodes = json.loads(a.summary.read_text()).get("per_episode")
        if not episodes:
            ap.error(f"--summary {a.summary}: no per_episode list (a policy evaluation's summary.json)")
        success = {e["seed"]: bool(e["success"]) for e in episodes}
        rows = layouts(a.task, list(success))
        print(by_sector(rows, success) + "\n\n" + by_sector(rows, success, "cube_yaw_deg", YAW_BINS))
        return 0
    if a.count < 1:
        ap.error(f"--count {a.count}: expected >= 1")
    picked: list[dict] = []
    seed = a.first
    while len(picked) < a.count:
        # in blocks, so that one simulator serves many resets
        for r in layouts(a.task, list(range(seed, seed + 200))):
            if ((a.angle is None or a.angle[0] <= r["angle_deg"] <= a.angle[1])
                    and (a.cube_yaw is None or a.cube_yaw[0] <= r["cube_yaw_deg"] <= a.cube_yaw[1])):
                picked.append(r)
        seed += 200
        if seed - a.first > 200 * max(a.count, 50):
            ap.error(f"--angle {a.angle} --cube-yaw {a.cube_yaw}: found only {len(picked)} such layouts in "
                     f"{seed - a.first} seeds")
    picked = picked[:a.count]
    if a.seeds_only:
        print(" ".join(str(r["seed"]) for r in picked))
    else:
        for r in picked:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
