"""Controller bring-up configs: config/controllers/<name>.yaml maps the policy's default topics,
message types and base frame onto those of one Cartesian controller.

    ros2 launch avdp_ros policy.launch.py robot:=real controller:=crisp_cartesian_impedance
    avdp-run policy --robot real --controller crisp_cartesian_impedance

A file names, per role, the controller's topic and the message type it carries there, and the
frame its poses are in (each value with the public source file that defines it):

    base_frame: base
    target: {topic: /target_pose, type: geometry_msgs/msg/PoseStamped}
    feedback: {topic: /current_pose, type: geometry_msgs/msg/PoseStamped}
    warning: "..."   # optional: printed whenever the controller is selected

A role left out keeps the default topic. Selecting a controller remaps the topics of every node of
the job (in sim the bridge then impersonates that controller) and sets `base_frame` on the nodes
that have one. Pure (no rclpy): the launch file and the runner both load configs through here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

# role -> (default topic, the one message type avdp speaks there). The topics are those of
# nodes/topics.py (a test compares them), repeated because importing that module loads rclpy.
ROLES: dict[str, tuple[str, str]] = {
    "target": ("/cartesian_impedance_controller/target_frame", "geometry_msgs/msg/PoseStamped"),
    "feedback": ("/cartesian_impedance_controller/current_pose", "geometry_msgs/msg/PoseStamped"),
    "gripper_command": ("/gripper/command", "std_msgs/msg/Float64"),
    "gripper_state": ("/gripper/joint_states", "sensor_msgs/msg/JointState"),
}
FRAME_NODES = ("avdp_policy", "avdp_sim_bridge")  # nodes with a base_frame parameter
KEYS = {"base_frame", "warning", *ROLES}

_TOPIC = re.compile(r"^(/[A-Za-z_][A-Za-z0-9_]*)+$")  # absolute: a namespace would change it
_FRAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")  # tf2: no leading '/'


@dataclass(frozen=True)
class Controller:
    name: str
    base_frame: str
    remappings: dict[str, str]  # default topic -> the controller's
    warning: str = ""

    def overrides(self, node_names: Iterable[str]) -> dict[str, dict[str, object]]:
        """Parameter overrides for the nodes of a job: the controller's base frame."""
        return {name: {"base_frame": self.base_frame} for name in node_names if name in FRAME_NODES}


def available(directory: Path) -> list[str]:
    """Names of the controller configs in `directory` (file names without .yaml)."""
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load_controller(name: str, directory: Path) -> Controller:
    """Read and check config/controllers/<name>.yaml.

    Raises:
        ValueError: an unknown name (listing the available ones), or a file that names an unknown
            key, an invalid topic or frame, or a message type avdp does not speak in that role.
    """
    names = available(directory)
    if name not in names:
        raise ValueError(f"controller '{name}': expected one of {', '.join(names) or '(none)'} "
                         f"(config/controllers/*.yaml in {directory})")
    path = Path(directory) / f"{name}.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    where = f"controller config {path}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of {sorted(KEYS)}")
    if set(data) - KEYS:
        raise ValueError(f"{where}: unknown keys {sorted(set(data) - KEYS)}: expected some of {sorted(KEYS)}")
    frame = data.get("base_frame")
    if not isinstance(frame, str) or not _FRAME.match(frame):
        raise ValueError(f"{where}: base_frame = {frame!r}: expected a tf frame name such as fr3_link0")
    remappings = {}
    for role, (ours, our_type) in ROLES.items():
        if role not in data:
            continue
        entry = data[role]
        if not isinstance(entry, dict) or set(entry) != {"topic", "type"}:
            raise ValueError(f"{where}: {role} = {entry!r}: expected {{topic: /name, type: pkg/msg/Type}}")
        topic, kind = entry["topic"], entry["type"]
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            raise ValueError(f"{where}: {role} topic {topic!r}: expected an absolute ROS topic name")
        if kind != our_type:
            # Every controller checked so far speaks our types; a new one needs a conversion first.
            raise ValueError(f"{where}: {role} type {kind!r} on {topic}: avdp_policy speaks only "
                             f"{our_type} there")
        remappings[ours] = topic
    warning = data.get("warning", "")
    if not isinstance(warning, str):
        raise ValueError(f"{where}: warning = {warning!r}: expected a string")
    return Controller(name, frame, remappings, warning.strip())
