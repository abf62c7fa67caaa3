"""The policy node's parameters: the table it declares and `PolicyParams`, their validated form.

Pure (no rclpy): the node reads the raw values from its parameter server and hands them to
``PolicyParams.from_values``; every error names the parameter, its value and what was expected.
config/policy.yaml documents the same defaults (a test compares the two).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from avdp_ros.control.chunks import BLEND_MODES, INTERPOLATIONS, ChunkConfig, LatencyEstimator
from avdp_ros.control.ingest import IngestConfig
from avdp_ros.control.safety import SafetyLimits
from avdp_ros.deploy.backends import BACKENDS, check_backend

# Outputs of the node, named here because the parameter descriptions name them.
PLAN = "/avdp/plan"
PREDICTED_IMAGE = "/avdp/predicted_image"
DIAGNOSTICS = "/diagnostics"

# nodes/topics.py names the same topics for ROS, but importing it loads rclpy
_INGEST = IngestConfig()

# name -> (default, meaning). Every one but autostart (read before configure) is validated by
# PolicyParams.from_values.
PARAMETERS: dict[str, tuple[object, str]] = {
    "autostart": (True, "configure + activate at start-up (false: wait for a lifecycle manager)"),
    "model": ("", "backend torch: checkpoint directory (avdp-train-idm / -baseline run or its latest/); "
                  "onnxruntime / tensorrt: bundle directory (avdp-export); "
                  "'' = models/avdp_default of the source tree or the installed package"),
    "backend": ("torch", f"inference backend, one of {BACKENDS}"),
    "device": ("cpu", "cpu, cuda, cuda:0 (onnxruntime picks its execution provider from it)"),
    "torch_threads": (0, "intra-op threads of the model: torch's, and each onnxruntime session's (0 = the "
                         "runtime's default: every core, which fights the sim and the commander); 1-2 on a "
                         "shared CPU"),
    "video_steps": (0, "Euler steps per predicted frame (0 = the checkpoint's)"),
    "action_steps": (0, "Euler steps per action chunk (0 = the checkpoint's)"),
    "action_temperature": (-1.0, "scale of the action sampler's noise, 0-2 (-1 = the checkpoint's)"),
    "instruction": ("", "task text; '' = the 'instruction' of the latched /avdp/episode_info"),
    "base_frame": (_INGEST.frame_id, "frame of poses in and out (no tf: others are rejected)"),
    "camera_topics": (list(_INGEST.cameras.values()),
                      "image topic per model camera, in the checkpoint's camera order; "
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
    "commander": ("thread", "what ticks the commander: 'thread' (its own thread on absolute deadlines, "
                            "clear of the image callbacks) or 'timer' (an executor timer); with "
                            "use_sim_time it is always the timer, which follows /clock"),
    "commander_priority": (40, "SCHED_FIFO priority of the commander thread, 1-99 (below ros2_control's 50), "
                               "where the system allows it (rtprio); 0 = normal scheduling"),
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
    "publish_predicted": (False, f"decode the first predicted frame to {PREDICTED_IMAGE} "
                                 "(costs a decoder pass)"),
    "diagnostics_rate_hz": (1.0, f"{DIAGNOSTICS} rate (0 = off)"),
}

COMMANDERS = ("thread", "timer")
_POSITIVE_S = ("stamp_tolerance_s", "max_obs_age_s", "camera_timeout_s", "pose_timeout_s",
               "gripper_timeout_s", "max_linear_speed", "max_angular_speed", "max_linear_accel",
               "max_angular_accel", "max_command_gap_s", "gripper_max")
_NON_NEGATIVE = ("max_future_skew_s", "latency_margin_s", "latency_initial_s", "latency_offset_s", "hold_s",
                 "gripper_min")


class Cores(NamedTuple):
    """What the pure cores of the node are built from, for one loaded model."""

    ingest: IngestConfig
    chunks: ChunkConfig
    limits: SafetyLimits
    latency: LatencyEstimator


@dataclass
class PolicyParams:
    """Every validated parameter but autostart (meanings in ``PARAMETERS``; lists stay lists so
    messages print them as the user wrote them)."""

    model: str
    backend: str
    device: str
    instruction: str
    base_frame: str
    blend: str
    interpolation: str
    torch_threads: int
    video_steps: int
    action_steps: int
    action_temperature: float
    execute_steps: int
    latency_window: int
    image_size: list[int]
    expect_image_size: list[int] | None  # None: any size ([0, 0])
    workspace_min: list[float]
    workspace_max: list[float]
    command_rate_hz: float
    commander: str
    commander_priority: int
    diagnostics_rate_hz: float
    latency_percentile: float
    publish_plan: bool
    publish_predicted: bool
    prefix_conditioning: bool
    stamp_tolerance_s: float
    max_obs_age_s: float
    camera_timeout_s: float
    pose_timeout_s: float
    gripper_timeout_s: float
    max_linear_speed: float
    max_angular_speed: float
    max_linear_accel: float
    max_angular_accel: float
    max_command_gap_s: float
    gripper_max: float
    max_future_skew_s: float
    latency_margin_s: float
    latency_initial_s: float
    latency_offset_s: float
    hold_s: float
    gripper_min: float
    camera_topics: list[str]

    @classmethod
    def from_values(cls, values: Mapping[str, object]) -> PolicyParams:
        """Convert and range-check raw parameter values (by name; YAML may give 1 for 1.0).

        Raises:
            ValueError: naming the first parameter that is wrong, its value and what was expected.
        """
        v = values

        def number(name, lo=None, hi=None, integer=False, lo_open=False):
            x = v[name]
            try:
                if isinstance(x, bool) or (integer and float(x) != int(x)):
                    raise TypeError
                x = int(x) if integer else float(x)
            except (TypeError, ValueError):
                kind = "an integer" if integer else "a number"
                raise ValueError(f"parameter {name} = {v[name]!r}: expected {kind}") from None
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
                kind = "integers" if integer else "numbers"
                raise ValueError(f"parameter {name} = {x!r}: expected {n} {kind}") from None
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
            "commander": text("commander", COMMANDERS),
            "commander_priority": number("commander_priority", 0, 99, integer=True),
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
        p.update({name: number(name, 0.0, lo_open=True) for name in _POSITIVE_S})
        p.update({name: number(name, 0.0) for name in _NON_NEGATIVE})
        cams = v["camera_topics"]
        if isinstance(cams, str) or not all(isinstance(t, str) and t for t in (cams or [])):
            raise ValueError(f"parameter camera_topics = {cams!r}: expected a list of image topic names")
        p["camera_topics"] = list(cams)
        if not p["base_frame"]:
            raise ValueError("parameter base_frame is empty: expected the robot base frame "
                             "(e.g. panda_link0)")
        p["expect_image_size"] = None if p["expect_image_size"] == [0, 0] else p["expect_image_size"]
        if 1.0 / p["command_rate_hz"] >= p["max_command_gap_s"]:
            raise ValueError(f"parameter max_command_gap_s = {p['max_command_gap_s']}: expected more than "
                             f"one command period (1 / command_rate_hz = {1.0 / p['command_rate_hz']:.4g} s)")
        check_backend(p["backend"])  # last: its message has no "parameter" prefix, as the loader's
        return cls(**p)

    def backend_options(self) -> dict[str, object]:
        """Options of `load_policy` these parameters set: torch takes its threads process-wide
        (torch.set_num_threads), an onnxruntime bundle per session."""
        return {"threads": self.torch_threads} if self.backend == "onnxruntime" and self.torch_threads > 0 else {}

    def cores(self, policy, model_path: Path, pose_topic: str, gripper_topic: str) -> Cores:
        """The core settings for a loaded `policy` (horizon, cameras and obs_hz are the model's).

        Raises:
            ValueError: a parameter that does not fit the model, or a combination the cores refuse.
        """
        cfg = policy.cfg
        if self.execute_steps > cfg.horizon:
            raise ValueError(f"parameter execute_steps {self.execute_steps} > horizon {cfg.horizon} of the "
                             f"model {model_path}: a chunk has only {cfg.horizon} actions to execute")
        if len(self.camera_topics) != len(cfg.cameras):
            raise ValueError(f"parameter camera_topics = {self.camera_topics}: expected one topic per model "
                             f"camera {list(cfg.cameras)} (in that order)")
        try:
            ingest = IngestConfig(
                cameras=dict(zip(cfg.cameras, self.camera_topics)), pose_topic=pose_topic,
                gripper_topic=gripper_topic, frame_id=self.base_frame, image_size=tuple(self.image_size),
                expect_size=self.expect_image_size, stamp_tolerance_s=self.stamp_tolerance_s,
                max_age_s=self.max_obs_age_s, camera_timeout_s=self.camera_timeout_s,
                pose_timeout_s=self.pose_timeout_s, gripper_timeout_s=self.gripper_timeout_s,
                max_future_skew_s=self.max_future_skew_s,
                # pose / gripper samples must outlive the oldest observation still usable
                history_s=max(1.0, self.max_obs_age_s + max(self.pose_timeout_s, self.gripper_timeout_s)))
            chunks = ChunkConfig(
                horizon=cfg.horizon, execute_steps=self.execute_steps, dt=1.0 / policy.obs_hz,
                blend=self.blend, interpolation=self.interpolation, latency_margin=self.latency_margin_s,
                hold_s=self.hold_s, latency_offset=self.latency_offset_s)
            limits = SafetyLimits(
                workspace_min=tuple(self.workspace_min), workspace_max=tuple(self.workspace_max),
                max_linear_speed=self.max_linear_speed, max_angular_speed=self.max_angular_speed,
                max_linear_accel=self.max_linear_accel, max_angular_accel=self.max_angular_accel,
                gripper_min=self.gripper_min, gripper_max=self.gripper_max, frame_id=self.base_frame,
                max_dt=self.max_command_gap_s)
            latency = LatencyEstimator(window=self.latency_window, percentile=self.latency_percentile,
                                       initial=self.latency_initial_s,
                                       min_samples=min(3, self.latency_window))
        except ValueError as exc:
            raise ValueError(f"parameters: {exc}") from None
        return Cores(ingest, chunks, limits, latency)
