"""Recorder stress benchmark (not a test): the "recorder" row of docs/benchmarks.md.

A publisher process sends 2 x 640x480 rgb8 Image at 30 Hz (best effort, depth 1) and
PoseStamped at 200 Hz (reliable) for --duration seconds, each with a sequence number in
header.frame_id ("seq=<n>"). The recorder node runs as its own process (as deployed); this
process calls /avdp/record/start and /stop, reads the bag back and prints published vs recorded
per topic, bag MB per minute and writer throughput.

--kill: SIGKILL the recorder halfway through the episode, repair the bag (bag_io.repair_bag)
and report how many of the messages published before the kill are recoverable.

    .venv/bin/python bench/recorder_stress.py [--duration 20] [--kill] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAMS = ["/camera/camera/color/image_raw", "/wrist_camera/color/image_raw"]
POSE = "/cartesian_impedance_controller/current_pose"
TOPICS = [*CAMS, POSE]


# ----------------------------------------------------------------------------------------------
# publisher process


def run_publisher(duration: float, stats_path: str) -> None:
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    rclpy.init()
    node = rclpy.create_node("stress_publisher")
    sensor = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )
    cam_pubs = [node.create_publisher(Image, t, sensor) for t in CAMS]
    pose_pub = node.create_publisher(PoseStamped, POSE, reliable)
    imgs = []
    for k, _ in enumerate(CAMS):
        m = Image(height=480, width=640, encoding="rgb8", step=640 * 3)
        m.data = bytes([40 + 80 * k]) * (640 * 480 * 3)
        imgs.append(m)
    pose = PoseStamped()
    pose.pose.orientation.w = 1.0
    sent: dict[str, list[tuple[int, float]]] = {t: [] for t in TOPICS}
    state = {"go": None, "img_seq": 0, "pose_seq": 0}

    def on_go(_msg):
        if state["go"] is None:
            state["go"] = time.monotonic()

    node.create_subscription(String, "/bench/go", on_go, latched)

    def stamp(msg, seq):
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = f"seq={seq}"

    def pub_images():
        if state["go"] is None:
            return
        seq = state["img_seq"]
        state["img_seq"] += 1
        for topic, pub, m in zip(CAMS, cam_pubs, imgs):
            stamp(m, seq)
            pub.publish(m)
            sent[topic].append((seq, time.time()))

    def pub_pose():
        if state["go"] is None:
            return
        seq = state["pose_seq"]
        state["pose_seq"] += 1
        stamp(pose, seq)
        pose.pose.position.x = 1e-4 * seq
        pose_pub.publish(pose)
        sent[POSE].append((seq, time.time()))

    node.create_timer(1 / 30, pub_images)
    node.create_timer(1 / 200, pub_pose)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    while state["go"] is None or time.monotonic() - state["go"] < duration:
        ex.spin_once(timeout_sec=0.05)
    Path(stats_path).write_text(json.dumps(sent))
    node.destroy_node()
    rclpy.try_shutdown()


# ----------------------------------------------------------------------------------------------
# controller


def wait(predicate, timeout, step, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step()
        if predicate():
            return
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def read_seqs(bag: Path) -> tuple[dict[str, list[int]], bool]:
    """Sequence numbers per topic from a bag (read-only; also works on a cut-off bag)."""
    from rosbags.typesys import Stores, get_typestore

    from avdp_ros.data.bag_io import bag_info, read_bag

    ts = get_typestore(Stores.ROS2_KILTED)
    seqs: dict[str, list[int]] = {t: [] for t in TOPICS}
    for m in read_bag(bag, TOPICS):
        if m.topic == POSE:
            frame = ts.deserialize_cdr(m.data, m.msgtype).header.frame_id
        else:  # frame_id follows the 8-byte stamp in the CDR; avoid deserialising 900 KB
            n = int.from_bytes(bytes(m.data[12:16]), "little")
            frame = bytes(m.data[16 : 16 + n - 1]).decode()
        seqs[m.topic].append(int(frame.split("=")[1]))
    return seqs, bag_info(bag).truncated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--kill", action="store_true", help="SIGKILL the recorder halfway and repair")
    ap.add_argument("--out", default=None, help="bag output dir (default: a temp dir, deleted)")
    ap.add_argument(
        "--fastdds-profile",
        default=str(Path(__file__).resolve().parent.parent / "config" / "fastdds.xml"),
        help="Fast DDS XML profile for all processes ('' = Fast DDS defaults: 512 KiB SHM "
        "segments, which lose most 640x480 images)",
    )
    ap.add_argument("--role", default="controller", help=argparse.SUPPRESS)
    ap.add_argument("--stats", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "publisher":
        run_publisher(args.duration, args.stats)
        return 0

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(random.randint(101, 200))
    if args.fastdds_profile:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(Path(args.fastdds_profile).resolve())
    else:
        os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    print(f"Fast DDS profile: {args.fastdds_profile or '(defaults)'}")
    tmp = tempfile.TemporaryDirectory(prefix="avdp_stress_")
    out = Path(args.out) if args.out else Path(tmp.name) / "bags"
    stats_path = Path(tmp.name) / "published.json"

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from avdp_ros.data.bag_io import repair_bag

    rclpy.init()
    node = rclpy.create_node("stress_controller")
    latched = QoSProfile(
        depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )
    go_pub = node.create_publisher(String, "/bench/go", latched)
    status: list[dict] = []
    node.create_subscription(
        String, "/avdp/record/status", lambda m: status.append(json.loads(m.data)), latched
    )
    start_cli = node.create_client(Trigger, "/avdp/record/start")
    stop_cli = node.create_client(Trigger, "/avdp/record/stop")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    spin = lambda: ex.spin_once(timeout_sec=0.02)  # noqa: E731

    topics_arg = "[" + ",".join(f"'{t}'" for t in TOPICS) + "]"
    recorder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "avdp_ros.nodes.recorder_node",
            "--ros-args",
            "-p",
            f"output_dir:={out}",
            "-p",
            f"topics:={topics_arg}",
            "-p",
            "status_period_s:=0.5",
            "--log-level",
            "warn",
        ],
    )
    publisher = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            "publisher",
            "--duration",
            str(args.duration),
            "--stats",
            str(stats_path),
        ]
    )
    try:
        wait(lambda: start_cli.service_is_ready(), 30, spin, "recorder start service")
        wait(lambda: status and not status[-1]["missing_topics"], 30, spin, "recorder subscriptions")
        fut = start_cli.call_async(Trigger.Request())
        wait(fut.done, 10, spin, "start reply")
        bag = Path(fut.result().message.split(" ")[0])
        t_start = time.monotonic()
        go_pub.publish(String(data="go"))
        max_queued = 0
        kill_wall = None
        while publisher.poll() is None:
            spin()
            if status:
                max_queued = max(max_queued, status[-1]["queued_bytes"])
            if args.kill and kill_wall is None and time.monotonic() - t_start > args.duration / 2:
                kill_wall = time.time()
                recorder.send_signal(signal.SIGKILL)
        record_s = time.monotonic() - t_start
        if not args.kill:
            t0 = time.monotonic()
            fut = stop_cli.call_async(Trigger.Request())
            wait(fut.done, 60, spin, "stop reply")
            stop_s = time.monotonic() - t0
            recorder.send_signal(signal.SIGINT)
            recorder.wait(30)
    finally:
        for p in (publisher, recorder):
            if p.poll() is None:
                p.kill()
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()

    sent = json.loads(stats_path.read_text())
    mcap = next(bag.glob("*.mcap"))
    size = mcap.stat().st_size
    rows = []
    if args.kill:
        t_scan = time.perf_counter()
        seqs, truncated = read_seqs(bag)
        rep = repair_bag(bag)
        repair_s = time.perf_counter() - t_scan
        for t in TOPICS:
            before = sum(1 for _, w in sent[t] if w < kill_wall)
            rows.append((t, before, rep.recovered.get(t, 0), before - rep.recovered.get(t, 0)))
        print(
            f"\nSIGKILL after {args.duration / 2:.1f} s; truncated={truncated}; file {size / 2**20:.1f} MiB, "
            f"{rep.bytes_lost / 2**20:.2f} MiB after the last complete chunk lost; scan+repair {repair_s:.1f} s"
        )
        print(f"{'topic':48s} {'pub<kill':>9s} {'recovered':>9s} {'lost':>6s}")
    else:
        seqs, _ = read_seqs(bag)
        for t in TOPICS:
            got = seqs[t]
            pub = len(sent[t])
            missing = len(set(s for s, _ in sent[t]) - set(got))
            rows.append((t, pub, len(got), missing))
        print(
            f"\nrecorded {record_s:.1f} s; stop (drain + close) {stop_s:.2f} s; max writer queue "
            f"{max_queued / 2**20:.1f} MiB"
        )
        print(
            f"bag {size / 2**20:.1f} MiB = {size / 2**20 / record_s * 60:.0f} MiB/min; writer throughput "
            f"{size / 2**20 / record_s:.1f} MiB/s sustained"
        )
        print(f"{'topic':48s} {'published':>9s} {'recorded':>9s} {'dropped':>7s}")
    for r in rows:
        print(f"{r[0]:48s} {r[1]:9d} {r[2]:9d} {r[3]:7d}")
    if args.out is None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
