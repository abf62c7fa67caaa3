"""The sim bridge over real DDS: it tracks valid targets, rejects bad ones with a reason and
holds, and stamps from sim time on /clock when asked to."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (ROS 2 graph tests need it)")
pytest.importorskip("mujoco", reason="mujoco is not installed")

from conftest import wait_until  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from avdp_ros.nodes import topics  # noqa: E402
from avdp_ros.nodes.msgs import pose_from_msg, pose_to_msg, stamp_to_sec  # noqa: E402
from avdp_ros.nodes.runner import default_config, ros_args  # noqa: E402
from avdp_ros.nodes.sim_bridge_node import SimBridgeNode  # noqa: E402


class Probe(Node):
    def __init__(self, context):
        super().__init__("probe", context=context)
        self.poses, self.images, self.clock, self.fingers = [], [], [], []
        self.create_subscription(PoseStamped, topics.CURRENT_POSE, self.poses.append, topics.STATE_QOS)
        self.create_subscription(Image, topics.CAMERA_IMAGE, self.images.append, topics.SENSOR_QOS)
        self.create_subscription(JointState, topics.GRIPPER_STATE, self.fingers.append, topics.STATE_QOS)
        self.create_subscription(Clock, "/clock", self.clock.append, 10)
        self.target = self.create_publisher(PoseStamped, topics.TARGET_FRAME, topics.COMMAND_QOS)
        self.gripper = self.create_publisher(Float64, topics.GRIPPER_COMMAND, topics.COMMAND_QOS)


def _graph(ctx, **params):
    bridge = SimBridgeNode(cli_args=ros_args(default_config("record"), params, params.pop("use_sim_time", False)),
                           context=ctx)
    probe = Probe(ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(bridge)
    ex.add_node(probe)
    return bridge, probe, ex


def _close(bridge, probe, ex):
    bridge.close()
    ex.shutdown()
    bridge.destroy_node()
    probe.destroy_node()


def test_tracks_targets_and_rejects_bad_ones(rclpy_context):
    bridge, probe, ex = _graph(rclpy_context, task="push", seed=1)
    spin = lambda: ex.spin_once(timeout_sec=0.01)  # noqa: E731
    try:
        wait_until(lambda: probe.poses, 10.0, spin, "first current_pose")
        home = pose_from_msg(probe.poses[-1].pose)
        goal = home.copy()
        goal[:3] += [0.05, -0.05, 0.05]

        def send(pose, frame=topics.BASE_FRAME):
            probe.target.publish(pose_to_msg(pose, frame, stamp_to_sec(probe.poses[-1].header.stamp)))

        last = [0.0]

        def stream(pose):  # a target stream at ~50 Hz, like a teleop (not a busy loop)
            if time.monotonic() - last[0] > 0.02:
                last[0] = time.monotonic()
                send(pose)

        def dist():
            return float(np.linalg.norm(pose_from_msg(probe.poses[-1].pose)[:3] - goal[:3]))

        wait_until(lambda: stream(goal) or dist() < 0.01, 15.0, spin, "the arm to reach a valid target")

        bad = goal.copy()
        bad[0] = math.nan
        wrong_frame = goal.copy()
        wrong_frame[2] -= 0.1
        before = bridge.rejected
        send(bad)
        send(wrong_frame, frame="world")
        probe.gripper.publish(Float64(data=math.inf))
        wait_until(lambda: bridge.rejected >= before + 3, 5.0, spin, "three rejections")
        # the arm holds the last valid target: watch it for a while of sim time
        n = len(probe.poses)
        wait_until(lambda: len(probe.poses) > n + 100, 10.0, spin, "100 more poses")
        assert dist() < 0.01
        assert all(np.isfinite(pose_from_msg(m.pose)).all() for m in probe.poses)
    finally:
        _close(bridge, probe, ex)


def test_sim_time_mode_publishes_clock_and_stamps_in_sim_time(rclpy_context):
    bridge, probe, ex = _graph(rclpy_context, task="pick_place", seed=2, real_time_factor=0.0, use_sim_time=True)
    spin = lambda: ex.spin_once(timeout_sec=0.01)  # noqa: E731
    try:
        t0 = time.monotonic()
        wait_until(lambda: probe.clock and stamp_to_sec(probe.clock[-1].clock) > 2.0, 60.0, spin, "2 s of sim time")
        wall = time.monotonic() - t0
        sim = stamp_to_sec(probe.clock[-1].clock)
        assert sim > 2.0
        wait_until(lambda: probe.poses and probe.images, 10.0, spin, "pose and image")
        # stamps are sim time (start at 0), not wall time
        assert stamp_to_sec(probe.poses[-1].header.stamp) < sim + 1.0
        assert stamp_to_sec(probe.images[-1].header.stamp) < sim + 1.0
        assert bridge.loop.overruns == 0  # no pacing at real_time_factor 0
        print(f"sim time {sim:.2f} s in {wall:.2f} s wall")
    finally:
        _close(bridge, probe, ex)


def test_real_time_factor_without_sim_time_is_refused(rclpy_context):
    with pytest.raises(ValueError, match="needs use_sim_time"):
        SimBridgeNode(cli_args=ros_args(default_config("record"), {"real_time_factor": 2.0}), context=rclpy_context)
