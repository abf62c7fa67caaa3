"""Human teleop: sensor_msgs/Joy (SpaceMouse via spacenav_node, or a gamepad via joy_node) and/or
the keyboard of the terminal it runs in -> target poses on the robot's command topic.

Takes over from the robot's current pose (no jump), streams at `rate_hz`, and starts/stops
episode recordings through the recorder's services on a button or key.
"""

from __future__ import annotations

import os
import select
import sys
import threading

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Joy
from std_msgs.msg import Float64
from std_srvs.srv import Trigger

from avdp_ros.control.teleop import KEY_HELP, TeleopConfig, TeleopMapper
from avdp_ros.nodes import topics
from avdp_ros.nodes.msgs import pose_from_msg, pose_to_msg
from avdp_ros.nodes.spin import run_node


class TeleopNode(Node):
    def __init__(self, **kwargs):
        super().__init__("avdp_teleop", **kwargs)
        p = self.declare_parameter
        self.rate_hz = float(p("rate_hz", 50.0).value)
        self.base_frame = p("base_frame", topics.BASE_FRAME).value
        keyboard = p("keyboard", "auto").value  # auto | true | false
        cfg = TeleopConfig(
            linear_speed=float(p("linear_speed", 0.15).value),
            angular_speed=float(p("angular_speed", 0.8).value),
            deadzone=float(p("deadzone", 0.08).value),
            axes=tuple(int(a) for a in p("axes", [0, 1, 2, 3, 4, 5]).value),
            axis_signs=tuple(float(s) for s in p("axis_signs", [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).value),
            button_gripper=int(p("button_gripper", 0).value),
            button_record=int(p("button_record", 1).value),
            workspace_min=tuple(p("workspace_min", [0.2, -0.45, 0.02]).value),
            workspace_max=tuple(p("workspace_max", [0.8, 0.45, 0.6]).value),
        )
        self.mapper = TeleopMapper(cfg)
        self._lock = threading.Lock()
        self.recording = False

        self.pub_target = self.create_publisher(PoseStamped, topics.TARGET_FRAME, topics.COMMAND_QOS)
        self.pub_gripper = self.create_publisher(Float64, topics.GRIPPER_COMMAND, topics.COMMAND_QOS)
        # best effort, as the policy reads it: matches reliable and best-effort controllers (topics.FEEDBACK_QOS)
        self.create_subscription(PoseStamped, topics.CURRENT_POSE, self._on_pose, topics.FEEDBACK_QOS)
        self.create_subscription(Joy, topics.JOY, self._on_joy, topics.SENSOR_QOS)
        self.cli_start = self.create_client(Trigger, topics.RECORD_START)
        self.cli_stop = self.create_client(Trigger, topics.RECORD_STOP)
        self.create_timer(1.0 / self.rate_hz, self._tick)

        self._stop = threading.Event()
        use_kb = sys.stdin.isatty() if keyboard == "auto" else keyboard in ("true", True)
        if use_kb:
            threading.Thread(target=self._keyboard, name="keyboard", daemon=True).start()
            self.get_logger().info(KEY_HELP)

    def _on_pose(self, msg: PoseStamped) -> None:
        with self._lock:
            if self.mapper.target is None:
                self.mapper.reset(pose_from_msg(msg.pose))
                self.get_logger().info("teleop engaged at the current end-effector pose")

    def _on_joy(self, msg: Joy) -> None:
        with self._lock:
            events = self.mapper.joy(list(msg.axes), list(msg.buttons))
        self._handle(events)

    def _keyboard(self) -> None:
        import termios
        import tty

        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while not self._stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.1)
                if ready:
                    ch = os.read(fd, 1).decode(errors="ignore")
                    with self._lock:
                        events = self.mapper.key(ch)
                    self._handle(events)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)

    def _handle(self, events: list[str]) -> None:
        if "toggle_record" in events:
            client = self.cli_stop if self.recording else self.cli_start
            if not client.service_is_ready():
                self.get_logger().warning(f"recorder service {client.srv_name} not available; is the recorder running?")
                return
            client.call_async(Trigger.Request()).add_done_callback(self._on_record_reply)
            self.recording = not self.recording

    def _on_record_reply(self, future) -> None:
        res = future.result()
        (self.get_logger().info if res.success else self.get_logger().error)(f"recorder: {res.message}")

    def _tick(self) -> None:
        with self._lock:
            out = self.mapper.step(1.0 / self.rate_hz)
        if out is None:
            return
        pose, width = out
        self.pub_target.publish(pose_to_msg(pose, self.base_frame, self.get_clock().now().nanoseconds * 1e-9))
        self.pub_gripper.publish(Float64(data=float(width)))

    def close(self) -> None:
        self._stop.set()


def main(args=None):
    run_node(TeleopNode, args)


if __name__ == "__main__":
    main()
