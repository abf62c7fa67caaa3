"""`avdp-run` as a user runs it: the recording stack in one process, stopped with SIGTERM, leaves
a complete bag (not a SIGKILL-style cut file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_until

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (ROS 2 graph tests need it)")
pytest.importorskip("mujoco", reason="mujoco is not installed")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from avdp_ros.data.bag_io import bag_info  # noqa: E402
from avdp_ros.nodes import topics  # noqa: E402


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_runner_stops_cleanly_and_the_bag_is_complete(rclpy_context, tmp_path: Path, stop_signal):
    out = tmp_path / "bags"
    cmd = [sys.executable, "-m", "avdp_ros.nodes.runner", "record", "--robot", "sim", "--operator", "expert",
           "--set", f"avdp_recorder.output_dir={out}", "--set", "avdp_sim_bridge.task=pick_place"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = Node("runner_probe", context=rclpy_context)
    status: list[dict] = []
    node.create_subscription(String, "/avdp/record/status", lambda m: status.append(json.loads(m.data)),
                             topics.LATCHED_QOS)
    start = node.create_client(Trigger, topics.RECORD_START)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    spin = lambda: ex.spin_once(timeout_sec=0.05)  # noqa: E731
    try:
        wait_until(lambda: start.service_is_ready() or proc.poll() is not None, 30.0, spin, "the recorder service")
        assert proc.poll() is None, proc.stdout.read()
        future = start.call_async(Trigger.Request())
        wait_until(future.done, 10.0, spin, "record start reply")
        assert future.result().success, future.result().message
        def recorded(topic):
            return status[-1].get("counts", {}).get(topic, 0) if status else 0

        wait_until(lambda: recorded(topics.CAMERA_IMAGE) >= 10 and recorded(topics.CURRENT_POSE) >= 50,
                   30.0, spin, "10 camera frames and 50 poses recorded")
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        node.destroy_node()
        ex.shutdown()
    (bag,) = [p for p in out.iterdir() if p.is_dir()]
    assert (bag / "metadata.yaml").exists(), "bag not finalised: the runner did not close it"
    info = bag_info(bag)
    assert not info.truncated
    assert info.counts[topics.CAMERA_IMAGE] >= 10 and info.counts[topics.CURRENT_POSE] >= 50
    meta = json.loads((bag / "episode.json").read_text())
    assert meta["state"] == "closed" and meta["metadata"]["task"] == "pick_place"
