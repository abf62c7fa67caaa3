"""Does the commander feel the camera image size? (not a test: the "command stream" rows of
docs/benchmarks.md)

Three processes, as on a robot PC:
- cameras: 2 x Image at `--fps` (30 Hz), `--encoding` (bgr8, what a RealSense sends through
  realsense-ros by default) at each `--sizes` entry in turn, best effort;
- the policy job: `avdp-run policy --robot real` (the default model, one torch thread), unchanged;
- the robot: this process publishes the end-effector pose at 200 Hz and the gripper state at
  100 Hz; a receiver process does nothing but time every target command that arrives (monotonic
  clock, in its callback), as a controller would receive them.

- `--load N`: N more processes of plain CPU work (a Python loop), the "CPU also busy with other
  work" of a robot PC (a rosbag recorder, rviz, a compile).

Each size runs for `--seconds` after a warm-up, in one run, so the sizes compare on equal terms
on a shared machine. Reported per size: command rate (Hz), arrival period p50 / p99 / max (ms),
and the policy's inferences seen on /avdp/chunk_timing (it must be planning, not idling).
`--variants` runs the whole schedule once per policy-job variant, one after the other in the same
run: each is a space-separated list of `--set` overrides for `avdp-run policy`, and of environment
variables for it (upper-case `NAME=value`); `ROOT=DIR` runs another checkout's code (a before /
after comparison), e.g.

    python bench/command_stream.py --seconds 60 --sizes 128x128 640x480 848x480 --load 1 \
        --variants "ROOT=/tmp/before" "avdp_policy.commander=timer" "avdp_policy.commander=thread"
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CAMS = ("/camera/camera/color/image_raw", "/wrist_camera/color/image_raw")


def _cameras(sizes: list[tuple[int, int]], schedule: list[float], fps: float, encoding: str, stop) -> None:
    """Camera process: publish both cameras at the size whose window `schedule` says is current."""
    import rclpy
    from sensor_msgs.msg import Image

    from avdp_ros.nodes.msgs import stamp_from_sec
    from avdp_ros.nodes.topics import SENSOR_QOS

    rclpy.init()
    node = rclpy.create_node("bench_cameras")
    pubs = [node.create_publisher(Image, t, SENSOR_QOS) for t in CAMS]
    rng = np.random.default_rng(0)
    frames = {(w, h): [rng.integers(0, 256, (h, w, 3), dtype=np.uint8).tobytes() for _ in range(4)] for w, h in sizes}
    period, k, t_next = 1.0 / fps, 0, time.monotonic()
    while not stop.is_set():
        now = time.time()
        i = min(int(np.searchsorted(schedule, now, side="right")) - 1, len(sizes) - 1)
        w, h = sizes[max(i, 0)]
        for cam, pub in enumerate(pubs):
            msg = Image(height=h, width=w, encoding=encoding, step=3 * w, data=frames[(w, h)][(k + cam) % 4])
            msg.header.stamp, msg.header.frame_id = stamp_from_sec(now), f"cam{cam}"
            pub.publish(msg)
        k += 1
        t_next += period
        time.sleep(max(0.0, t_next - time.monotonic()))
    node.destroy_node()
    rclpy.shutdown()


def _receiver(stop, ready, out: str, priority: int) -> None:
    """Receiver process: per target command, its arrival (monotonic) and its header stamp (the
    commander's clock when it computed it), saved to `out` (.npy, (N, 2)) at `stop`."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor

    from avdp_ros.nodes import topics

    if priority > 0:  # the whole process, DDS threads included (they inherit it)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    rclpy.init()
    node = rclpy.create_node("bench_receiver")
    arrivals: list[float] = []
    node.create_subscription(PoseStamped, topics.TARGET_FRAME, lambda m: arrivals.append(
        (time.monotonic(), m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec)), topics.COMMAND_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    ready.set()
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.05)
    np.save(out, np.array(arrivals).reshape(-1, 2))
    node.destroy_node()
    rclpy.shutdown()


def _spread(ms: np.ndarray) -> dict | None:
    if not len(ms):
        return None
    return {k: round(float(v), 2) for k, v in zip(("p50", "p99", "max"), (*np.percentile(ms, [50, 99]), ms.max()))}


def _busy(stop) -> None:
    """Load process: plain Python work until `stop` (holds its own interpreter's GIL, not ours)."""
    while not stop.is_set():
        sum(i * i for i in range(20000))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured time per size")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before the first window (model load, "
                    "first chunks)")
    ap.add_argument("--sizes", nargs="+", default=["128x128", "640x480"], help="WxH per window, in this order")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--encoding", default="bgr8", choices=("rgb8", "bgr8"))
    ap.add_argument("--model", default="", help="policy checkpoint ('' = models/avdp_default)")
    ap.add_argument("--load", type=int, default=0, help="busy processes beside the three (0 = an idle machine)")
    ap.add_argument("--receiver-priority", type=int, default=0, help="SCHED_FIFO priority of the receiver "
                    "process, as a controller's real-time loop would have (0 = normal scheduling)")
    ap.add_argument("--variants", nargs="+", default=[""], help="policy-job variants (see above); default: one, "
                    "this checkout as configured")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    results = [dict(_run(args, variant), variant=variant) for variant in args.variants]
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _run(args, variant: str) -> dict:
    """One variant: cameras, the policy job and the robot client through every size window."""
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds.xml"))

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState

    from avdp_ros.nodes import topics
    from avdp_ros.nodes.msgs import pose_to_msg, stamp_from_sec

    t0 = time.time() + args.warmup
    schedule = [t0 + i * args.seconds for i in range(len(sizes))]
    end = schedule[-1] + args.seconds
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    cams = ctx.Process(target=_cameras, args=(sizes, schedule, args.fps, args.encoding, stop))
    cams.start()
    load = [ctx.Process(target=_busy, args=(stop,), daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    arrivals_file = tempfile.NamedTemporaryFile(suffix=".npy", delete=False).name
    ready = ctx.Event()
    receiver = ctx.Process(target=_receiver, args=(stop, ready, arrivals_file, args.receiver_priority))
    receiver.start()
    ready.wait(30)
    env, cwd, words = dict(os.environ), ROOT, []
    for word in variant.split():
        name, _, value = word.partition("=")
        if name == "ROOT":  # `python -m` imports from its working directory first
            cwd = Path(value).resolve()
            env["PYTHONPATH"] = os.pathsep.join([str(cwd), env.get("PYTHONPATH", "")])
        elif name.isupper():
            env[name] = value
        else:
            words.append(word)
    log = tempfile.TemporaryFile("w+")
    policy = subprocess.Popen(
        [sys.executable, "-m", "avdp_ros.nodes.runner", "policy", "--robot", "real",
         *(["--model", args.model] if args.model else []), "--set", "avdp_policy.torch_threads=1",
         "--set", "avdp_policy.instruction=push the red cube onto the green target",
         *(a for w in words for a in ("--set", w))],
        stdout=subprocess.DEVNULL, stderr=log, text=True, env=env, cwd=cwd)  # a file: a full pipe stalls the policy

    rclpy.init()
    node = rclpy.create_node("bench_robot")
    pub_pose = node.create_publisher(PoseStamped, topics.CURRENT_POSE, topics.STATE_QOS)
    pub_grip = node.create_publisher(JointState, topics.GRIPPER_STATE, topics.STATE_QOS)
    inferences: list[float] = []
    pose = np.array([0.5, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0])  # hand down, inside the workspace box
    node.create_subscription(DiagnosticArray, "/avdp/chunk_timing", lambda m: inferences.append(time.time()),
                             topics.STATE_QOS)

    def robot_state():
        now = time.time()
        pub_pose.publish(pose_to_msg(pose, topics.BASE_FRAME, now))

    def gripper_state():
        msg = JointState(name=["finger_joint1", "finger_joint2"], position=[0.04, 0.04])
        msg.header.stamp = stamp_from_sec(time.time())
        pub_grip.publish(msg)

    node.create_timer(1 / 200, robot_state)
    node.create_timer(1 / 100, gripper_state)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    windows = []  # (start monotonic, end monotonic) per size
    try:
        while time.time() < end and policy.poll() is None:
            executor.spin_once(timeout_sec=0.002)
        if policy.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the policy job exited early:\n{log.read()[-3000:]}")
    finally:
        stop.set()
        policy.send_signal(2)
        try:
            policy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            policy.kill()
        cams.join(10)
        receiver.join(30)
        for proc in load:
            proc.join(5)
    mono_minus_wall = time.monotonic() - time.time()
    for start in schedule:
        # drop the first second of each window: the camera process switches size at its start
        windows.append((start + 1.0 + mono_minus_wall, start + args.seconds + mono_minus_wall))
    received = np.load(arrivals_file)
    os.unlink(arrivals_file)
    arr, stamps = received[:, 0], received[:, 1]
    inf = np.array(inferences)
    result = {"fps": args.fps, "encoding": args.encoding, "seconds_per_size": args.seconds, "load": args.load,
              "sizes": {}}
    for (w, h), (a, b), start in zip(sizes, windows, schedule):
        inside = (arr >= a) & (arr < b)
        t = arr[inside]
        n_inf = int(((inf >= start + 1.0) & (inf < start + args.seconds)).sum())
        result["sizes"][f"{w}x{h}"] = {
            "commands_hz": round(len(t) / (b - a), 1),
            "period_ms": _spread(np.diff(t) * 1e3),  # at the receiver: what the targets are on
            # the same commands by their stamps: the commander's own timing, without transport and receiver
            "stamp_period_ms": _spread(np.diff(stamps[inside]) * 1e3),
            "inferences": n_inf}
    print(json.dumps(dict(result, variant=variant)), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return result


if __name__ == "__main__":
    sys.exit(main())
