"""Scripted expert as a teleoperator: it sees what a person at the robot would (end-effector
pose, gripper state, object poses from the sim's privileged topic standing in for the person's
eyes) and acts only by publishing target poses and gripper commands on the robot's topics.

With ``perturb_pos_m`` / ``perturb_yaw_rad`` > 0 the executed target carries DART-style bumps
(``avdp_ros.sim.expert.TargetPerturbation``, seeded by the episode seed) while the target the
expert meant goes to ``/avdp/expert/intended_target``, which the converter prefers as the action
label: recordings then show how to get back onto the path. The intended target (and gripper
width, ``/avdp/expert/intended_gripper``) is published in every mode (it equals the executed one
when perturbations are off).

With ``command`` false the expert only labels (DAgger, Ross et al. 2011): another node (the
learned policy) drives the robot and the expert publishes what it would command from the states
the policy visits, on the intended topics only. Its phase machine is re-synced with the state
every tick (``Expert.resync``: a policy that already holds the cube is told to lift, not to open
and descend), and its streamed target is kept within ``label_max_lead_m`` of the TCP, about the
lead it has when it drives itself.
"""

from __future__ import annotations

import json
import time

from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, String

from avdp_ros.nodes import topics
from avdp_ros.nodes.msgs import pose_from_msg, pose_to_msg, stamp_to_sec
from avdp_ros.nodes.spin import run_node
from avdp_ros.sim.expert import PerturbConfig, TargetPerturbation, make_expert


class ExpertNode(Node):
    def __init__(self, **kwargs):
        super().__init__("avdp_expert", **kwargs)
        self.rate_hz = float(self.declare_parameter("rate_hz", 50.0).value)
        self.base_frame = self.declare_parameter("base_frame", topics.BASE_FRAME).value
        self.input_timeout = float(self.declare_parameter("input_timeout", 0.5).value)
        self.command = bool(self.declare_parameter("command", True).value)  # false: label only (DAgger)
        # label only: the expert's stream is kept within this distance (m) of the measured TCP, the
        # lead it has over the robot when it drives itself (0 = unbounded)
        self.label_lead = float(self.declare_parameter("label_max_lead_m", 0.02).value)
        if self.label_lead < 0.0:
            raise ValueError(f"label_max_lead_m {self.label_lead}: expected >= 0 (0 = unbounded)")
        if not 1.0 <= self.rate_hz <= 1000.0:
            raise ValueError(f"rate_hz {self.rate_hz}: expected 1..1000 Hz")
        # PerturbConfig validates the amplitudes (ValueError names the bad one).
        self.perturb = TargetPerturbation(PerturbConfig(
            pos_amplitude=float(self.declare_parameter("perturb_pos_m", 0.0).value),
            yaw_amplitude=float(self.declare_parameter("perturb_yaw_rad", 0.0).value)))
        self._t_start: float | None = None  # first pose stamp of the episode (perturbation clock)

        self.expert = None
        self.episode = None
        self.object_names: list[str] = []
        self._pose = self._gripper = self._objects = None
        self._seen: dict[str, float] = {}  # input -> monotonic arrival time, for staleness
        self.commands = 0

        if self.command:  # label only: not even a publisher, the policy must be the only commander
            self.pub_target = self.create_publisher(PoseStamped, topics.TARGET_FRAME, topics.COMMAND_QOS)
            self.pub_gripper = self.create_publisher(Float64, topics.GRIPPER_COMMAND, topics.COMMAND_QOS)
        self.pub_intended = self.create_publisher(PoseStamped, topics.INTENDED_TARGET, topics.COMMAND_QOS)
        self.pub_intended_gripper = self.create_publisher(Float64, topics.INTENDED_GRIPPER, topics.COMMAND_QOS)
        self.create_subscription(PoseStamped, topics.CURRENT_POSE, self._on_pose, topics.STATE_QOS)
        self.create_subscription(JointState, topics.GRIPPER_STATE, self._on_gripper, topics.STATE_QOS)
        self.create_subscription(PoseArray, topics.OBJECT_POSES, self._on_objects, topics.STATE_QOS)
        self.create_subscription(String, topics.EPISODE_INFO, self._on_info, topics.LATCHED_QOS)
        self.create_timer(1.0 / self.rate_hz, self._tick)

    def _on_pose(self, msg: PoseStamped) -> None:
        self._pose = (stamp_to_sec(msg.header.stamp), pose_from_msg(msg.pose))
        self._seen["pose"] = time.monotonic()

    def _on_gripper(self, msg: JointState) -> None:
        self._gripper = float(sum(msg.position))
        self._seen["gripper"] = time.monotonic()

    def _on_objects(self, msg: PoseArray) -> None:
        self._objects = [pose_from_msg(p) for p in msg.poses]
        self._seen["objects"] = time.monotonic()

    def _on_info(self, msg: String) -> None:
        info = json.loads(msg.data)
        if info.get("episode") != self.episode:
            self.episode = info.get("episode")
            self.object_names = list(info["object_names"])
            self.expert = make_expert(info["task"])
            self.expert.reset()
            self.perturb.reset(int(info.get("seed", 0)))
            self._t_start = None
            self._objects = None  # poses of the previous episode's objects are meaningless now
            self.get_logger().info(f"episode {self.episode}: expert for task '{info['task']}'")

    def _tick(self) -> None:
        if self.expert is None or self._pose is None or self._gripper is None or self._objects is None:
            return
        now = time.monotonic()
        stale = [k for k in ("pose", "gripper", "objects") if now - self._seen[k] > self.input_timeout]
        if stale:
            # A teleoperator who cannot see lets go of the stick: publish nothing, the
            # controller keeps tracking the last target.
            self.get_logger().warning(f"inputs stale for > {self.input_timeout} s: {stale}; not commanding",
                                   throttle_duration_sec=2.0)
            return
        if len(self._objects) != len(self.object_names):
            return  # object list of a different episode; the next message will match
        t, pose = self._pose
        objects = dict(zip(self.object_names, self._objects))
        if not self.command:  # label mode: the phase the policy's state is in, on a leash
            self.expert.resync(t, pose, self._gripper, objects)
            if self.label_lead > 0.0:
                self.expert.leash(pose, self.label_lead)
        target, width = self.expert.act(t, pose, self._gripper, objects)
        if self._t_start is None:
            self._t_start = t
        stamp = self.get_clock().now().nanoseconds * 1e-9
        self.pub_intended.publish(pose_to_msg(target, self.base_frame, stamp))
        self.pub_intended_gripper.publish(Float64(data=float(width)))
        if self.command:
            self.pub_target.publish(pose_to_msg(self.perturb.apply(target, t - self._t_start), self.base_frame, stamp))
            self.pub_gripper.publish(Float64(data=float(width)))
        self.commands += 1


def main(args=None):
    run_node(ExpertNode, args)


if __name__ == "__main__":
    main()
