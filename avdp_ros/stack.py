"""Which nodes make up each job: one table read by both the ROS 2 launch files and the
in-process runner, so the two can never start different sets. Pure (no rclpy)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeSpec:
    executable: str  # console script (ros2 run avdp_ros <executable>)
    name: str  # node name = key in the parameter YAML
    cls: str  # "module:Class" for the in-process runner


NODES = {
    "sim_bridge": NodeSpec("sim_bridge", "avdp_sim_bridge", "avdp_ros.nodes.sim_bridge_node:SimBridgeNode"),
    "expert": NodeSpec("expert", "avdp_expert", "avdp_ros.nodes.expert_node:ExpertNode"),
    "teleop": NodeSpec("teleop", "avdp_teleop", "avdp_ros.nodes.teleop_node:TeleopNode"),
    "recorder": NodeSpec("recorder", "avdp_recorder", "avdp_ros.nodes.recorder_node:RecorderNode"),
    "policy": NodeSpec("policy", "avdp_policy", "avdp_ros.nodes.policy_node:PolicyNode"),
    "realsense": NodeSpec("realsense_camera", "avdp_realsense_camera",
                          "avdp_ros.nodes.realsense_camera_node:RealSenseCameraNode"),
}

ROBOTS = ("sim", "real")
OPERATORS = ("expert", "teleop", "none")
CAMERAS = ("none", "realsense")  # "none": the sim's cameras, or drivers you start yourself


def record_roles(robot: str = "sim", operator: str = "expert") -> list[str]:
    """Nodes of the recording job.

    Args:
        robot: "sim" starts the MuJoCo bridge on the robot's topics; "real" expects the real
            camera drivers and controller to be running already.
        operator: "expert" (scripted, sim only), "teleop" (Joy / keyboard), or "none" (someone
            else publishes targets, e.g. a policy).
    """
    if robot not in ROBOTS:
        raise ValueError(f"robot '{robot}': expected one of {ROBOTS}")
    if operator not in OPERATORS:
        raise ValueError(f"operator '{operator}': expected one of {OPERATORS}")
    if operator == "expert" and robot != "sim":
        raise ValueError("operator 'expert' needs robot 'sim': the scripted expert reads the sim's object poses")
    roles = ["sim_bridge"] if robot == "sim" else []
    if operator != "none":
        roles.append(operator)
    roles.append("recorder")
    return roles


def policy_roles(robot: str = "sim", cameras: str = "none") -> list[str]:
    """Nodes of the policy job (the learned policy commands the robot).

    Args:
        robot: "sim" starts the MuJoCo bridge on the robot's topics; "real" expects the
            controller to be running already (and no other node publishing targets: the policy
            node must be the only commander).
        cameras: "realsense" also starts the realsense_camera node (real robot only; its
            serial numbers in the YAML); "none" expects the sim's or your own camera drivers.
    """
    if robot not in ROBOTS:
        raise ValueError(f"robot '{robot}': expected one of {ROBOTS}")
    if cameras not in CAMERAS:
        raise ValueError(f"cameras '{cameras}': expected one of {CAMERAS}")
    if cameras != "none" and robot == "sim":
        raise ValueError(f"cameras '{cameras}' needs robot 'real': the sim bridge renders its own cameras")
    return (["sim_bridge"] if robot == "sim" else []) + (["realsense"] if cameras == "realsense" else []) + ["policy"]
