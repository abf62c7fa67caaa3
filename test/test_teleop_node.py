"""Teleop node over DDS: engages at the robot's current pose and turns Joy input into target
poses and gripper commands (no sim needed: a probe plays the robot)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (ROS 2 graph tests need it)")

from conftest import wait_until  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Joy  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from avdp_ros.nodes import topics  # noqa: E402
from avdp_ros.nodes.msgs import pose_from_msg, pose_to_msg  # noqa: E402
from avdp_ros.nodes.runner import default_config, ros_args  # noqa: E402
from avdp_ros.nodes.teleop_node import TeleopNode  # noqa: E402

HOME = np.array([0.5, 0.1, 0.3, 1.0, 0.0, 0.0, 0.0])


def test_joy_drives_the_target_from_the_current_pose(rclpy_context):
    teleop = TeleopNode(cli_args=ros_args(default_config("record"), {"keyboard": "false", "linear_speed": 0.1}),
                        context=rclpy_context)
    robot = Node("robot", context=rclpy_context)
    targets, widths = [], []
    robot.create_subscription(PoseStamped, topics.TARGET_FRAME, targets.append, topics.COMMAND_QOS)
    robot.create_subscription(Float64, topics.GRIPPER_COMMAND, widths.append, topics.COMMAND_QOS)
    pose_pub = robot.create_publisher(PoseStamped, topics.CURRENT_POSE, topics.STATE_QOS)
    joy_pub = robot.create_publisher(Joy, topics.JOY, topics.SENSOR_QOS)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(teleop)
    ex.add_node(robot)

    def step():
        pose_pub.publish(pose_to_msg(HOME, topics.BASE_FRAME, 0.0))
        ex.spin_once(timeout_sec=0.01)

    try:
        wait_until(lambda: targets, 10.0, step, "first target")
        first = pose_from_msg(targets[0].pose)
        np.testing.assert_allclose(first, HOME, atol=1e-9)  # engaged without a jump
        assert targets[0].header.frame_id == topics.BASE_FRAME
        joy = Joy(axes=[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], buttons=[1, 0])

        def push():
            joy_pub.publish(joy)
            step()

        wait_until(lambda: pose_from_msg(targets[-1].pose)[0] > HOME[0] + 0.02, 10.0, push, "target to move +x")
        last = pose_from_msg(targets[-1].pose)
        assert abs(last[1] - HOME[1]) < 1e-9 and abs(last[2] - HOME[2]) < 1e-9  # only x moved
        wait_until(lambda: widths and widths[-1].data == 0.0, 5.0, step, "gripper closed by button 0")
    finally:
        teleop.close()
        ex.shutdown()
        teleop.destroy_node()
        robot.destroy_node()
