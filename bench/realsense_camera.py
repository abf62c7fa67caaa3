"""The RealSense camera node's latency and CPU cost (not a test): software devices, real node, real DDS.

Two `pyrealsense2.software_device`s stand in for the cameras: a thread per device injects frames
at `--fps` with the injection time as their global-time stamp, so a message's header stamp is the
moment its frame entered librealsense. The node (`RealSenseCameraNode`, unchanged) reads, stamps
and publishes them; a subscriber in another process (as the policy node would be) records when each
message arrives. Reported:
- injected -> published: inside the node, stamp to the return of `publish()` of the image;
- injected -> received: at the other process (both on this host's clock);
- frames received / injected, and dropped frames the node counted;
- the node's CPU: this process's CPU time less the injector threads' own, as % of one core.

    python bench/realsense_camera.py --seconds 20 [--size 640x480] [--fps 30] [--cameras 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import threading
import time

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE",
                      os.path.join(os.path.dirname(__file__), "..", "config", "fastdds.xml"))

TOPICS = ("/camera/camera/color/image_raw", "/wrist_camera/color/image_raw")


def _receiver(topics: list[str], seconds: float, ready, out) -> None:
    """Other process: subscribe like the policy node, record (receive - stamp) per message."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from avdp_ros.nodes.topics import SENSOR_QOS

    rclpy.init()
    node = rclpy.create_node("bench_receiver")
    lat = {t: [] for t in topics}
    for t in topics:
        node.create_subscription(Image, t, lambda m, t=t: lat[t].append(
            time.time() - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)), SENSOR_QOS)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    ready.set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    out.put(lat)
    node.destroy_node()
    rclpy.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time (after a 3 s warm-up)")
    ap.add_argument("--size", default="640x480", help="WxH of each colour stream")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--cameras", type=int, choices=(1, 2), default=2)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from avdp_ros.camera.software import SoftwareRealSense
    from avdp_ros.nodes.realsense_camera_node import RealSenseCameraNode

    topics = list(TOPICS[: args.cameras])
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    warmup = 3.0
    receiver = ctx.Process(target=_receiver, args=(topics, warmup + args.seconds + 2.0, ready, out))
    receiver.start()
    ready.wait(30)

    devices = [SoftwareRealSense(serial=f"10000000000{i}", modes=((w, h, args.fps, "rgb8"),))
               for i in range(args.cameras)]
    rclpy.init()
    node = RealSenseCameraNode(
        query=lambda: [d for dev in devices for d in dev.query()],
        parameter_overrides=[Parameter("serial_numbers", value=[d.serial for d in devices]),
                             Parameter("width", value=w), Parameter("height", value=h),
                             Parameter("fps", value=args.fps), Parameter("diagnostics_rate_hz", value=0.0)])
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop, injected, inject_cpu = threading.Event(), [0] * len(devices), [0.0] * len(devices)
    frames = [np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8) for i in range(4)]

    def inject(i: int) -> None:
        period, n, t_next = 1.0 / args.fps, 0, time.monotonic()
        c0 = time.thread_time()
        while not stop.is_set():
            n += 1
            devices[i].inject(frames[n % 4], time.time() * 1e3, n)
            injected[i] = n
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        inject_cpu[i] = time.thread_time() - c0

    threads = [threading.Thread(target=inject, args=(i,), daemon=True) for i in range(len(devices))]
    for t in threads:
        t.start()
    end_warm = time.monotonic() + warmup
    while time.monotonic() < end_warm:
        executor.spin_once(timeout_sec=0.05)
    for lat in node._latency.values():
        lat.clear()
    n0, cpu0, t0 = list(injected), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    publish_ms = {cam.stats.serial: [] for cam in node.cameras}
    while time.monotonic() < t0 + args.seconds:
        executor.spin_once(timeout_sec=0.05)
        for serial, lat in node._latency.items():  # the node keeps the last 300: drain them
            while lat:
                publish_ms[serial].append(lat.popleft() * 1e3)
    wall = time.monotonic() - t0
    cpu1, n1 = resource.getrusage(resource.RUSAGE_SELF), list(injected)
    stop.set()
    for t in threads:
        t.join()
    received = out.get(timeout=60)
    receiver.join(30)
    dropped = {cam.stats.serial: cam.stats.dropped for cam in node.cameras}
    node.close()
    node.destroy_node()
    rclpy.shutdown()

    process_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    # injector threads ran the whole time (warm-up included); charge them pro rata
    inject_share = sum(inject_cpu) * wall / (wall + warmup)
    pub = np.concatenate([np.asarray(v) for v in publish_ms.values()])
    rec = np.concatenate([np.asarray(v[-int(args.seconds * args.fps * 1.2):]) * 1e3 for v in received.values()])
    result = {
        "size": f"{w}x{h}", "fps": args.fps, "cameras": args.cameras, "seconds": round(wall, 1),
        "injected": int(sum(b - a for a, b in zip(n0, n1))), "published": int(pub.size),
        "dropped_by_node": dropped,
        "injected_to_published_ms": {"p50": round(float(np.percentile(pub, 50)), 2),
                                     "p99": round(float(np.percentile(pub, 99)), 2),
                                     "max": round(float(pub.max()), 2)},
        "injected_to_received_ms": {"p50": round(float(np.percentile(rec, 50)), 2),
                                    "p99": round(float(np.percentile(rec, 99)), 2),
                                    "max": round(float(rec.max()), 2)},
        "node_cpu_percent_of_one_core": round(100 * (process_cpu - inject_share) / wall, 1),
        "injector_cpu_percent": round(100 * inject_share / wall, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
