"""Teleop / expert episode recording to rosbag2 MCAP.

    ros2 launch avdp_ros record.launch.py robot:=sim operator:=expert
    ros2 launch avdp_ros record.launch.py robot:=real operator:=teleop config:=/path/record.yaml

The node set comes from avdp_ros.stack.record_roles, the same table `avdp-run record` uses, and
the parameters from the same YAML, so launch and the in-process runner start the same graph.
Stop with Ctrl-C (SIGINT): the recorder closes its bag.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from avdp_ros.stack import NODES, record_roles


def _nodes(context):
    robot = LaunchConfiguration("robot").perform(context)
    operator = LaunchConfiguration("operator").perform(context)
    config = LaunchConfiguration("config").perform(context)
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() == "true"
    actions = []
    for role in record_roles(robot, operator):
        spec = NODES[role]
        actions.append(Node(
            package="avdp_ros",
            executable=spec.executable,
            name=spec.name,
            parameters=[config, {"use_sim_time": use_sim_time}],
            output="screen",
            emulate_tty=True,
        ))
    return actions


def generate_launch_description():
    share = get_package_share_directory("avdp_ros")
    default_config = os.path.join(share, "config", "record.yaml")
    # Fast DDS's default shared-memory segment is smaller than one 640x480 image (see
    # config/fastdds.xml); keep a profile the user set, else use ours.
    dds_profile = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds.xml"))
    return LaunchDescription([
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", dds_profile),
        DeclareLaunchArgument("robot", default_value="sim", description="sim (MuJoCo bridge) or real"),
        DeclareLaunchArgument("operator", default_value="expert", description="expert | teleop | none"),
        DeclareLaunchArgument("config", default_value=default_config, description="parameter YAML"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="stamp with /clock"),
        OpaqueFunction(function=_nodes),
    ])
