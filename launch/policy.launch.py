"""The learned policy commanding the robot (sim or real).

    ros2 launch avdp_ros policy.launch.py robot:=sim model:=/path/to/run/latest
    ros2 launch avdp_ros policy.launch.py robot:=real backend:=torch config:=/path/policy.yaml
    ros2 launch avdp_ros policy.launch.py robot:=real model:=DIR controller:=crisp_cartesian_impedance
    ros2 launch avdp_ros policy.launch.py robot:=real cameras:=realsense config:=my_policy.yaml

The node set comes from avdp_ros.stack.policy_roles, the same table `avdp-run policy` uses, and
the parameters from the same YAML, so launch and the in-process runner start the same graph.
`model:=` and `backend:=` override the YAML when given; `controller:=NAME` applies
config/controllers/NAME.yaml (avdp_ros.controllers: the robot topics remapped to that controller's
for every node, and its base_frame), as `avdp-run policy --controller NAME` does. The policy node
is a lifecycle node that configures and activates itself (`autostart: true` in the YAML); a
missing model or a bad parameter stops it at start-up with a message naming what is wrong.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from avdp_ros.controllers import load_controller
from avdp_ros.stack import NODES, policy_roles


def _nodes(context):
    robot = LaunchConfiguration("robot").perform(context)
    config = LaunchConfiguration("config").perform(context)
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() == "true"
    policy_overrides = {name: value for name in ("model", "backend")
                        if (value := LaunchConfiguration(name).perform(context))}
    roles = policy_roles(robot, LaunchConfiguration("cameras").perform(context))
    controller_name = LaunchConfiguration("controller").perform(context)
    controller = None
    if controller_name:  # an unknown name stops the launch with the list of known ones
        share = get_package_share_directory("avdp_ros")
        controller = load_controller(controller_name, os.path.join(share, "config", "controllers"))
    frames = controller.overrides(NODES[r].name for r in roles) if controller else {}
    actions = []
    if controller and controller.warning:
        actions.append(LogInfo(msg=f"WARNING, controller {controller.name}: {controller.warning}"))
    for role in roles:
        spec = NODES[role]
        overrides = {"use_sim_time": use_sim_time, **(policy_overrides if role == "policy" else {})}
        actions.append(Node(
            package="avdp_ros",
            executable=spec.executable,
            name=spec.name,
            # later wins: the YAML, the controller's base_frame, the launch arguments
            parameters=[config, *([frames[spec.name]] if spec.name in frames else []), overrides],
            remappings=list(controller.remappings.items()) if controller else [],
            output="screen",
            emulate_tty=True,
        ))
    return actions


def generate_launch_description():
    share = get_package_share_directory("avdp_ros")
    default_config = os.path.join(share, "config", "policy.yaml")
    # Fast DDS's default shared-memory segment is smaller than one 640x480 image (see
    # config/fastdds.xml); keep a profile the user set, else use ours.
    dds_profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds.xml"))
    return LaunchDescription([
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", dds_profile),
        DeclareLaunchArgument("robot", default_value="sim", description="sim (MuJoCo bridge) or real"),
        DeclareLaunchArgument("model", default_value="",
                              description="checkpoint directory ('' = the YAML's, default models/avdp_default)"),
        DeclareLaunchArgument("backend", default_value="", description="inference backend ('' = the YAML's: torch)"),
        DeclareLaunchArgument("config", default_value=default_config, description="parameter YAML"),
        DeclareLaunchArgument("cameras", default_value="none",
                              description="none, or realsense: start realsense_camera (robot:=real)"),
        DeclareLaunchArgument("controller", default_value="",
                              description="controller config config/controllers/NAME.yaml ('' = default topics)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="stamp with /clock"),
        OpaqueFunction(function=_nodes),
    ])
