"""Default topic and service names (README, "ROS interface"). Every name is remappable with
`--ros-args -r old:=new` (or `remappings` in the launch file / runner YAML)."""

CAMERA_IMAGE = "/camera/camera/color/image_raw"
CAMERA_INFO = "/camera/camera/color/camera_info"
WRIST_IMAGE = "/wrist_camera/color/image_raw"
WRIST_INFO = "/wrist_camera/color/camera_info"
CURRENT_POSE = "/cartesian_impedance_controller/current_pose"
TARGET_FRAME = "/cartesian_impedance_controller/target_frame"
GRIPPER_COMMAND = "/gripper/command"
INTENDED_TARGET = "/avdp/expert/intended_target"  # expert's label when its executed target is perturbed
INTENDED_GRIPPER = "/avdp/expert/intended_gripper"  # its gripper label (std_msgs/Float64, m), for DAgger
GRIPPER_STATE = "/gripper/joint_states"
EPISODE_INFO = "/avdp/episode_info"
OBJECT_POSES = "/avdp/sim/object_poses"
SIM_RESET = "/avdp/sim/reset"
RECORD_START = "/avdp/record/start"
RECORD_STOP = "/avdp/record/stop"
JOY = "/joy"

BASE_FRAME = "panda_link0"


def info_topic(image_topic: str) -> str:
    """realsense-ros style sibling: .../color/image_raw -> .../color/camera_info."""
    return image_topic.rsplit("/", 1)[0] + "/camera_info" if "/" in image_topic else "camera_info"

# QoS chosen explicitly: sensor data best effort depth 1, commands
# reliable depth 3, state reliable, episode info latched for late joiners.
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
COMMAND_QOS = QoSProfile(depth=3, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# The policy reads the ee pose best effort: such a reader matches reliable and best-effort writers
# alike (franka_robot_state_broadcaster publishes current_pose best effort; a reliable reader would
# get nothing); poses stream at the controller rate, so a lost one is replaced within milliseconds.
FEEDBACK_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
