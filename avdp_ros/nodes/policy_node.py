"""The real-time policy: cameras + robot state in, a safe stream of Cartesian targets out.

A lifecycle node (`avdp_policy`); with `autostart` (default) it configures and activates itself,
so `ros2 run` / `ros2 launch` / `avdp-run` need no lifecycle manager. Configure validates the
parameters (`control.params`), loads the model (`deploy.load_policy`) and builds the
`control.policy_runner.PolicyRunner` (its docstring tells what the timers and the inference thread
do); activate subscribes to the inputs and starts them, on the node's clock (`use_sim_time` works).
It must be the only publisher on the target topic (checked, reported on /diagnostics).

E-stop: `/avdp/estop` (std_msgs/Bool): true latches, false is ignored. Service `/avdp/estop`
(std_srvs/SetBool): true latches, false clears it (the explicit reset; the plan is dropped and
motion resumes from the held pose with a freshly inferred chunk).
"""

from __future__ import annotations

import json
import sys

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import SetBool

from avdp_ros.control.params import DIAGNOSTICS, PARAMETERS, PLAN, PREDICTED_IMAGE, PolicyParams
from avdp_ros.control.policy_runner import ChunkReport, PolicyRunner
from avdp_ros.deploy.backends import find_model, load_policy
from avdp_ros.nodes import topics
from avdp_ros.nodes.msgs import image_to_msg, pose_from_msg, pose_to_msg, stamp_from_sec, stamp_to_sec
from avdp_ros.nodes.spin import run_node

ESTOP = "/avdp/estop"
CHUNK_TIMING = "/avdp/chunk_timing"  # one DiagnosticArray per inference: raw latency samples, not percentiles
MODEL_HINT = "the 'model' parameter (launch: model:=DIR, avdp-run: --set avdp_policy.model=DIR)"


def _diagnostics(name: str, hardware_id: str, level: str, message: str, values, stamp: float):
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, level=getattr(DiagnosticStatus, level),
                              message=message, values=[KeyValue(key=k, value=v) for k, v in values])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp_from_sec(stamp)
    return msg


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("avdp_policy", **kwargs)
        for name, (default, doc) in PARAMETERS.items():
            # dynamic typing: `-p max_linear_speed:=1` (an int) must not be a type error; every
            # value is checked and converted by PolicyParams with a clear message instead.
            self.declare_parameter(name, default, ParameterDescriptor(description=doc, dynamic_typing=True))
        self.configure_error: str | None = None
        self.runner: PolicyRunner | None = None
        self._pubs: dict[str, object] = {}
        self._timers, self._subs = [], []  # created on activate
        self._estop_entities: tuple = ()
        if self.get_parameter("autostart").value:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                error = self.configure_error or "configure failed (see the log)"
                self.destroy_node()
                raise ValueError(f"avdp_policy: {error}")
            self.trigger_activate()

    # the loaded policy (tools wrap it between configure and activate) and the runner's cores
    policy = property(lambda self: self.runner.policy if self.runner else None,
                      lambda self, policy: setattr(self.runner, "policy", policy))
    scheduler = property(lambda self: self.runner.scheduler)
    filter = property(lambda self: self.runner.filter)
    counters = property(lambda self: self.runner.counters)
    stats = property(lambda self: self.runner.stats)
    _worker = property(lambda self: self.runner.worker if self.runner else None)

    # ================================================================= lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (ValueError, FileNotFoundError) as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            self.runner = None
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers first
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        # The commander's own thread keeps time on the steady clock; under sim time only a timer
        # follows /clock (a sim slower than real time, or paused).
        self._command_thread = self.params.commander == "thread" and not self.get_parameter("use_sim_time").value
        self.runner.start(command_hz=self.params.command_rate_hz if self._command_thread else None,
                          command_priority=self.params.commander_priority)
        self._create_io()
        self.get_logger().info(
            f"active: {self.policy.kind} policy from {self.model_path}, {self.policy.obs_hz:g} Hz "
            f"observations, chunks of {self.chunk_cfg.horizon} executing {self.chunk_cfg.execute_steps}, "
            f"commands at {self.params.command_rate_hz:g} Hz on {topics.TARGET_FRAME}")
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._deactivate()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    on_error = on_shutdown

    def close(self) -> None:
        """Stop the timers and the inference thread (runner / run_node call this before
        destroy_node). Subscriptions stay until destroy_node: the executor may still be spinning."""
        for timer in self._timers:
            timer.cancel()
        if self.runner is not None:
            self.runner.stop()

    def _configure(self) -> None:
        p = PolicyParams.from_values({n: self.get_parameter(n).value for n in PARAMETERS if n != "autostart"})
        self.model_path = path = find_model(p.model, MODEL_HINT)
        if p.torch_threads > 0:
            import torch

            torch.set_num_threads(p.torch_threads)
        try:
            policy = load_policy(p.backend, path, p.device, p.video_steps or None, p.action_steps or None,
                                 **p.backend_options())
        except (ImportError, RuntimeError) as exc:  # missing runtime, provider or GPU: a configure error
            raise ValueError(f"backend '{p.backend}' for model {path}: {exc}") from exc
        if p.action_temperature >= 0:
            policy.action_temperature = p.action_temperature
        cores = p.cores(policy, path, topics.CURRENT_POSE, topics.GRIPPER_STATE)
        self.params, self.ingest_cfg, self.chunk_cfg, self.limits = p, *cores[:3]
        self.runner = PolicyRunner.build(
            policy, cores, p, clock=self._now, send_command=self._send_command, on_chunk=self._publish_chunk,
            warn=self._warn, error=lambda text: self.get_logger().error(text, throttle_duration_sec=2.0))
        self.camera_info: dict[str, tuple[int, int]] = {}
        diagnostics = p.diagnostics_rate_hz > 0
        for key, kind, topic, qos, wanted in (
                ("target", PoseStamped, topics.TARGET_FRAME, topics.COMMAND_QOS, True),
                ("gripper", Float64, topics.GRIPPER_COMMAND, topics.COMMAND_QOS, True),
                ("plan", PathMsg, PLAN, topics.SENSOR_QOS, p.publish_plan),
                ("predicted", Image, PREDICTED_IMAGE, topics.SENSOR_QOS, p.publish_predicted),
                ("diagnostics", DiagnosticArray, DIAGNOSTICS, 10, diagnostics),
                # /diagnostics only carries rolling percentiles; evaluators (avdp-eval-ros) need every sample
                ("chunk_timing", DiagnosticArray, CHUNK_TIMING, topics.STATE_QOS, diagnostics)):
            if wanted:
                self._pubs[key] = self.create_lifecycle_publisher(kind, topic, qos)
        # The e-stop exists from configure on: latching it before activation holds from the start.
        self._estop_entities = (self.create_subscription(Bool, ESTOP, self._on_estop_msg, topics.STATE_QOS),
                                self.create_service(SetBool, ESTOP, self._on_estop_srv))
        self.get_logger().info(f"configured: {policy.kind} model {path} ({p.backend} on {p.device}), "
                               f"cameras {self.ingest_cfg.cameras}")

    def _teardown(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs.clear()
        for entity, destroy in zip(self._estop_entities, (self.destroy_subscription, self.destroy_service)):
            destroy(entity)
        self._estop_entities = ()
        self.runner = None

    def _create_io(self) -> None:
        sub, sensor, state = self.create_subscription, topics.SENSOR_QOS, topics.STATE_QOS
        for name, topic in self.ingest_cfg.cameras.items():
            self._subs.append(sub(Image, topic, lambda m, n=name: self._on_image(n, m), sensor))
            self._subs.append(sub(CameraInfo, topics.info_topic(topic), lambda m, n=name: self._on_info(n, m),
                                  sensor))
        self._subs += [sub(PoseStamped, topics.CURRENT_POSE, self._on_pose, topics.FEEDBACK_QOS),
                       sub(JointState, topics.GRIPPER_STATE, self._on_gripper, state),
                       sub(String, topics.EPISODE_INFO, self._on_episode_info, topics.LATCHED_QOS)]
        # All of these run on the one executor thread (nodes/spin.py); inference and (by default)
        # the commander have their own.
        timer, p = self.create_timer, self.params
        self._timers.append(timer(1.0 / self.policy.obs_hz, lambda: self.runner.on_obs_tick(self._now())))
        if not self._command_thread:
            self._timers.append(timer(1.0 / p.command_rate_hz, lambda: self.runner.on_command_tick(self._now())))
        if p.diagnostics_rate_hz > 0:
            self._timers.append(timer(1.0 / p.diagnostics_rate_hz, self._publish_diagnostics))

    def _deactivate(self) -> None:
        self.close()
        for timer in self._timers:
            self.destroy_timer(timer)
        for subscription in self._subs:
            self.destroy_subscription(subscription)
        self._timers.clear()
        self._subs.clear()

    # ================================================================= messages in
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _warn(self, text: str, period: float = 2.0) -> None:
        self.get_logger().warning(text, throttle_duration_sec=period)

    def _on_image(self, camera: str, msg: Image) -> None:
        self.runner.add_image(camera, stamp_to_sec(msg.header.stamp), msg, self._now())

    def _on_info(self, camera: str, msg: CameraInfo) -> None:
        size = (int(msg.height), int(msg.width))
        if self.camera_info.get(camera) != size:
            self.camera_info[camera] = size
            fx, fy, cx, cy = (round(float(msg.k[i]), 1) for i in (0, 4, 2, 5))
            self.get_logger().info(f"camera '{camera}': {size[1]}x{size[0]}, fx {fx} fy {fy} cx {cx} cy {cy}")

    def _on_pose(self, msg: PoseStamped) -> None:
        stamp, pose = stamp_to_sec(msg.header.stamp), pose_from_msg(msg.pose)
        self.runner.add_pose(stamp, pose, msg.header.frame_id, self._now())

    def _on_gripper(self, msg: JointState) -> None:
        width = float(sum(msg.position)) if len(msg.position) else None  # total finger opening
        self.runner.add_gripper(stamp_to_sec(msg.header.stamp), width, self._now())

    def _on_episode_info(self, msg: String) -> None:
        try:
            info = json.loads(msg.data)
        except json.JSONDecodeError as exc:
            self._warn(f"{topics.EPISODE_INFO}: not JSON ({exc}); ignored")
            return
        if self.runner.on_episode_info(info):
            self.get_logger().info(f"episode {self.runner.episode}: \"{self.runner.instruction}\"")

    def _on_estop_msg(self, msg: Bool) -> None:
        if msg.data:
            self._latch_estop(f"topic {ESTOP}")
        elif self.runner.estopped:
            self._warn(f"{ESTOP} false ignored: the e-stop is latched; clear it with the service {ESTOP} "
                       "(std_srvs/SetBool, data: false)")

    def _on_estop_srv(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if request.data:
            self._latch_estop(f"service {ESTOP}")
            response.message = "e-stop latched: holding the last command"
        elif self.runner.clear_estop():
            self.get_logger().warning("e-stop cleared: resuming from the held pose with a fresh plan")
            response.message = "e-stop cleared"
        else:
            response.message = "e-stop was not latched"
        response.success = True
        return response

    def _latch_estop(self, reason: str) -> None:
        if self.runner.estop(reason):
            self.get_logger().error(f"E-STOP latched ({reason}): holding the last command until "
                                    f"{ESTOP} (std_srvs/SetBool) is called with false")

    # ================================================================= messages out
    def _send_command(self, pose, width: float, now: float) -> None:
        self._pubs["target"].publish(pose_to_msg(pose, self.params.base_frame, now))
        self._pubs["gripper"].publish(Float64(data=float(width)))

    def _publish_chunk(self, r: ChunkReport) -> None:
        """On the inference thread, per inference: its timing on CHUNK_TIMING (level ERROR with the
        reason when the chunk was refused), the new plan, the first predicted frame."""
        if "chunk_timing" in self._pubs:
            level, message = ("ERROR", r.error) if r.error else ("OK", f"kept {r.kept}, dropped {r.dropped}")
            self._pubs["chunk_timing"].publish(_diagnostics("avdp_policy/chunk", str(self.model_path), level,
                                                            message, r.values().items(), r.arrival))
        frame = self.params.base_frame
        if r.waypoints is not None and "plan" in self._pubs:
            msg = PathMsg()
            msg.header.frame_id, msg.header.stamp = frame, stamp_from_sec(r.arrival)
            msg.poses = [pose_to_msg(pose, frame, t) for t, pose in zip(r.waypoints[0], r.waypoints[1])]
            self._pubs["plan"].publish(msg)
        if r.predicted is not None and "predicted" in self._pubs:
            self._pubs["predicted"].publish(image_to_msg(r.predicted[0], "avdp_predicted", r.predicted[1]))

    def _publish_diagnostics(self) -> None:
        writers = self.count_publishers(self._pubs["target"].topic_name)  # the remapped name
        values = self.runner.diagnostics() + [("publishers_on_target_frame", str(writers))]
        level, message = self.runner.status()
        if writers > 1 and not self.runner.estopped:
            level = "ERROR"
            message = f"{writers} publishers on {topics.TARGET_FRAME}: expected only avdp_policy"
            self._warn(message)
        self._pubs["diagnostics"].publish(_diagnostics("avdp_policy", str(self.model_path), level, message,
                                                       values, self._now()))


def main(args=None):
    run_node(PolicyNode, args)


if __name__ == "__main__":
    sys.exit(main())
