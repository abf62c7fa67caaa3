"""avdp-sim-bench: speed of the simulator and success of the scripted experts (no ROS).

Measures
  1. real-time factor of physics + controller with both cameras rendered at 30 Hz
     (128x128 by default, plus any ``--size WxH`` given),
  2. raw render frames/s per camera,
  3. expert success rate and mean episode duration per task over ``--seeds`` seeds.

Example: ``avdp-sim-bench --seeds 50 --size 640x480 --json bench.json --video episode.mp4``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering without a display

import numpy as np  # noqa: E402

from avdp_ros.sim.env import PandaSim, SimConfig  # noqa: E402
from avdp_ros.sim.expert import make_expert, run_episode  # noqa: E402
from avdp_ros.sim.tasks import TASKS  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    return w, h


PHYSICS_DT = [SimConfig.physics_dt]  # set from --physics-dt


def bench_realtime(width: int, height: int, seconds: float, camera_hz: float = 30.0) -> dict:
    """Real-time factor of physics + controller while both cameras render at `camera_hz`.

    The arm follows a moving target so the controller and contacts do real work.
    """
    sim = PandaSim(SimConfig(task="push", image_width=width, image_height=height, physics_dt=PHYSICS_DT[0]))
    try:
        sim.reset(0)
        home = sim.ee_pose()
        steps_per_frame = int(round(1.0 / (camera_hz * sim.physics_dt)))
        sim.render("camera"), sim.render("wrist")  # create the renderer outside the timing
        n_frames = int(seconds * camera_hz)
        t0 = time.perf_counter()
        render_s = 0.0
        for _k in range(n_frames):
            target = home.copy()
            target[1] += 0.1 * np.sin(2 * np.pi * 0.5 * sim.time)
            sim.set_target(target)
            sim.step(steps_per_frame)
            r0 = time.perf_counter()
            sim.render("camera")
            sim.render("wrist")
            render_s += time.perf_counter() - r0
        wall = time.perf_counter() - t0
        return {
            "size": f"{width}x{height}",
            "sim_seconds": sim.time,
            "wall_seconds": wall,
            "real_time_factor": sim.time / wall,
            "physics_steps_per_s": n_frames * steps_per_frame / max(wall - render_s, 1e-9),
        }
    finally:
        sim.close()


def bench_render(width: int, height: int, frames: int) -> dict:
    """Raw render frames/s per camera (scene update + draw + readback)."""
    sim = PandaSim(SimConfig(task="pick_place", image_width=width, image_height=height, physics_dt=PHYSICS_DT[0]))
    out = {}
    try:
        for cam in sim.cfg.cameras:
            sim.render(cam)
            t0 = time.perf_counter()
            for _ in range(frames):
                sim.render(cam)
            out[cam] = frames / (time.perf_counter() - t0)
    finally:
        sim.close()
    return out


def bench_expert(task: str, seeds: int, progress: bool = True) -> dict:
    from tqdm import tqdm

    sim = PandaSim(SimConfig(task=task, physics_dt=PHYSICS_DT[0]))
    expert = make_expert(task)
    results = []
    try:
        for seed in tqdm(range(seeds), desc=f"expert {task}", disable=not progress, file=sys.stderr):
            results.append(run_episode(sim, expert, seed))
    finally:
        sim.close()
    ok = [r["success"] for r in results]
    return {
        "task": task,
        "episodes": seeds,
        "success_rate": float(np.mean(ok)) if ok else 0.0,
        "failed_seeds": [i for i, s in enumerate(ok) if not s],
        "mean_duration_s": float(np.mean([r["duration"] for r in results])) if results else 0.0,
        "max_duration_s": float(np.max([r["duration"] for r in results])) if results else 0.0,
    }


def write_video(path: str, task: str, seed: int, size: tuple[int, int], fps: int = 25) -> None:
    """One expert episode, both cameras side by side."""
    import imageio.v2 as imageio

    sim = PandaSim(SimConfig(task=task, image_width=size[0], image_height=size[1], physics_dt=PHYSICS_DT[0]))
    expert = make_expert(task)
    frames = []
    try:
        sim.reset(seed)
        expert.reset()
        substeps = int(round(1.0 / (50.0 * sim.physics_dt)))  # 50 Hz teleop
        every = max(1, int(round(50.0 / fps)))
        k = 0
        while sim.time < sim.cfg.episode_time_limit and not expert.done:
            pose, width = expert.act(sim.time, sim.ee_pose(), sim.gripper_width(), sim.object_poses())
            sim.set_target(pose)
            sim.set_gripper(width)
            sim.step(substeps)
            if k % every == 0:
                frames.append(np.concatenate([sim.render(c) for c in sim.cfg.cameras], axis=1))
            k += 1
    finally:
        sim.close()
    imageio.mimsave(path, frames, fps=fps) if path.endswith(".gif") else imageio.mimwrite(path, frames, fps=fps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avdp-sim-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50, help="expert episodes per task (default 50)")
    parser.add_argument("--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    parser.add_argument("--size", type=parse_size, action="append", default=[],
                        help="extra camera size WxH for the real-time test (repeatable)")
    parser.add_argument("--rtf-seconds", type=float, default=5.0, help="sim seconds per real-time test")
    parser.add_argument("--render-frames", type=int, default=200, help="frames per camera for render fps")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--video", metavar="PATH", help="write one expert episode (mp4 or gif)")
    parser.add_argument("--video-task", default="pick_place", choices=sorted(TASKS))
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    parser.add_argument("--physics-dt", type=float, default=SimConfig.physics_dt,
                        help=f"physics/controller step in s (default {SimConfig.physics_dt})")
    args = parser.parse_args(argv)
    PHYSICS_DT[0] = args.physics_dt
    if args.seeds < 0:
        parser.error("--seeds must be >= 0")

    sizes = [(128, 128)] + [s for s in args.size if s != (128, 128)]
    report = {"realtime": [], "render_fps": {}, "experts": []}
    for w, h in sizes:
        report["realtime"].append(bench_realtime(w, h, args.rtf_seconds))
        report["render_fps"][f"{w}x{h}"] = bench_render(w, h, args.render_frames)
    for task in args.tasks:
        if args.seeds:
            report["experts"].append(bench_expert(task, args.seeds, progress=not args.no_progress))

    print(f"\nReal-time factor (physics + controller at {1.0 / args.physics_dt:.0f} Hz, both cameras at 30 Hz)")
    print(f"  {'size':>10} {'RTF':>7} {'physics steps/s':>16}")
    for r in report["realtime"]:
        print(f"  {r['size']:>10} {r['real_time_factor']:7.2f} {r['physics_steps_per_s']:16.0f}")
    print("Render frames/s")
    for size, cams in report["render_fps"].items():
        print(f"  {size:>10} " + "  ".join(f"{c}: {v:6.1f}" for c, v in cams.items()))
    if report["experts"]:
        print("Expert")
        print(f"  {'task':>12} {'success':>8} {'episodes':>9} {'mean dur s':>11} {'max dur s':>10}")
        for r in report["experts"]:
            print(f"  {r['task']:>12} {100 * r['success_rate']:7.1f}% {r['episodes']:9d} "
                  f"{r['mean_duration_s']:11.2f} {r['max_duration_s']:10.2f}")
            if r["failed_seeds"]:
                print(f"  {'':>12} failed seeds: {r['failed_seeds']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    if args.video:
        write_video(args.video, args.video_task, seed=0, size=sizes[0])
        print(f"wrote {args.video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
