"""MuJoCo Panda that impersonates the robot on the real robot's topics (README, "ROS interface").

Subscribes: target_frame (PoseStamped, tracked by the in-sim Cartesian impedance controller),
/gripper/command (Float64 width, m). Publishes: both cameras + camera_info (rgb8, 30 Hz),
current_pose, /gripper/joint_states, /avdp/sim/object_poses (privileged state for the scripted
expert), /avdp/episode_info (latched JSON), /clock when use_sim_time is set.
Service: /avdp/sim/reset (Trigger) starts a new episode with the `seed` parameter, then
increments it, so consecutive resets give seed, seed+1, ... (The episode shown at start-up uses
`seed` too, without incrementing it: the first reset gives a fresh episode with the same seed.)
Setting the parameter (`ros2 param set`, SetParameters) chooses the seed of the next reset.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")

from geometry_msgs.msg import PoseArray, PoseStamped  # noqa: E402
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState  # noqa: E402
from std_msgs.msg import Float64, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from avdp_ros.nodes import topics  # noqa: E402
from avdp_ros.nodes.msgs import (  # noqa: E402
    camera_info_msg,
    fill_pose,
    image_to_msg,
    pose_from_msg,
    pose_to_msg,
    stamp_from_sec,
)
from avdp_ros.nodes.spin import run_node  # noqa: E402
from avdp_ros.sim.env import PandaSim, SimConfig  # noqa: E402
from avdp_ros.sim.loop import SimLoop  # noqa: E402
from avdp_ros.validation import check_pose, check_width  # noqa: E402

CAMERAS = {  # sim camera name -> (image topic, info topic, optical frame id)
    "camera": (topics.CAMERA_IMAGE, topics.CAMERA_INFO, "camera_color_optical_frame"),
    "wrist": (topics.WRIST_IMAGE, topics.WRIST_INFO, "wrist_camera_color_optical_frame"),
}


class SimBridgeNode(Node):
    def __init__(self, **kwargs):
        super().__init__("avdp_sim_bridge", **kwargs)
        p = self.declare_parameter
        self.task = p("task", "push").value
        self.seed = int(p("seed", 0).value)
        width = int(p("image_width", 128).value)
        height = int(p("image_height", 128).value)
        camera_hz = float(p("camera_rate_hz", 30.0).value)
        pose_hz = float(p("pose_rate_hz", 200.0).value)
        gripper_hz = float(p("gripper_rate_hz", 100.0).value)
        objects_hz = float(p("object_rate_hz", 50.0).value)
        rtf = float(p("real_time_factor", 1.0).value)
        physics_dt = float(p("physics_dt", SimConfig.physics_dt).value)
        look = p("appearance", SimConfig.appearance).value
        self.base_frame = p("base_frame", topics.BASE_FRAME).value
        self.sim_time = bool(self.get_parameter("use_sim_time").value)

        # Stamps must come from one clock: in real time they are wall time (clock_start = now),
        # faster or slower than real time only sim time on /clock makes sense.
        if rtf != 1.0 and not self.sim_time:
            raise ValueError(
                f"real_time_factor {rtf} needs use_sim_time:=true (stamps are sim time then); "
                "expected 1.0 when stamping with wall time")
        self.sim = PandaSim(SimConfig(task=self.task, image_width=width, image_height=height,
                                      physics_dt=physics_dt, appearance=look))
        clock_start = 0.0 if self.sim_time else time.time()
        self.loop = SimLoop(self.sim, real_time_factor=rtf, clock_start=clock_start, wall_locked=not self.sim_time)
        # The pacing thread sleeps a few ms at a time; with Python's default 5 ms GIL switch
        # interval it can wake up late behind busy executor threads in the same process.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self.episode = 0
        self.info: dict = {}
        self.rejected = 0
        self._last_success = None

        self.pub_pose = self.create_publisher(PoseStamped, topics.CURRENT_POSE, topics.STATE_QOS)
        self.pub_joints = self.create_publisher(JointState, topics.GRIPPER_STATE, topics.STATE_QOS)
        self.pub_objects = self.create_publisher(PoseArray, topics.OBJECT_POSES, topics.STATE_QOS)
        self.pub_info = self.create_publisher(String, topics.EPISODE_INFO, topics.LATCHED_QOS)
        self.pub_cams = {
            name: (self.create_publisher(Image, img, topics.SENSOR_QOS),
                   self.create_publisher(CameraInfo, info, topics.SENSOR_QOS), frame)
            for name, (img, info, frame) in CAMERAS.items()
        }
        self.pub_clock = self.create_publisher(Clock, "/clock", 10) if self.sim_time else None

        self.create_subscription(PoseStamped, topics.TARGET_FRAME, self._on_target, topics.COMMAND_QOS)
        self.create_subscription(Float64, topics.GRIPPER_COMMAND, self._on_gripper, topics.COMMAND_QOS)
        # The reset service blocks until the loop thread has reset. Its own group keeps it off the
        # other callbacks only under a multi-threaded executor (threads > 1); with the default one
        # thread, commands wait for the reset to finish.
        self.create_service(Trigger, topics.SIM_RESET, self._on_reset,
                            callback_group=MutuallyExclusiveCallbackGroup())

        self.loop.add_stream("pose", pose_hz, self._publish_pose)
        self.loop.add_stream("gripper", gripper_hz, self._publish_gripper)
        self.loop.add_stream("objects", objects_hz, self._publish_objects)
        self.loop.add_stream("cameras", camera_hz, self._publish_cameras)
        self.loop.add_stream("success", 10.0, self._check_success)
        if self.pub_clock is not None:
            self.loop.add_stream("clock", 1000.0, self._publish_clock)

        # The first episode is reset before the loop thread starts, so no stream ever sees a
        # sim that was never reset.
        self._reset_episode(self.loop.reset_now)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim_loop", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"sim bridge up: task '{self.task}', {width}x{height} cameras at {camera_hz:g} Hz, "
            f"pose at {pose_hz:g} Hz, physics dt {physics_dt * 1e3:g} ms, real-time factor {rtf:g}, "
            f"stamps from {'sim time (/clock)' if self.sim_time else 'wall time'}")

    # ----- loop thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.loop.run(self._stop)
        except Exception as exc:  # noqa: BLE001 - a dead sim must be loud, not silent
            if not self.context.ok():
                return  # Ctrl-C shut the context down under a publish: a normal exit
            self.get_logger().fatal(f"sim loop crashed: {exc!r}")
            raise
        finally:
            # GL contexts belong to the thread that made them: release them here, not in close().
            self.sim.close()

    def _publish_pose(self, t: float) -> None:
        self.pub_pose.publish(pose_to_msg(self.sim.ee_pose(), self.base_frame, t))

    def _publish_gripper(self, t: float) -> None:
        msg = JointState()
        msg.header.stamp = stamp_from_sec(t)
        msg.header.frame_id = self.base_frame
        msg.name = ["panda_finger_joint1", "panda_finger_joint2"]
        msg.position = [float(v) for v in self.sim.finger_positions()]
        msg.velocity = [float(v) for v in self.sim.finger_velocities()]
        self.pub_joints.publish(msg)

    def _publish_objects(self, t: float) -> None:
        msg = PoseArray()
        msg.header.stamp = stamp_from_sec(t)
        msg.header.frame_id = self.base_frame
        poses = self.sim.object_poses()
        for name in self.info.get("object_names", list(poses)):
            pose = PoseStamped().pose
            msg.poses.append(fill_pose(pose, poses[name]))
        self.pub_objects.publish(msg)

    def _publish_cameras(self, t: float) -> None:
        for name, (pub_img, pub_info, frame) in self.pub_cams.items():
            rgb = self.sim.render(name)
            fx, fy, cx, cy = self.sim.camera_intrinsics(name)
            pub_img.publish(image_to_msg(rgb, frame, t))
            pub_info.publish(camera_info_msg(rgb.shape[1], rgb.shape[0], fx, fy, cx, cy, frame, t))

    def _publish_clock(self, t: float) -> None:
        self.pub_clock.publish(Clock(clock=stamp_from_sec(t)))

    def _check_success(self, t: float) -> None:
        success = bool(self.sim.success())
        if success != self._last_success:
            self._last_success = success
            self.info["success"] = success
            self.info["stamp"] = t
            self.pub_info.publish(String(data=json.dumps(self.info)))

    # ----- ROS callbacks ----------------------------------------------------------------
    def _on_target(self, msg: PoseStamped) -> None:
        pose = pose_from_msg(msg.pose)
        err = check_pose(pose, msg.header.frame_id, self.base_frame, topics.TARGET_FRAME)
        if err is not None:
            self.rejected += 1
            self.get_logger().warning(f"rejected target ({self.rejected} so far): {err}; holding the last target",
                                   throttle_duration_sec=1.0)
            return
        self.loop.set_target(pose)  # the in-sim controller clamps it to its workspace

    def _on_gripper(self, msg: Float64) -> None:
        err = check_width(msg.data, 0.0, 0.08, topics.GRIPPER_COMMAND)
        if err is not None:
            self.rejected += 1
            self.get_logger().warning(f"rejected gripper command: {err}", throttle_duration_sec=1.0)
            return
        self.loop.set_gripper(msg.data)

    def _on_reset(self, request, response):
        try:
            self._reset_episode()
            response.success, response.message = True, json.dumps(self.info)
        except Exception as exc:  # noqa: BLE001 - the caller gets the reason
            response.success, response.message = False, str(exc)
        return response

    def _reset_episode(self, reset=None) -> None:
        # The parameter, not a copy: `ros2 param set /avdp_sim_bridge seed N` picks the next episode's seed.
        seed = int(self.get_parameter("seed").value)
        info = (reset or self.loop.request_reset)(seed)
        self.episode += 1
        if reset is None:  # the start-up episode is a preview: the first /avdp/sim/reset reuses its seed
            self.seed = seed + 1
            self.set_parameters([Parameter("seed", value=self.seed)])
        self._last_success = None
        # The reset's own stamp (sim time 0 of the episode): the loop may have stepped on since.
        # sim.time is read first, so a step in between errs late, after the reset, never before it.
        sim_time = self.sim.time
        self.info = {**info, "episode": self.episode, "success": False, "stamp": self.loop.clock - sim_time}
        self.pub_info.publish(String(data=json.dumps(self.info)))
        self.get_logger().info(f"episode {self.episode}: task '{info['task']}', seed {seed}: "
                               f"\"{info['instruction']}\"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self.loop.overruns:
            self.get_logger().warning(f"the sim fell > 50 ms behind real time {self.loop.overruns} times "
                                   "(CPU too slow for this camera size/rate?)")


def main(args=None):
    run_node(SimBridgeNode, args)


if __name__ == "__main__":
    main()
