"""The main job for now: the simulated Panda, the scripted expert doing the task through the
robot's topics, and the recorder writing one rosbag2 MCAP per episode; then a summary, a video
of the first episode from the bag, and the bags converted into a training dataset.

    avdp-collect --task push --episodes 1 --out runs/collect
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def _wait_future(future, timeout: float, what: str):
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout):
        raise TimeoutError(f"{what}: no reply after {timeout:.0f} s")
    return future.result()


class EpisodeDriver:
    """Runs episodes through the graph's services and topics only (reset, record start/stop,
    /avdp/episode_info), exactly as a user's script would."""

    def __init__(self, context=None):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from avdp_ros.nodes import topics
        from avdp_ros.nodes.spin import spin_in_thread

        self._Trigger = Trigger
        self.node = Node("avdp_collect", context=context)
        self.info: dict = {}
        self._info_cv = threading.Condition()
        self.node.create_subscription(String, topics.EPISODE_INFO, self._on_info, topics.LATCHED_QOS)
        self.reset = self.node.create_client(Trigger, topics.SIM_RESET)
        self.start = self.node.create_client(Trigger, topics.RECORD_START)
        self.stop = self.node.create_client(Trigger, topics.RECORD_STOP)
        # Own executor thread: works the same whether the stack runs in this process or not.
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        self._thread = spin_in_thread(self._executor, "collect")

    def _on_info(self, msg) -> None:
        with self._info_cv:
            self.info = json.loads(msg.data)
            self._info_cv.notify_all()

    def call(self, client, timeout: float = 15.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available after {timeout:.0f} s")
        res = _wait_future(client.call_async(self._Trigger.Request()), timeout, client.srv_name)
        if not res.success:
            raise RuntimeError(f"{client.srv_name} failed: {res.message}")
        return res.message

    def wait_info(self, predicate, timeout: float) -> bool:
        with self._info_cv:
            return self._info_cv.wait_for(lambda: bool(self.info) and predicate(self.info), timeout)

    def run_episode(self, time_limit: float, settle: float) -> dict:
        """Reset, record until success has held for `settle` s (or the time limit), stop."""
        before = self.info.get("episode")
        info = json.loads(self.call(self.reset))
        if not self.wait_info(lambda i: i.get("episode") == info["episode"] and i.get("episode") != before, 10.0):
            raise TimeoutError("no /avdp/episode_info for the new episode within 10 s")
        started = self.call(self.start)
        t0 = time.monotonic()
        success_since = None
        while time.monotonic() - t0 < time_limit:
            self.wait_info(lambda i: True, 0.1)
            if self.info.get("success"):
                success_since = success_since or time.monotonic()
                if time.monotonic() - success_since >= settle:
                    break
            else:
                success_since = None
        duration = time.monotonic() - t0
        stopped = self.call(self.stop)
        return {"task": info["task"], "seed": info["seed"], "instruction": info["instruction"],
                "success": bool(self.info.get("success")), "duration_s": round(duration, 2),
                "start": started, "stop": stopped}

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=2.0)  # before the caller may shut the context down under it
        self.node.destroy_node()


def _yaml_topics(config: Path) -> list[str]:
    """The recorder's `topics` in a parameter YAML (empty when the file leaves them out)."""
    import yaml

    params = (yaml.safe_load(Path(config).read_text()) or {}).get("avdp_recorder", {}).get("ros__parameters", {})
    return list(params.get("topics") or [])


def bag_video(bag: Path, out: Path, fps: float = 30.0) -> int:
    """Both cameras of a bag side by side into an mp4 (or gif); returns the frame count."""
    import imageio.v2 as imageio

    from avdp_ros.data.bag_io import default_typestore, read_bag
    from avdp_ros.data.convert import image_to_rgb
    from avdp_ros.nodes import topics

    ts = default_typestore()
    latest: dict[str, np.ndarray] = {}
    frames = []
    for m in read_bag(bag, [topics.CAMERA_IMAGE, topics.WRIST_IMAGE]):
        msg = ts.deserialize_cdr(m.data, m.msgtype)
        latest[m.topic] = image_to_rgb(msg, bag, m.topic, (msg.height, msg.width))
        if m.topic == topics.WRIST_IMAGE and topics.CAMERA_IMAGE in latest:
            a, b = latest[topics.CAMERA_IMAGE], latest[topics.WRIST_IMAGE]
            if a.shape == b.shape:
                frames.append(np.concatenate([a, b], axis=1))
    if not frames:
        raise ValueError(f"bag {bag}: no frames on {topics.CAMERA_IMAGE} and {topics.WRIST_IMAGE}")
    out.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(out, frames, fps=fps, **({"macro_block_size": 1} if out.suffix == ".mp4" else {}))
    return len(frames)


def main(argv: list[str] | None = None) -> int:
    import rclpy

    from avdp_ros.nodes import topics
    from avdp_ros.runner import ProcessStack, Stack, default_config, parse_sets, use_dds_profile

    ap = argparse.ArgumentParser(prog="avdp-collect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="push", help="push | pick_place")
    ap.add_argument("--episodes", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the first episode (then +1 per episode)")
    ap.add_argument("--out", type=Path, default=Path("runs/collect"), help="output folder")
    ap.add_argument("--time-limit", type=float, default=25.0, help="seconds per episode before giving up")
    ap.add_argument("--settle", type=float, default=0.5, help="seconds success must hold before stopping")
    ap.add_argument("--config", type=Path, default=None, help="parameter YAML (default config/record.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE")
    ap.add_argument("--in-process", action="store_true",
                    help="all nodes in this process (default: one process per node, like ros2 launch)")
    ap.add_argument("--perturb", type=float, nargs=2, default=None, metavar=("POS_M", "YAW_RAD"),
                    help="DART-style perturbations of the expert's executed target (e.g. 0.04 0.2); the "
                         "intended target is recorded as the label (recovery data)")
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--no-convert", action="store_true")
    a = ap.parse_args(argv)
    if a.episodes < 1:
        ap.error(f"--episodes {a.episodes}: expected >= 1")

    out = a.out.expanduser().resolve()
    overrides = parse_sets(a.set)
    overrides.setdefault("avdp_sim_bridge", {}).update(task=a.task, seed=a.seed)
    overrides.setdefault("avdp_recorder", {}).update(output_dir=str(out / "bags"))
    roles, config = ["sim_bridge", "expert", "recorder"], a.config or default_config("record")
    if a.perturb:
        overrides.setdefault("avdp_expert", {}).update(perturb_pos_m=a.perturb[0], perturb_yaw_rad=a.perturb[1])
    # The expert's intended target is the label source; record it next to the configured topics.
    from avdp_ros.nodes.recorder_node import DEFAULT_TOPICS

    rec_topics = (overrides.setdefault("avdp_recorder", {}).get("topics") or _yaml_topics(config)
                  or DEFAULT_TOPICS)
    if topics.INTENDED_TARGET not in rec_topics:
        overrides["avdp_recorder"]["topics"] = [*rec_topics, topics.INTENDED_TARGET]
    use_dds_profile()
    if a.in_process:
        stack = Stack(roles, config, overrides)
    else:  # one process per node, like ros2 launch: the sim's pacing never waits on another node's GIL
        stack = ProcessStack(roles, config, overrides)
        rclpy.init()
    driver = EpisodeDriver()
    results = []
    try:
        for k in range(a.episodes):
            r = driver.run_episode(a.time_limit, a.settle)
            results.append(r)
            print(f"episode {k + 1}/{a.episodes}: task {r['task']} seed {r['seed']} "
                  f"{'SUCCESS' if r['success'] else 'failed'} in {r['duration_s']:.1f} s", flush=True)
    finally:
        driver.close()
        stack.shutdown()
        rclpy.try_shutdown()

    from avdp_ros.data.bag_io import bag_info
    from avdp_ros.data.convert import ConvertConfig, convert_directory, find_bags

    bags = find_bags(out / "bags")[-a.episodes:]
    summary = {"episodes": results, "bags": []}
    for bag in bags:
        info = bag_info(bag)
        size = sum(f.stat().st_size for f in bag.iterdir()) / 1e6
        summary["bags"].append({"path": str(bag), "mb": round(size, 2), "counts": info.counts})
        print(f"\n{bag}  ({size:.1f} MB)")
        for topic, n in sorted(info.counts.items()):
            print(f"  {topic:<48} {n:6d}")
    if not a.no_video and bags:
        video = out / "episode.mp4"
        n = bag_video(bags[0], video)
        summary["video"] = str(video)
        print(f"\nvideo of the first episode ({n} frames, decoded from the bag): {video}")
    if not a.no_convert and bags:
        report = convert_directory(out / "bags", out / "dataset", ConvertConfig())
        summary["dataset"] = str(out / "dataset")
        print(f"dataset: {out / 'dataset'}: {len(report.episodes)} episodes, {report.frames} steps, "
              f"{len(report.failed)} failed, {report.frames_per_s:.0f} steps/s")
    success = sum(r["success"] for r in results)
    print(f"\nsuccess {success}/{len(results)}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0 if success == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
