"""The policy node over real DDS: parameter / model errors at configure, and a closed loop with
the MuJoCo bridge (sim time) driven by a tiny random-weight checkpoint: commands at the commander
rate, inside the workspace and the speed limits, chunks planned again and again; a latched e-stop
holds until the explicit reset; a silent camera stops planning and the commands hold."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (ROS 2 graph tests need it)")
pytest.importorskip("mujoco", reason="mujoco is not installed")

from conftest import tiny_idm_checkpoint, wait_until  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from nav_msgs.msg import Path as PathMsg  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from avdp_ros.geometry import quat_conj, quat_mul, quat_to_axis_angle  # noqa: E402
from avdp_ros.nodes import topics  # noqa: E402
from avdp_ros.nodes.msgs import pose_from_msg, stamp_to_sec  # noqa: E402
from avdp_ros.nodes.policy_node import (  # noqa: E402
    DIAGNOSTICS,
    ESTOP,
    PARAMETERS,
    PLAN,
    PREDICTED_IMAGE,
    PolicyNode,
)
from avdp_ros.nodes.runner import Stack, default_config, ros_args  # noqa: E402

RELAY = "/test_relay/wrist/image_raw"  # the policy's wrist camera, fed by the probe: silenced at will
RATE_HZ = 100.0  # the default is 200; half keeps a loaded 2-core CI machine (GIL shared with the sim) on time


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_idm_checkpoint(tmp_path_factory.mktemp("policy_node"))


def test_config_documents_every_parameter():
    node_params = yaml.safe_load(default_config("policy").read_text())["avdp_policy"]["ros__parameters"]
    assert set(node_params) == set(PARAMETERS)
    for name, value in node_params.items():
        assert value == PARAMETERS[name][0], f"config/policy.yaml {name}: {value} != node default"


@pytest.mark.parametrize("params, message", [
    ({"execute_steps": 9}, r"execute_steps 9 > horizon 4 of the model"),
    ({"backend": "onnx"}, r"backend 'onnx': expected one of torch"),
    ({"model": "/nonexistent/avdp_ckpt"}, r"model checkpoint /nonexistent/avdp_ckpt does not exist: set the 'model'"),
    ({"command_rate_hz": 5000.0}, r"command_rate_hz = 5000.0: expected a finite number in \[1.0, 1000.0\]"),
    ({"blend": "cubic"}, r"blend = 'cubic': expected one of none, linear"),
])
def test_configure_refuses_bad_parameters(rclpy_context, checkpoint, params, message):
    path, _ = checkpoint
    args = ros_args(default_config("policy"), {"model": str(path), "autostart": False, **params})
    node = PolicyNode(cli_args=args, context=rclpy_context)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert re.search(message, node.configure_error), node.configure_error
        assert node.policy is None
        # a good configuration afterwards works (the failed attempt left nothing behind)
        node.set_parameters([Parameter(k, value=PARAMETERS[k][0] if k != "model" else str(path))
                             for k in params])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.configure_error
    finally:
        node.destroy_node()


def test_autostart_with_a_missing_model_fails_at_construction(rclpy_context):
    with pytest.raises(ValueError, match="model checkpoint /nonexistent/x does not exist"):
        PolicyNode(cli_args=ros_args(default_config("policy"), {"model": "/nonexistent/x"}), context=rclpy_context)


def test_lifecycle_transitions(rclpy_context, checkpoint):
    path, _ = checkpoint
    node = PolicyNode(cli_args=ros_args(default_config("policy"), {"model": str(path), "autostart": False}),
                      context=rclpy_context)
    try:
        assert node.policy is None and node.count_publishers(topics.TARGET_FRAME) == 0
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node._worker.is_alive() and node.count_publishers(topics.TARGET_FRAME) == 1
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node._worker is None
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.policy is None and node.count_publishers(topics.TARGET_FRAME) == 0
    finally:
        node.destroy_node()


class Probe(Node):
    """Watches the policy's outputs, relays the wrist camera (until told not to), drives the e-stop."""

    def __init__(self, context):
        super().__init__("policy_probe", context=context)
        self.commands: list[PoseStamped] = []
        self.plans: list[PathMsg] = []
        self.diagnostics: list = []
        self.predicted: list[Image] = []
        self.relay_on = True
        self.create_subscription(PoseStamped, topics.TARGET_FRAME, self.commands.append, topics.COMMAND_QOS)
        self.create_subscription(PathMsg, PLAN, self.plans.append, topics.SENSOR_QOS)
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, lambda m: self.diagnostics.extend(m.status), 10)
        self.create_subscription(Image, PREDICTED_IMAGE, self.predicted.append, topics.SENSOR_QOS)
        self.relay = self.create_publisher(Image, RELAY, topics.SENSOR_QOS)
        self.create_subscription(Image, topics.WRIST_IMAGE, self._relay, topics.SENSOR_QOS)
        self.estop = self.create_publisher(Bool, ESTOP, topics.STATE_QOS)
        self.estop_srv = self.create_client(SetBool, ESTOP)

    def _relay(self, msg: Image) -> None:
        if self.relay_on:
            self.relay.publish(msg)

    def after(self, t: float) -> list[tuple[float, np.ndarray]]:
        """(stamp, pose7) of the commands stamped after t (sim time)."""
        out = [(stamp_to_sec(m.header.stamp), pose_from_msg(m.pose)) for m in list(self.commands)]
        return [(s, p) for s, p in out if s > t]


@pytest.fixture(scope="module")
def graph(checkpoint):
    """Sim bridge + policy node on sim time (half real time), in one process like `avdp-run policy`."""
    path, _ = checkpoint
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    overrides = {
        "avdp_sim_bridge": {"task": "push", "seed": 4, "real_time_factor": 0.5},
        "avdp_policy": {"model": str(path), "torch_threads": 1, "command_rate_hz": RATE_HZ, "execute_steps": 2,
                        "camera_topics": [topics.CAMERA_IMAGE, RELAY], "publish_predicted": True},
    }
    stack = Stack(["sim_bridge", "policy"], default_config("policy"), overrides, use_sim_time=True, context=ctx)
    probe = Probe(ctx)
    stack.executor.add_node(probe)
    try:
        yield stack.nodes["policy"], probe
    finally:
        stack.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown(context=ctx)


def test_closed_loop_streams_safe_commands_at_rate(graph):
    policy, probe = graph
    limits = policy.limits
    wait_until(lambda: len(probe.plans) >= 2, 40.0, what="two planned chunks (/avdp/plan)")
    t0 = stamp_to_sec(probe.plans[0].header.stamp)
    window = 2.0  # s of sim time
    wait_until(lambda: probe.after(t0 + window), 40.0, what=f"{window} s of commands after the first plan")
    cmds = [(s, p) for s, p in probe.after(t0) if s <= t0 + window]
    assert len(cmds) >= 0.8 * RATE_HZ * window, f"{len(cmds)} commands in {window} s of sim time"
    stamps = np.array([s for s, _ in cmds])
    poses = np.stack([p for _, p in cmds])
    assert np.all(np.diff(stamps) > 0)
    assert np.all(poses[:, :3] >= np.array(limits.workspace_min) - 1e-9)
    assert np.all(poses[:, :3] <= np.array(limits.workspace_max) + 1e-9)
    dt = np.diff(stamps)
    speed = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1) / dt
    assert speed.max() <= limits.max_linear_speed * (1 + 1e-6), f"linear speed {speed.max():.4f} m/s"
    turn = np.array([np.linalg.norm(quat_to_axis_angle(quat_mul(b, quat_conj(a))))
                     for a, b in zip(poses[:-1, 3:], poses[1:, 3:])]) / dt
    assert turn.max() <= limits.max_angular_speed * (1 + 1e-6), f"angular speed {turn.max():.4f} rad/s"
    travelled = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1).sum()
    assert travelled > 1e-3, "the plan never moved the commanded pose"
    for plan in probe.plans[:2]:
        assert plan.header.frame_id == topics.BASE_FRAME and len(plan.poses) >= 2
        assert np.all(np.diff([stamp_to_sec(p.header.stamp) for p in plan.poses]) > 0)
    # every chunk after the first starts with the actions committed while it was computed (RTC)
    wait_until(lambda: policy.counters["prefixed_chunks"] >= 1, 20.0, what="a prefix-conditioned chunk")
    assert policy.counters["prefixed_chunks"] <= policy.counters["inferences"]
    # /diagnostics reports latency per stage, the safety counters and the e-stop state
    wait_until(lambda: any(any(kv.key == "latency.idm_ms.p99" for kv in s.values) for s in probe.diagnostics),
               20.0, what="diagnostics with inference latency")
    values = {kv.key: kv.value for kv in probe.diagnostics[-1].values}
    for key in ("latency.tokenizer_ms.p50", "latency.infer_total_ms.p90", "latency.ingest_ms.p50",
                "latency.obs_to_chunk_ms.p99", "latency.chunk_age_ms.p50", "safety.speed", "estop"):
        assert key in values, key
    assert values["publishers_on_target_frame"] == "1" and values["estop"] == "clear"
    # the first predicted frame, both 16x16 tiny-tokenizer cameras side by side
    wait_until(lambda: probe.predicted, 10.0, what="a predicted image")
    assert (probe.predicted[-1].height, probe.predicted[-1].width, probe.predicted[-1].encoding) == (16, 32, "rgb8")
    period = policy.stats["command_period_ms"].percentiles()
    print(f"{len(cmds)} commands in {window} s sim; plans {len(probe.plans)}; wall command period "
          f"p50/p90/p99 {period} ms; inference total ms {policy.stats['infer_total_ms'].percentiles()}")


def _held(cmds: list[tuple[float, np.ndarray]]) -> bool:
    return len(cmds) > 1 and all(np.array_equal(p, cmds[0][1]) for _, p in cmds)


def test_estop_latches_until_the_explicit_reset(graph):
    policy, probe = graph
    n_plans = len(probe.plans)
    wait_until(lambda: len(probe.plans) > n_plans, 30.0, what="a plan while running")
    probe.estop.publish(Bool(data=True))
    wait_until(lambda: policy.filter.estopped, 10.0, what="the e-stop to latch")
    t_latch = policy._now()
    wait_until(lambda: len(probe.after(t_latch + 0.5)) >= 10, 30.0, what="commands 0.5 s after the latch")
    probe.estop.publish(Bool(data=False))  # the topic cannot clear it
    t_false = policy._now()
    wait_until(lambda: len(probe.after(t_false + 0.3)) >= 10, 30.0, what="commands after estop=false on the topic")
    assert policy.filter.estopped
    held = probe.after(t_latch)
    assert _held(held), "commands moved while the e-stop was latched"

    assert probe.estop_srv.wait_for_service(timeout_sec=10.0)
    future = probe.estop_srv.call_async(SetBool.Request(data=False))
    wait_until(future.done, 10.0, what="the e-stop reset service")
    assert future.result().success and "cleared" in future.result().message
    t_clear = policy._now()
    wait_until(lambda: any(not np.array_equal(p, held[0][1]) for _, p in probe.after(t_clear)), 30.0,
               what="motion to resume after the reset")


def test_silent_camera_stops_planning_and_commands_hold(graph):
    policy, probe = graph
    hold_s = policy.chunk_cfg.hold_s
    try:
        n_plans = len(probe.plans)
        wait_until(lambda: len(probe.plans) > n_plans, 30.0, what="a plan while running")
        probe.relay_on = False

        def names_silent_wrist():
            return [s for s in probe.diagnostics if "silent" in s.message and f"wrist ({RELAY})" in s.message]

        wait_until(names_silent_wrist, 30.0, what="diagnostics naming the silent wrist camera")
        status = names_silent_wrist()[-1]
        assert status.level == status.WARN
        assert int({kv.key: kv.value for kv in status.values}["ingest.not_ready.wrist.silent"]) > 0
        wait_until(lambda: not policy.scheduler.inference_in_flight, 10.0, what="the last inference to end")
        chunks, plans = policy.scheduler.chunks_added, len(probe.plans)
        plan_end = policy.scheduler.plan_end()
        t_hold = max(plan_end, policy._now()) + hold_s + 0.05
        wait_until(lambda: probe.after(t_hold + 0.5), 30.0, what="0.5 s of commands after the plan ran out")
        held = probe.after(t_hold)
        assert _held(held), "commands moved after the plan ran out"
        assert len(held) >= 0.8 * RATE_HZ * 0.5
        assert policy.scheduler.chunks_added == chunks and len(probe.plans) == plans, "planned without the wrist camera"
    finally:
        probe.relay_on = True
    # and it recovers once the camera is back
    n_plans = len(probe.plans)
    wait_until(lambda: len(probe.plans) > n_plans, 30.0, what="planning again once the camera is back")

