"""The real-time policy: cameras + robot state in, a safe stream of Cartesian targets out.

A lifecycle node (`avdp_policy`). With `autostart` (default) it configures and activates itself
at start-up, so `ros2 run` / `ros2 launch` / `avdp-run` need no lifecycle manager; with
`autostart: false` a manager (or `ros2 lifecycle set`) drives it.

- configure: read and validate every parameter, load the model (`backend` + `model`), build the
  pure cores (`ingest.ObservationAssembler`, `control.chunks.ChunkScheduler`,
  `control.safety.SafetyFilter`). Any problem leaves the node unconfigured with a clear error.
- activate: subscribe to both cameras (best effort, depth 1) + camera_info, the ee pose, the
  gripper joint states and /avdp/episode_info; start the observation timer, the inference thread,
  the commander timer and /diagnostics.

Three activities, timed on the node's clock (so `use_sim_time` works everywhere):

- every 1 / obs_hz the observation timer assembles a time-aligned observation (stamps, not
  arrival) and queues it for the inference thread, marked "infer" when the scheduler says a
  new chunk must start now (measured latency) and "observe" otherwise, so the model's frame
  history is spaced at obs_hz exactly as in training;
- the inference thread (plain Python thread: torch releases the GIL in its kernels) runs
  `policy.infer` / `policy.observe`; a new chunk is stamped from its observation and merged into
  the plan (late actions dropped, overlap blended). With `prefix_conditioning` the call gets the
  plan's actions that will run anyway before the chunk can land (``ChunkScheduler.committed``)
  and the model starts its chunk with them (real-time chunking), when the backend supports it;
- the commander timer (`command_rate_hz`, own callback group) samples the plan and passes it
  through the safety filter (workspace box, speed / acceleration limits, NaN rejection, hold when
  stale, latched e-stop), then publishes the target pose and gripper width. This node must be
  the only publisher on the target topic (checked, reported on /diagnostics).

E-stop: `/avdp/estop` (std_msgs/Bool): true latches, false is ignored. Service `/avdp/estop`
(std_srvs/SetBool): true latches, false clears it (the explicit reset; the plan is dropped and
motion resumes from the held pose with a freshly inferred chunk).
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import SetBool

from avdp_ros.control.chunks import BLEND_MODES, INTERPOLATIONS, ChunkConfig, ChunkScheduler, LatencyEstimator
from avdp_ros.control.safety import SafetyFilter, SafetyLimits
from avdp_ros.ingest import IngestConfig, ObservationAssembler
from avdp_ros.nodes import topics
from avdp_ros.nodes.msgs import image_to_msg, pose_from_msg, pose_to_msg, stamp_from_sec, stamp_to_sec
from avdp_ros.nodes.spin import run_node

BACKENDS = ("torch", "onnxruntime", "tensorrt")  # avdp_ros.deploy: one `infer` interface
DEFAULT_MODEL = "avdp_default"
ESTOP = "/avdp/estop"
PLAN = "/avdp/plan"
PREDICTED_IMAGE = "/avdp/predicted_image"
DIAGNOSTICS = "/diagnostics"
CHUNK_TIMING = "/avdp/chunk_timing"  # one DiagnosticArray per inference: raw latency samples, not percentiles
DEFAULT_CAMERA_TOPICS = [topics.CAMERA_IMAGE, topics.WRIST_IMAGE]

# name -> (default, meaning). The defaults are what config/policy.yaml documents; every one is
# validated in on_configure.
PARAMETERS: dict[str, tuple[object, str]] = {
    "autostart": (True, "configure + activate at start-up (false: wait for a lifecycle manager)"),
    "model": ("", "backend torch: checkpoint directory (avdp-train-idm / -baseline run or its latest/); "
                  "onnxruntime / tensorrt: bundle directory (avdp-export); "
                  "'' = models/avdp_default of the source tree or the installed package"),
    "backend": ("torch", f"inference backend, one of {BACKENDS}"),
    "device": ("cpu", "cpu, cuda, cuda:0 (onnxruntime picks its execution provider from it)"),
    "torch_threads": (0, "torch intra-op threads (0 = torch's default); 1-2 on a shared CPU"),
    "video_steps": (0, "Euler steps per predicted frame (0 = the checkpoint's)"),
    "action_steps": (0, "Euler steps per action chunk (0 = the checkpoint's)"),
    "action_temperature": (-1.0, "scale of the action sampler's noise, 0-2 (-1 = the checkpoint's)"),
    "instruction": ("", "task text; '' = the 'instruction' of the latched /avdp/episode_info"),
    "base_frame": (topics.BASE_FRAME, "frame of poses in and out (no tf: others are rejected)"),
    "camera_topics": (DEFAULT_CAMERA_TOPICS, "image topic per model camera, in the checkpoint's camera order; "
                                             "camera_info is the sibling topic 'camera_info'"),
    "image_size": ([128, 128], "(height, width) images are resized to (INTER_AREA), as by avdp-convert"),
    "expect_image_size": ([0, 0], "(height, width) cameras must deliver; [0, 0] = any size"),
    "stamp_tolerance_s": (0.05, "max spread of the camera stamps in one observation"),
    "max_obs_age_s": (0.25, "an observation older than this (t_obs vs now) is stale: no inference"),
    "camera_timeout_s": (0.5, "a camera silent for longer makes observations unavailable"),
    "pose_timeout_s": (0.1, "same for the ee pose"),
    "gripper_timeout_s": (0.5, "same for the gripper joint states"),
    "max_future_skew_s": (0.05, "stamps further ahead of the node clock are rejected"),
    "execute_steps": (4, "actions of each chunk executed before the next chunk takes over (<= horizon)"),
    "blend": ("linear", f"how a new chunk takes over the overlap: {BLEND_MODES}"),
    "prefix_conditioning": (True, "start each chunk with the committed actions (real-time chunking) "
                                  "when the backend supports it; the blend still applies"),
    "interpolation": ("linear", f"between waypoints: {INTERPOLATIONS}"),
    "latency_margin_s": (0.05, "slack on top of the measured latency when deciding to infer"),
    "latency_initial_s": (0.3, "latency assumed until enough chunks were measured"),
    "latency_percentile": (90.0, "percentile of the measured latency the scheduler plans with"),
    "latency_window": (20, "chunks the latency percentile is computed over"),
    "latency_offset_s": (0.0, "fixed delay added to every action stamp (actuation / transport)"),
    "hold_s": (0.2, "how long past its end the plan's last waypoint is still held"),
    "command_rate_hz": (200.0, "commander rate (target pose + gripper width)"),
    "workspace_min": ([0.25, -0.35, 0.015], "workspace box (m, base frame) commands never leave"),
    "workspace_max": ([0.75, 0.35, 0.50], "upper corner of the workspace box"),
    "max_linear_speed": (0.25, "m/s between successive commands"),
    "max_angular_speed": (1.0, "rad/s"),
    "max_linear_accel": (2.0, "m/s^2"),
    "max_angular_accel": (8.0, "rad/s^2"),
    "gripper_min": (0.0, "m, total finger opening"),
    "gripper_max": (0.08, "m"),
    "max_command_gap_s": (0.2, "a longer gap between two commander steps is a clock fault: hold"),
    "publish_plan": (True, f"publish the plan on {PLAN} (nav_msgs/Path) for every new chunk"),
    "publish_predicted": (False, f"decode the first predicted frame to {PREDICTED_IMAGE} (costs a decoder pass)"),
    "diagnostics_rate_hz": (1.0, f"{DIAGNOSTICS} rate (0 = off)"),
}


def default_model_path() -> Path:
    """models/avdp_default from the source tree, else from the installed share/ directory."""
    here = Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL
    if here.exists():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("avdp_ros")) / "models" / DEFAULT_MODEL
        if installed.exists():
            return installed
    except Exception:  # noqa: BLE001 - not installed: the source-tree path is named in the error
        pass
    return here


def load_policy(backend: str, path: Path, device: str, video_steps: int | None, action_steps: int | None):
    """The policy object behind the one interface (`infer`, `observe`, `reset`, `obs_hz`, `cfg`).

    `path` is a checkpoint directory for `torch` and an exported bundle (`avdp-export`) for
    `onnxruntime` / `tensorrt`; `avdp_ros.deploy.load_policy` does the loading.

    Raises:
        ValueError: unknown backend, or a checkpoint / bundle that cannot be loaded.
        FileNotFoundError: no checkpoint or bundle at `path`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}': expected one of {', '.join(BACKENDS)}")
    if not path.exists():
        raise FileNotFoundError(
            f"model checkpoint {path} does not exist: set the 'model' parameter (launch: model:=DIR, "
            f"avdp-run: --set avdp_policy.model=DIR) to an avdp-train-idm or avdp-train-baseline run, "
            f"or train one with scripts/train_default.sh and copy runs/default/idm/latest to "
            f"models/{DEFAULT_MODEL} (see models/README.md)")
    if backend == "torch":
        if not ((path / "checkpoint.json").exists() or (path / "latest" / "checkpoint.json").exists()):
            raise FileNotFoundError(f"model {path}: no checkpoint.json in it or in its latest/: expected a "
                                    "checkpoint directory written by avdp-train-idm or avdp-train-baseline")
    elif not (path / "manifest.json").exists():
        raise FileNotFoundError(f"model {path}: no manifest.json: the {backend} backend runs a bundle exported "
                                f"with `avdp-export CHECKPOINT --out DIR` (see docs/deployment.md)")
    # torch / onnxruntime are imported only when a model is loaded
    from avdp_ros.deploy import load_policy as load

    try:
        return load(backend, path, device, video_steps=video_steps, action_steps=action_steps)
    except (ImportError, RuntimeError) as exc:  # missing runtime, provider or GPU: a configure error, not a crash
        raise ValueError(f"backend '{backend}' for model {path}: {exc}") from exc


def info_topic(image_topic: str) -> str:
    """realsense-ros style sibling: .../color/image_raw -> .../color/camera_info."""
    return image_topic.rsplit("/", 1)[0] + "/camera_info" if "/" in image_topic else "camera_info"


class _Stats:
    """Recent samples of one quantity (ms), for p50/p90/p99 on /diagnostics."""

    def __init__(self, maxlen: int = 500):
        self.samples: deque[float] = deque(maxlen=maxlen)

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self.samples.append(float(value))

    def percentiles(self) -> tuple[float, float, float] | None:
        data = list(self.samples)  # a copy: other threads keep appending
        if not data:
            return None
        return tuple(float(v) for v in np.percentile(data, [50, 90, 99]))  # type: ignore[return-value]


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("avdp_policy", **kwargs)
        for name, (default, meaning) in PARAMETERS.items():
            # dynamic typing: `-p max_linear_speed:=1` (an int) must not be a type error; every
            # value is checked and converted in _read_parameters with a clear message instead.
            self.declare_parameter(name, default, ParameterDescriptor(description=meaning, dynamic_typing=True))
        self.configure_error: str | None = None
        self.policy = None
        self._pubs: dict[str, object] = {}
        self._active_entities: list = []  # subscriptions and timers created on activate
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._plan_lock = threading.Lock()  # the scheduler is shared by the commander and the worker
        if self.get_parameter("autostart").value:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                error = self.configure_error or "configure failed (see the log)"
                self.destroy_node()
                raise ValueError(f"avdp_policy: {error}")
            self.trigger_activate()

    # ================================================================= lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (ValueError, FileNotFoundError) as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            self.policy = None
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the lifecycle publishers first
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._reset_run()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="avdp_policy_inference", daemon=True)
        self._worker.start()
        self._create_io()
        self.get_logger().info(
            f"active: {self.policy.kind} policy from {self.model_path}, {self.policy.obs_hz:g} Hz observations, "
            f"chunks of {self.chunk_cfg.horizon} executing {self.chunk_cfg.execute_steps}, "
            f"commands at {self.command_rate_hz:g} Hz on {topics.TARGET_FRAME}")
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

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._deactivate()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop the timers and the inference thread (runner / run_node call this before
        destroy_node). Subscriptions stay until destroy_node: the executor may still be spinning."""
        for entity in self._active_entities:
            if hasattr(entity, "cancel"):
                entity.cancel()
        self._stop_worker()

    # ================================================================= configure
    def _read_parameters(self) -> dict:
        """Every parameter, converted and range-checked; ValueError names the one that is wrong."""
        v = {name: self.get_parameter(name).value for name in PARAMETERS}

        def number(name, lo=None, hi=None, integer=False, lo_open=False):
            x = v[name]
            try:
                if isinstance(x, bool) or (integer and float(x) != int(x)):
                    raise TypeError
                x = int(x) if integer else float(x)
            except (TypeError, ValueError):
                raise ValueError(f"parameter {name} = {v[name]!r}: expected {'an integer' if integer else 'a number'}") from None
            if not math.isfinite(x) or (lo is not None and (x < lo or (lo_open and x == lo))) or \
                    (hi is not None and x > hi):
                rng = f"{'>' if lo_open else '>='} {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"parameter {name} = {v[name]!r}: expected a finite number {rng}")
            return x

        def vector(name, n, integer=False):
            x = v[name]
            try:
                out = [int(e) if integer else float(e) for e in x]
                if len(out) != n or isinstance(x, str):
                    raise TypeError
            except (TypeError, ValueError):
                raise ValueError(f"parameter {name} = {x!r}: expected {n} {'integers' if integer else 'numbers'}") from None
            return out

        def text(name, choices=None):
            x = v[name]
            if not isinstance(x, str):
                raise ValueError(f"parameter {name} = {x!r}: expected a string")
            if choices is not None and x not in choices:
                raise ValueError(f"parameter {name} = '{x}': expected one of {', '.join(choices)}")
            return x

        def flag(name):
            if not isinstance(v[name], bool):
                raise ValueError(f"parameter {name} = {v[name]!r}: expected true or false")
            return v[name]

        p = {
            "model": text("model"), "backend": text("backend"), "device": text("device"),
            "instruction": text("instruction"), "base_frame": text("base_frame"),
            "blend": text("blend", BLEND_MODES), "interpolation": text("interpolation", INTERPOLATIONS),
            "torch_threads": number("torch_threads", 0, 256, integer=True),
            "video_steps": number("video_steps", 0, 1000, integer=True),
            "action_steps": number("action_steps", 0, 1000, integer=True),
            "action_temperature": number("action_temperature", -1.0, 2.0),
            "execute_steps": number("execute_steps", 1, integer=True),
            "latency_window": number("latency_window", 1, 10000, integer=True),
            "image_size": vector("image_size", 2, integer=True),
            "expect_image_size": vector("expect_image_size", 2, integer=True),
            "workspace_min": vector("workspace_min", 3), "workspace_max": vector("workspace_max", 3),
            "command_rate_hz": number("command_rate_hz", 1.0, 1000.0),
            "diagnostics_rate_hz": number("diagnostics_rate_hz", 0.0, 100.0),
            "latency_percentile": number("latency_percentile", 0.0, 100.0),
            "publish_plan": flag("publish_plan"), "publish_predicted": flag("publish_predicted"),
            "prefix_conditioning": flag("prefix_conditioning"),
        }
        for name in ("stamp_tolerance_s", "max_obs_age_s", "camera_timeout_s", "pose_timeout_s",
                     "gripper_timeout_s", "max_linear_speed", "max_angular_speed", "max_linear_accel",
                     "max_angular_accel", "max_command_gap_s", "gripper_max"):
            p[name] = number(name, 0.0, lo_open=True)
        for name in ("max_future_skew_s", "latency_margin_s", "latency_initial_s", "latency_offset_s",
                     "hold_s", "gripper_min"):
            p[name] = number(name, 0.0)
        cams = v["camera_topics"]
        if isinstance(cams, str) or not all(isinstance(t, str) and t for t in (cams or [])):
            raise ValueError(f"parameter camera_topics = {cams!r}: expected a list of image topic names")
        p["camera_topics"] = list(cams)
        if not p["base_frame"]:
            raise ValueError("parameter base_frame is empty: expected the robot base frame (e.g. panda_link0)")
        p["expect_image_size"] = None if p["expect_image_size"] == [0, 0] else p["expect_image_size"]
        if 1.0 / p["command_rate_hz"] >= p["max_command_gap_s"]:
            raise ValueError(f"parameter max_command_gap_s = {p['max_command_gap_s']}: expected more than one "
                             f"command period (1 / command_rate_hz = {1.0 / p['command_rate_hz']:.4g} s)")
        return p

    def _configure(self) -> None:
        p = self._read_parameters()
        if p["backend"] not in BACKENDS:  # before the (slow) model load
            load_policy(p["backend"], Path(), "", None, None)
        self.model_path = Path(p["model"]).expanduser() if p["model"] else default_model_path()
        if p["torch_threads"] > 0:
            import torch

            torch.set_num_threads(p["torch_threads"])
        policy = load_policy(p["backend"], self.model_path, p["device"], p["video_steps"] or None,
                             p["action_steps"] or None)
        if p["action_temperature"] >= 0:
            policy.action_temperature = p["action_temperature"]
        cfg = policy.cfg
        if p["execute_steps"] > cfg.horizon:
            raise ValueError(f"parameter execute_steps {p['execute_steps']} > horizon {cfg.horizon} of the model "
                             f"{self.model_path}: a chunk has only {cfg.horizon} actions to execute")
        if len(p["camera_topics"]) != len(cfg.cameras):
            raise ValueError(f"parameter camera_topics = {p['camera_topics']}: expected one topic per model camera "
                             f"{list(cfg.cameras)} (in that order)")
        try:
            self.ingest_cfg = IngestConfig(
                cameras=dict(zip(cfg.cameras, p["camera_topics"])), pose_topic=topics.CURRENT_POSE,
                gripper_topic=topics.GRIPPER_STATE, frame_id=p["base_frame"], image_size=tuple(p["image_size"]),
                expect_size=p["expect_image_size"], stamp_tolerance_s=p["stamp_tolerance_s"],
                max_age_s=p["max_obs_age_s"], camera_timeout_s=p["camera_timeout_s"],
                pose_timeout_s=p["pose_timeout_s"], gripper_timeout_s=p["gripper_timeout_s"],
                max_future_skew_s=p["max_future_skew_s"],
                history_s=max(1.0, p["max_obs_age_s"] + max(p["pose_timeout_s"], p["gripper_timeout_s"])))
            self.chunk_cfg = ChunkConfig(
                horizon=cfg.horizon, execute_steps=p["execute_steps"], dt=1.0 / policy.obs_hz, blend=p["blend"],
                interpolation=p["interpolation"], latency_margin=p["latency_margin_s"], hold_s=p["hold_s"],
                latency_offset=p["latency_offset_s"])
            self.limits = SafetyLimits(
                workspace_min=tuple(p["workspace_min"]), workspace_max=tuple(p["workspace_max"]),
                max_linear_speed=p["max_linear_speed"], max_angular_speed=p["max_angular_speed"],
                max_linear_accel=p["max_linear_accel"], max_angular_accel=p["max_angular_accel"],
                gripper_min=p["gripper_min"], gripper_max=p["gripper_max"], frame_id=p["base_frame"],
                max_dt=p["max_command_gap_s"])
            self.latency = LatencyEstimator(window=p["latency_window"], percentile=p["latency_percentile"],
                                            initial=p["latency_initial_s"],
                                            min_samples=min(3, p["latency_window"]))
        except ValueError as exc:
            raise ValueError(f"parameters: {exc}") from None
        self.policy = policy
        self.params = p
        self.base_frame = p["base_frame"]
        self.command_rate_hz = p["command_rate_hz"]
        self.assembler = ObservationAssembler(self.ingest_cfg)
        self.scheduler = ChunkScheduler(self.chunk_cfg)
        self.filter = SafetyFilter(self.limits)
        self.stats = {name: _Stats() for name in (
            "tokenizer_ms", "video_ms", "idm_ms", "infer_total_ms", "ingest_ms", "obs_to_chunk_ms",
            "chunk_age_ms", "command_period_ms", "command_callback_ms")}
        self.counters = dict.fromkeys(("inferences", "observes", "chunks_rejected", "inference_errors",
                                       "inference_overruns", "no_observation", "prefixed_chunks"), 0)
        self.instruction = p["instruction"]
        self.episode = None
        self.camera_info: dict[str, tuple[int, int]] = {}
        pubs = self._pubs
        pubs["target"] = self.create_lifecycle_publisher(PoseStamped, topics.TARGET_FRAME, topics.COMMAND_QOS)
        pubs["gripper"] = self.create_lifecycle_publisher(Float64, topics.GRIPPER_COMMAND, topics.COMMAND_QOS)
        best_effort = topics.SENSOR_QOS
        if p["publish_plan"]:
            pubs["plan"] = self.create_lifecycle_publisher(PathMsg, PLAN, best_effort)
        if p["publish_predicted"]:
            pubs["predicted"] = self.create_lifecycle_publisher(Image, PREDICTED_IMAGE, best_effort)
        if p["diagnostics_rate_hz"] > 0:
            pubs["diagnostics"] = self.create_lifecycle_publisher(DiagnosticArray, DIAGNOSTICS, 10)
            # /diagnostics only carries rolling percentiles; evaluators (avdp-eval-ros) need every sample
            pubs["chunk_timing"] = self.create_lifecycle_publisher(DiagnosticArray, CHUNK_TIMING, topics.STATE_QOS)
        # The e-stop exists from configure on: latching it before activation holds from the start.
        self._estop_entities = [
            self.create_subscription(Bool, ESTOP, self._on_estop_msg, topics.STATE_QOS),
            self.create_service(SetBool, ESTOP, self._on_estop_srv),
        ]
        self.get_logger().info(f"configured: {self.policy.kind} model {self.model_path} ({p['backend']} on "
                               f"{p['device']}), cameras {self.ingest_cfg.cameras}")

    def _teardown(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs.clear()
        for entity in getattr(self, "_estop_entities", []):
            if isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            else:
                self.destroy_service(entity)
        self._estop_entities = []
        self.policy = None

    # ================================================================= activate
    def _reset_run(self) -> None:
        """A fresh start: no plan, empty frame history, the filter re-anchored at the measured pose."""
        with self._plan_lock:
            self.scheduler.reset()
            self._chunk_t_obs: float | None = None
        self.assembler.reset()
        self.policy.reset()
        self._measured: tuple[float, np.ndarray, str] | None = None  # (stamp, pose7, frame_id)
        self._measured_width: float | None = None
        self._anchor_after = -math.inf  # re-anchor the filter from a pose stamped at or after this
        self._episode_gen = 0  # +1 per episode reset; queued observations carry the one they were made in
        self._filter_ready = False
        self._last_command_wall: float | None = None
        self.last_not_ready = "no observation yet"
        self._queue: queue.Queue = queue.Queue(maxsize=2)

    def _create_io(self) -> None:
        p, e = self.params, self._active_entities
        for name, topic in self.ingest_cfg.cameras.items():
            e.append(self.create_subscription(Image, topic, lambda m, n=name: self._on_image(n, m), topics.SENSOR_QOS))
            e.append(self.create_subscription(CameraInfo, info_topic(topic),
                                              lambda m, n=name: self._on_info(n, m), topics.SENSOR_QOS))
        e.append(self.create_subscription(PoseStamped, topics.CURRENT_POSE, self._on_pose, topics.STATE_QOS))
        e.append(self.create_subscription(JointState, topics.GRIPPER_STATE, self._on_gripper, topics.STATE_QOS))
        e.append(self.create_subscription(String, topics.EPISODE_INFO, self._on_episode_info, topics.LATCHED_QOS))
        e.append(self.create_timer(1.0 / self.policy.obs_hz, self._on_obs_tick))
        # Own group: with a multi-threaded executor the commander never waits behind other callbacks.
        e.append(self.create_timer(1.0 / self.command_rate_hz, self._on_command_tick,
                                   callback_group=MutuallyExclusiveCallbackGroup()))
        if p["diagnostics_rate_hz"] > 0:
            e.append(self.create_timer(1.0 / p["diagnostics_rate_hz"], self._publish_diagnostics))

    def _deactivate(self) -> None:
        for entity in self._active_entities:
            if hasattr(entity, "cancel"):
                entity.cancel()
                self.destroy_timer(entity)
            else:
                self.destroy_subscription(entity)
        self._active_entities.clear()
        self._stop_worker()

    def _stop_worker(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    # ================================================================= inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _warn(self, text: str, period: float = 2.0) -> None:
        self.get_logger().warning(text, throttle_duration_sec=period)

    def _on_image(self, camera: str, msg: Image) -> None:
        now = self._now()
        if now <= 0.0:
            return  # sim time has not started (/clock not received yet): nothing can be aligned
        err = self.assembler.add_image_msg(camera, stamp_to_sec(msg.header.stamp), msg, now)
        if err is not None:
            self._warn(f"rejected image: {err}")

    def _on_info(self, camera: str, msg: CameraInfo) -> None:
        size = (int(msg.height), int(msg.width))
        if self.camera_info.get(camera) != size:
            self.camera_info[camera] = size
            fx, fy, cx, cy = (round(float(msg.k[i]), 1) for i in (0, 4, 2, 5))
            self.get_logger().info(f"camera '{camera}': {size[1]}x{size[0]}, fx {fx} fy {fy} cx {cx} cy {cy}")

    def _on_pose(self, msg: PoseStamped) -> None:
        now = self._now()
        if now <= 0.0:
            return
        stamp, pose = stamp_to_sec(msg.header.stamp), pose_from_msg(msg.pose)
        err = self.assembler.add_pose(stamp, pose, msg.header.frame_id, now)
        if err is not None:
            self._warn(f"rejected ee pose: {err}")
            return
        self._measured = (stamp, pose, msg.header.frame_id)

    def _on_gripper(self, msg: JointState) -> None:
        now = self._now()
        if now <= 0.0:
            return
        width = float(sum(msg.position)) if len(msg.position) else None  # total finger opening
        err = self.assembler.add_gripper(stamp_to_sec(msg.header.stamp), width, now)
        if err is not None:
            self._warn(f"rejected gripper state: {err}")
            return
        self._measured_width = width

    def _on_episode_info(self, msg: String) -> None:
        try:
            info = json.loads(msg.data)
        except json.JSONDecodeError as exc:
            self._warn(f"{topics.EPISODE_INFO}: not JSON ({exc}); ignored")
            return
        if not self.params["instruction"] and isinstance(info.get("instruction"), str):
            self.instruction = info["instruction"]
        episode = info.get("episode")
        if episode is not None and episode != self.episode:
            first = self.episode is None
            self.episode = episode
            if not first:  # a new episode (sim reset): the arm jumped, the history is another scene
                self._new_episode(float(info.get("stamp", 0.0)))
            self.get_logger().info(f"episode {episode}: \"{self.instruction}\"")

    def _new_episode(self, stamp: float) -> None:
        with self._plan_lock:
            self.scheduler.reset()
            self._chunk_t_obs = None
            self._episode_gen += 1  # under the lock: _infer drops chunks of observations made before it
        self.assembler.reset()
        # Observations still queued belong to the old episode; with a full queue the reset
        # itself would be dropped and the model would keep the old scene's frame history.
        while not self._queue.empty():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._enqueue(("reset", None, self._episode_gen))
        self._anchor_after = stamp
        self._filter_ready = False

    # ================================================================= observation -> inference
    def _enqueue(self, item) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            return False

    def _on_obs_tick(self) -> None:
        now = self._now()
        t0 = time.perf_counter()
        obs, reason = self.assembler.assemble(now, self.instruction)
        self.stats["ingest_ms"].add((time.perf_counter() - t0) * 1e3)
        if obs is None:
            self.counters["no_observation"] += 1
            self.last_not_ready = reason
            self._warn(f"no observation, not inferring: {reason}")
            return
        self.last_not_ready = ""
        if self._queue.full():  # the worker is behind (inference slower than 1 / obs_hz)
            self.counters["inference_overruns"] += 1
            self._warn("inference thread behind: an observation was skipped (model slower than obs_hz?)")
            return
        with self._plan_lock:
            infer = self.scheduler.should_infer(now, self.latency.estimate())
            if infer:
                self.scheduler.mark_inference_started()
        if not self._enqueue(("infer" if infer else "observe", obs, self._episode_gen)):
            self.counters["inference_overruns"] += 1  # an episode reset took the slot just now
            if infer:
                with self._plan_lock:
                    self.scheduler.mark_inference_finished()

    def _work(self) -> None:
        """The inference thread: model calls only, in queue order (the frame history's order)."""
        while not self._stop.is_set():
            try:
                kind, obs, gen = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if kind == "reset":
                    self.policy.reset()
                elif kind == "observe":
                    self.policy.observe(obs)
                    self.counters["observes"] += 1
                else:
                    self._infer(obs, gen)
            except Exception as exc:  # noqa: BLE001 - a bad step must not kill the thread; holds instead
                self.counters["inference_errors"] += 1
                self.get_logger().error(f"inference failed: {exc!r}", throttle_duration_sec=2.0)
            finally:
                if kind == "infer":
                    with self._plan_lock:
                        self.scheduler.mark_inference_finished()

    def _infer(self, obs: dict, episode_gen: int) -> None:
        kwargs = {}
        if self.params["prefix_conditioning"] and getattr(self.policy, "supports_prefix", False):
            with self._plan_lock:  # what runs anyway until this chunk lands (latency estimate from now)
                prefix = self.scheduler.committed(float(obs["t_obs"]), self._now() + self.latency.estimate())
            if prefix is not None:
                kwargs["prefix"] = prefix
                self.counters["prefixed_chunks"] += 1
        out = self.policy.infer(obs, return_frames=self.params["publish_predicted"], **kwargs)
        arrival = self._now()
        t_obs = float(obs["t_obs"])
        self.counters["inferences"] += 1
        timings = out.get("timings", {})
        for key in ("tokenizer_ms", "video_ms", "idm_ms"):
            self.stats[key].add(float(timings.get(key, math.nan)))
        self.stats["infer_total_ms"].add(float(timings.get("total_ms", math.nan)))
        self.stats["obs_to_chunk_ms"].add((arrival - t_obs) * 1e3)
        try:
            self.latency.add(arrival - t_obs)
        except ValueError as exc:  # negative: the clock jumped back (sim reset); not a latency
            self._warn(f"latency sample ignored: {exc}")
        with self._plan_lock:
            try:
                if episode_gen != self._episode_gen:  # inferred while the sim reset: the arm is elsewhere now
                    raise ValueError(f"observation at {t_obs:.3f} is from before the latest episode reset")
                update = self.scheduler.add_chunk(out["actions"], t_obs, arrival)
            except ValueError as exc:
                self.counters["chunks_rejected"] += 1
                self._warn(f"chunk rejected, keeping the current plan: {exc}")
                self._publish_chunk_timing(t_obs, arrival, timings, error=str(exc))
                return
            if update.kept:
                self._chunk_t_obs = t_obs
            plan_end = self.scheduler.plan_end()
            waypoints = self.scheduler.waypoints() if update.kept and "plan" in self._pubs else None
        self._publish_chunk_timing(t_obs, arrival, timings, update.kept, update.dropped, plan_end)
        if update.kept == 0:
            self._warn(f"chunk for t_obs {t_obs:.3f} arrived {arrival - t_obs:.3f} s late: every action was "
                       "already due; the plan is unchanged")
        if waypoints is not None:
            self._publish_plan(*waypoints, arrival)
        frames = out.get("predicted_frames")
        if frames is not None and "predicted" in self._pubs:  # (K, cams, S, S, 3): first frame, cams side by side
            self._pubs["predicted"].publish(image_to_msg(np.concatenate(list(frames[0]), axis=1), "avdp_predicted",
                                                         t_obs + 1.0 / self.policy.obs_hz))

    def _publish_chunk_timing(self, t_obs: float, arrival: float, timings: dict, kept: int = 0, dropped: int = 0,
                              plan_end: float | None = None, error: str = "") -> None:
        """One message per inference on CHUNK_TIMING: stamps (node clock, s), stage times (ms),
        what the scheduler kept; level ERROR with the reason when the chunk was refused."""
        pub = self._pubs.get("chunk_timing")
        if pub is None:
            return
        values = {"t_obs": f"{t_obs:.6f}", "arrival": f"{arrival:.6f}",
                  "obs_to_chunk_ms": f"{(arrival - t_obs) * 1e3:.3f}", "kept": str(kept), "dropped": str(dropped),
                  "plan_end": "" if plan_end is None else f"{plan_end:.6f}"}
        values.update({k: f"{float(v):.3f}" for k, v in timings.items()})
        status = DiagnosticStatus(name="avdp_policy/chunk", hardware_id=str(self.model_path),
                                  level=DiagnosticStatus.ERROR if error else DiagnosticStatus.OK,
                                  message=error or f"kept {kept}, dropped {dropped}",
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = stamp_from_sec(arrival)
        pub.publish(msg)

    def _publish_plan(self, stamps: np.ndarray, poses: np.ndarray, widths: np.ndarray, now: float) -> None:
        msg = PathMsg()
        msg.header.frame_id = self.base_frame
        msg.header.stamp = stamp_from_sec(now)
        msg.poses = [pose_to_msg(pose, self.base_frame, t) for t, pose in zip(stamps, poses)]
        self._pubs["plan"].publish(msg)

    # ================================================================= commander
    def _on_command_tick(self) -> None:
        wall = time.perf_counter()
        now = self._now()
        if not self._filter_ready and not self._anchor_filter(now):
            return
        with self._plan_lock:
            desired = self.scheduler.target_at(now)
            chunk_t_obs = self._chunk_t_obs
        pose, width = self.filter.step(desired, now, frame_id=self.base_frame)
        self._pubs["target"].publish(pose_to_msg(pose, self.base_frame, now))
        self._pubs["gripper"].publish(Float64(data=float(width)))
        if desired is not None and chunk_t_obs is not None and not self.filter.holding:
            self.stats["chunk_age_ms"].add((now - chunk_t_obs) * 1e3)
        if self._last_command_wall is not None:
            self.stats["command_period_ms"].add((wall - self._last_command_wall) * 1e3)
        self._last_command_wall = wall
        self.stats["command_callback_ms"].add((time.perf_counter() - wall) * 1e3)

    def _anchor_filter(self, now: float) -> bool:
        """Start the filter from the measured pose (first command = where the arm is)."""
        measured, width = self._measured, self._measured_width
        if measured is None or width is None or measured[0] < self._anchor_after:
            self._warn("waiting for the ee pose and gripper state before commanding")
            return False
        stamp, pose, frame = measured
        if frame != self.base_frame:
            self._warn(f"measured pose in frame '{frame}', expected '{self.base_frame}': not commanding")
            return False
        try:
            self.filter.reset(pose, width, now)
        except ValueError as exc:
            self.get_logger().error(f"not commanding: {exc}", throttle_duration_sec=2.0)
            return False
        self._filter_ready = True
        return True

    # ================================================================= e-stop
    def _latch_estop(self, reason: str) -> None:
        if not self.filter.estopped:
            self.get_logger().error(f"E-STOP latched ({reason}): holding the last command until "
                                    f"{ESTOP} (std_srvs/SetBool) is called with false")
        self.filter.estop(reason)

    def _on_estop_msg(self, msg: Bool) -> None:
        if msg.data:
            self._latch_estop(f"topic {ESTOP}")
        elif self.filter.estopped:
            self._warn(f"{ESTOP} false ignored: the e-stop is latched; clear it with the service {ESTOP} "
                       "(std_srvs/SetBool, data: false)")

    def _on_estop_srv(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if request.data:
            self._latch_estop(f"service {ESTOP}")
            response.success, response.message = True, "e-stop latched: holding the last command"
            return response
        if not self.filter.estopped:
            response.success, response.message = True, "e-stop was not latched"
            return response
        with self._plan_lock:
            # Resume only from a fresh plan: the old one was made for a world before the stop.
            self.scheduler.reset()
            self._chunk_t_obs = None
        self.filter.reset_estop()
        self.get_logger().warning("e-stop cleared: resuming from the held pose with a fresh plan")
        response.success, response.message = True, "e-stop cleared"
        return response

    # ================================================================= diagnostics
    def _publish_diagnostics(self) -> None:
        values: list[tuple[str, str]] = []
        for (stream, kind), n in sorted(self.assembler.rejected.items()):
            values.append((f"ingest.rejected.{stream}.{kind}", str(n)))
        for (stream, kind), n in sorted(self.assembler.not_ready.items()):
            values.append((f"ingest.not_ready.{stream}.{kind}", str(n)))
        for name, stats in self.stats.items():
            pct = stats.percentiles()
            if pct is not None:
                values += [(f"latency.{name}.p{q}", f"{x:.2f}") for q, x in zip((50, 90, 99), pct)]
        values.append(("latency.estimate_ms", f"{self.latency.estimate() * 1e3:.1f}"))
        for kind, n in self.filter.interventions.items():
            values.append((f"safety.{kind}", str(n)))
        values.append(("safety.last_reason", self.filter.last_reason))
        values += [(k, str(n)) for k, n in self.counters.items()]
        values += [("chunks_added", str(self.scheduler.chunks_added)),
                   ("actions_dropped", str(self.scheduler.actions_dropped)),
                   ("estop", "latched" if self.filter.estopped else "clear"),
                   ("observation", self.last_not_ready or "ok")]
        writers = self.count_publishers(self._pubs["target"].topic_name)  # the remapped name
        values.append(("publishers_on_target_frame", str(writers)))

        status = DiagnosticStatus(name="avdp_policy", hardware_id=str(self.model_path))
        if self.filter.estopped:
            status.level, status.message = DiagnosticStatus.ERROR, f"E-STOP latched: {self.filter.last_reason}"
        elif writers > 1:
            status.level = DiagnosticStatus.ERROR
            status.message = f"{writers} publishers on {topics.TARGET_FRAME}: expected only avdp_policy"
            self._warn(status.message)
        elif self.last_not_ready:
            status.level, status.message = DiagnosticStatus.WARN, f"no observation: {self.last_not_ready}"
        elif not self._filter_ready:
            status.level, status.message = DiagnosticStatus.WARN, "waiting for the ee pose / gripper state"
        else:
            status.level, status.message = DiagnosticStatus.OK, "running"
        status.values = [KeyValue(key=k, value=v) for k, v in values]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = stamp_from_sec(self._now())
        self._pubs["diagnostics"].publish(msg)


def main(args=None):
    run_node(PolicyNode, args)


if __name__ == "__main__":
    sys.exit(main())
