"""Controller bring-up configs (config/controllers/*.yaml): every file loads and names valid topics,
message types and frames; bad files and unknown names are refused with a message saying what was
wrong; `avdp-run policy --controller` refuses an unknown name; and over real DDS the policy node,
started with a controller's remappings, anchors on that controller's best-effort feedback in its
base frame and publishes its PoseStamped targets on the controller's topic only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_idm_checkpoint, wait_until

from avdp_ros.controllers import FRAME_NODES, ROLES, available, load_controller

CONTROLLERS = Path(__file__).resolve().parents[1] / "config" / "controllers"
# One per controller family the configs were checked against (issue 18): franka_ros2, FZI, CRISP.
EXPECTED = {"franka_cartesian_impedance_example", "fzi_cartesian_motion", "fzi_cartesian_compliance",
            "crisp_cartesian_impedance"}


def test_the_expected_configs_are_shipped():
    assert EXPECTED <= set(available(CONTROLLERS))


@pytest.mark.parametrize("name", available(CONTROLLERS))
def test_every_config_loads_and_names_valid_topics_types_and_frames(name):
    controller = load_controller(name, CONTROLLERS)
    ours = {topic for topic, _ in ROLES.values()}
    target, feedback = ROLES["target"][0], ROLES["feedback"][0]
    assert {target, feedback} <= set(controller.remappings), "a controller config maps target and feedback"
    assert set(controller.remappings) <= ours
    theirs = list(controller.remappings.values())
    assert len(set(theirs)) == len(theirs), f"two roles on one topic: {theirs}"
    assert not set(theirs) & ours, "remapped onto one of our own default topics"
    assert controller.base_frame and not controller.base_frame.startswith("/")
    rclpy_names = pytest.importorskip("rclpy.validate_full_topic_name")
    for topic in theirs:
        assert rclpy_names.validate_full_topic_name(topic)
    data = yaml.safe_load((CONTROLLERS / f"{name}.yaml").read_text())
    for role in set(ROLES) & set(data):  # each named type is a real, importable message class
        package, _, cls = data[role]["type"].split("/")
        assert hasattr(pytest.importorskip(f"{package}.msg"), cls), data[role]["type"]


def test_role_topics_are_the_nodes_defaults():
    topics = pytest.importorskip("avdp_ros.nodes.topics", reason="rclpy is not installed")
    assert ROLES["target"][0] == topics.TARGET_FRAME and ROLES["feedback"][0] == topics.CURRENT_POSE
    assert ROLES["gripper_command"][0] == topics.GRIPPER_COMMAND
    assert ROLES["gripper_state"][0] == topics.GRIPPER_STATE


def test_overrides_set_base_frame_on_the_job_nodes_that_have_one():
    controller = load_controller("crisp_cartesian_impedance", CONTROLLERS)
    assert controller.overrides(["avdp_policy", "avdp_recorder"]) == {"avdp_policy": {"base_frame": "base"}}
    assert set(controller.overrides(["avdp_sim_bridge", "avdp_policy"])) == set(FRAME_NODES)


GOOD = {"base_frame": "fr3_link0", "target": {"topic": "/c/target", "type": "geometry_msgs/msg/PoseStamped"}}


@pytest.mark.parametrize("change, message", [
    ({"target": {"topic": "/c/target", "type": "geometry_msgs/msg/Pose"}},
     r"target type 'geometry_msgs/msg/Pose' on /c/target: avdp_policy speaks only geometry_msgs/msg/PoseStamped"),
    ({"target": {"topic": "c/target", "type": "geometry_msgs/msg/PoseStamped"}},
     r"target topic 'c/target': expected an absolute ROS topic name"),
    ({"feedback": "/c/pose"}, r"feedback = '/c/pose': expected \{topic: /name, type: pkg/msg/Type\}"),
    ({"base_frame": "/fr3_link0"}, r"base_frame = '/fr3_link0': expected a tf frame name"),
    ({"frame": "base"}, r"unknown keys \['frame'\]"),
])
def test_a_bad_config_is_refused_naming_what_is_wrong(tmp_path, change, message):
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({**GOOD, **change}))
    with pytest.raises(ValueError, match=message):
        load_controller("mine", tmp_path)


def test_an_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"controller 'franka': expected one of crisp_cartesian_impedance, "):
        load_controller("franka", CONTROLLERS)


def test_runner_refuses_an_unknown_controller_with_the_list(capsys):
    runner = pytest.importorskip("avdp_ros.nodes.runner")
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["policy", "--robot", "real", "--controller", "nope"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "controller 'nope': expected one of" in err and "fzi_cartesian_motion" in err
    with pytest.raises(SystemExit):
        runner.main(["record", "--controller", "crisp_cartesian_impedance"])
    err = capsys.readouterr().err
    assert "--controller" in err and "belong to the policy job" in err


def test_ros_args_carry_the_remappings():
    runner = pytest.importorskip("avdp_ros.nodes.runner")
    controller = load_controller("fzi_cartesian_motion", CONTROLLERS)
    args = runner.ros_args(Path("policy.yaml"), {"base_frame": controller.base_frame}, remaps=controller.remappings)
    assert f"{ROLES['target'][0]}:=/cartesian_motion_controller/target_frame" in args
    assert "base_frame:=fr3_link0" in args


# ---------------------------------------------------------------- over DDS


def test_policy_node_speaks_the_controllers_topics_and_frame(tmp_path):
    """franka_ros2's config: feedback best effort (as franka_robot_state_broadcaster publishes it)
    stamped 'base', gripper on /franka_gripper/joint_states; the first command is the measured
    pose, as PoseStamped in 'base' on the controller's topic, and nothing goes to the default one."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (ROS 2 graph tests need it)")
    from geometry_msgs.msg import PoseStamped
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    from avdp_ros.nodes.msgs import pose_from_msg, pose_to_msg, stamp_from_sec
    from avdp_ros.nodes.runner import Stack, default_config

    controller = load_controller("franka_cartesian_impedance_example", CONTROLLERS)
    remaps = controller.remappings
    target, feedback, gripper = (remaps[ROLES[r][0]] for r in ("target", "feedback", "gripper_state"))
    path, _ = tiny_idm_checkpoint(tmp_path)
    pose = np.array([0.5, 0.05, 0.3, 1.0, 0.0, 0.0, 0.0])  # inside the default workspace, tool down

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    overrides = controller.overrides(["avdp_policy"])
    overrides["avdp_policy"].update(model=str(path), torch_threads=1, command_rate_hz=50.0)
    stack = Stack(["policy"], default_config("policy"), overrides, context=ctx, remaps=remaps)
    probe = Node("controller_probe", context=ctx)
    try:
        commands: list[PoseStamped] = []
        probe.create_subscription(PoseStamped, target, commands.append, QoSProfile(depth=10))
        best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        pub_pose = probe.create_publisher(PoseStamped, feedback, best_effort)
        pub_gripper = probe.create_publisher(JointState, gripper, 10)

        def publish_state():  # 100 Hz, like a (slow) controller
            now = probe.get_clock().now().nanoseconds * 1e-9
            pub_pose.publish(pose_to_msg(pose, controller.base_frame, now))
            msg = JointState(name=["fr3_finger_joint1", "fr3_finger_joint2"], position=[0.02, 0.02])
            msg.header.stamp = stamp_from_sec(now)
            pub_gripper.publish(msg)

        probe.create_timer(0.01, publish_state)
        stack.executor.add_node(probe)
        wait_until(lambda: commands, 30.0, what=f"a command on {target}")
        first = commands[0]
        assert first.header.frame_id == "base"
        np.testing.assert_allclose(pose_from_msg(first.pose), pose, atol=1e-9)
        (info,) = probe.get_publishers_info_by_topic(target)
        assert (info.node_name, info.topic_type) == ("avdp_policy", "geometry_msgs/msg/PoseStamped")
        assert probe.count_publishers(ROLES["target"][0]) == 0, "still publishing on the default topic"
    finally:
        stack.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown(context=ctx)
