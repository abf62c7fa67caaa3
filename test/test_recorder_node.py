"""Recorder node in an in-process rclpy graph, and a SIGTERM'd recorder process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_until

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (ROS 2 graph tests need it)")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from avdp_ros.nodes.recorder_node import RecorderNode  # noqa: E402

IMG = "/camera/camera/color/image_raw"
POSE = "/cartesian_impedance_controller/current_pose"
TS = get_typestore(Stores.ROS2_KILTED)
SENSOR = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
T0_SEC = 1_700_000_000


def _image(i: int) -> Image:
    msg = Image(height=4, width=6, encoding="rgb8", step=18, data=bytes([i]) * 72)
    msg.header.stamp.sec, msg.header.stamp.nanosec = T0_SEC, i * 33_000_000
    msg.header.frame_id = "camera"
    return msg


def _pose(i: int) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp.sec, msg.header.stamp.nanosec = T0_SEC, i * 5_000_000
    msg.header.frame_id = "panda_link0"
    msg.pose.position.x = 0.01 * i
    msg.pose.orientation.w = 1.0
    return msg


class Graph:
    """Publisher + client + recorder on one executor, all in the test's context."""

    def __init__(self, ctx, tmp_path: Path) -> None:
        self.node = rclpy.create_node("recorder_test_peer", context=ctx)
        self.img_pub = self.node.create_publisher(Image, IMG, SENSOR)
        self.pose_pub = self.node.create_publisher(PoseStamped, POSE, RELIABLE)
        self.info_pub = self.node.create_publisher(String, "/avdp/episode_info", LATCHED)
        self.start = self.node.create_client(Trigger, "/avdp/record/start")
        self.stop = self.node.create_client(Trigger, "/avdp/record/stop")
        self.recorder = RecorderNode(
            context=ctx,
            parameter_overrides=[
                Parameter("output_dir", value=str(tmp_path / "bags")),
                Parameter("topics", value=[IMG, POSE]),
                Parameter("instruction", value="stack the blocks"),
                Parameter("operator", value="tester"),
                Parameter("flush_period_s", value=0.1),
            ],
        )
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.ex.add_node(self.recorder)

    def spin(self) -> None:
        self.ex.spin_once(timeout_sec=0.01)

    def call(self, client) -> Trigger.Response:
        wait_until(lambda: client.service_is_ready(), 10, self.spin, what=f"service {client.srv_name}")
        fut = client.call_async(Trigger.Request())
        wait_until(fut.done, 10, self.spin, what=f"reply from {client.srv_name}")
        return fut.result()

    def close(self) -> None:
        self.ex.shutdown()
        self.recorder.destroy_node()
        self.node.destroy_node()


def test_record_episode_in_process(rclpy_context, tmp_path: Path):
    g = Graph(rclpy_context, tmp_path)
    try:
        g.info_pub.publish(String(data=json.dumps({"task": "stack", "seed": 11, "success": False})))
        wait_until(
            lambda: not g.recorder.missing_topics, 10, g.spin, what="recorder subscribed to both topics"
        )
        wait_until(
            lambda: g.img_pub.get_subscription_count() and g.pose_pub.get_subscription_count(),
            10,
            g.spin,
            what="publishers matched",
        )
        wait_until(lambda: g.recorder.episode_info.get("seed") == 11, 10, g.spin, what="episode_info latched")
        assert g.call(g.stop).success is False  # nothing to stop yet

        started = g.call(g.start)
        assert started.success, started.message
        bag = Path(started.message)
        assert bag.parent == tmp_path / "bags" and (bag / "episode.json").exists()
        assert g.call(g.start).success is False  # one episode at a time

        writer = g.recorder._writer  # noqa: SLF001 - wait on the writer's own counts
        for i in range(20):
            g.pose_pub.publish(_pose(i))
            if i % 4 == 0:
                g.img_pub.publish(_image(i // 4))
            # best effort, depth 1 on the publisher: let each message land before the next
            wait_until(lambda i=i: writer.counts.get(POSE, 0) >= i + 1, 10, g.spin, what=f"pose {i} written")
            if i % 4 == 0:
                wait_until(
                    lambda i=i: writer.counts.get(IMG, 0) >= i // 4 + 1, 10, g.spin, what="image written"
                )
        g.info_pub.publish(String(data=json.dumps({"task": "stack", "seed": 11, "success": True})))
        wait_until(lambda: g.recorder.episode_info.get("success") is True, 10, g.spin, what="success info")

        stopped = g.call(g.stop)
        assert stopped.success, stopped.message
        summary = json.loads(stopped.message)
        assert summary["path"] == str(bag)
        assert summary["counts"] == {POSE: 20, IMG: 5} and summary["dropped"] == 0
    finally:
        g.close()

    with Reader(bag) as r:
        custom = r.storage.metadata.custom
        meta = json.loads(custom["avdp.episode"])
        assert meta["instruction"] == "stack the blocks" and meta["operator"] == "tester"
        assert meta["seed"] == 11 and meta["success"] is True
        got = {IMG: [], POSE: []}
        for conn, ts, data in r.messages():
            msg = TS.deserialize_cdr(data, conn.msgtype)
            assert ts == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec  # bag time = header stamp
            got[conn.topic].append((ts, msg))
    assert [ts for ts, _ in got[POSE]] == [T0_SEC * 10**9 + i * 5_000_000 for i in range(20)]
    assert np.allclose([m.pose.position.x for _, m in got[POSE]], 0.01 * np.arange(20))
    assert [int(m.data[0]) for _, m in got[IMG]] == list(range(5))
    assert all(m.encoding == "rgb8" and m.width == 6 for _, m in got[IMG])


def test_sigterm_closes_bag(rclpy_context, tmp_path: Path):
    """The recorder as its own process: SIGTERM mid-episode still leaves a complete bag."""
    node = rclpy.create_node("sigterm_peer", context=rclpy_context)
    pose_pub = node.create_publisher(PoseStamped, POSE, RELIABLE)
    status = []
    node.create_subscription(
        String, "/avdp/record/status", lambda m: status.append(json.loads(m.data)), LATCHED
    )
    start = node.create_client(Trigger, "/avdp/record/start")
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    spin = lambda: ex.spin_once(timeout_sec=0.01)  # noqa: E731
    out = tmp_path / "bags"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "avdp_ros.nodes.recorder_node",
            "--ros-args",
            "-p",
            f"output_dir:={out}",
            "-p",
            f"topics:=['{POSE}']",
            "-p",
            "status_period_s:=0.1",
        ],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: start.service_is_ready(), 20, spin, what="recorder process start service")
        wait_until(lambda: status and not status[-1]["missing_topics"], 20, spin, what="recorder subscribed")
        fut = start.call_async(Trigger.Request())
        wait_until(fut.done, 10, spin, what="start reply")
        bag = Path(fut.result().message)
        i = 0

        def publish_and_check():
            nonlocal i
            pose_pub.publish(_pose(i))
            i += 1
            spin()

        wait_until(
            lambda: status and status[-1]["counts"].get(POSE, 0) >= 10,
            20,
            publish_and_check,
            what="recorder process wrote 10 poses",
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        ex.shutdown()
        node.destroy_node()
    assert proc.returncode == 0, proc.stdout.read().decode()
    assert (bag / "metadata.yaml").exists()
    with Reader(bag) as r:
        n = r.message_count
        assert n >= 10
        assert r.storage.metadata.custom["avdp.stop_reason"] == "shutdown"
    assert json.loads((bag / "episode.json").read_text())["state"] == "closed"
