"""avdp-eval-ros's evaluator node: an `EpisodeDriver` that also records what the policy node and
the bridge did in each episode, and relays the policy's cameras when a fault is injected there.

Recorded: every target_frame command (stamps and arrival times), current_pose (achieved path),
both cameras (video, while an episode is filmed), /avdp/plan, /avdp/chunk_timing (one message
per inference), the policy's /diagnostics and its warnings on /rosout. `run_episode` hands one
episode's share of it over as an `evaluation.ros_metrics.Episode`.
"""

from __future__ import annotations

import math
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path as PathMsg
from rcl_interfaces.msg import Log
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from avdp_ros.evaluation.faults import RELAY_TOPIC, RELAYED, STALE_OFFSET_S, FaultSpec, relay_action
from avdp_ros.evaluation.ros_metrics import Episode
from avdp_ros.images import to_rgb
from avdp_ros.nodes import topics
from avdp_ros.nodes.episode_driver import EpisodeDriver
from avdp_ros.nodes.msgs import pose_from_msg, stamp_from_sec


def _level(status) -> int:
    return status.level[0] if isinstance(status.level, bytes) else int(status.level)


class EvalRecorder(EpisodeDriver):
    """Records episodes run over topics and services only.

    Args:
        camera_topics: the policy's cameras as configured (its `camera_topics` parameter); with a
            relayed fault the policy reads RELAY_TOPIC instead and this node feeds it.
        fault: the fault of every episode.
        context: rclpy context; None = the default one.
    """

    def __init__(self, camera_topics: list[str], fault: FaultSpec, context=None):
        self.camera_topics, self.fault = list(camera_topics), fault
        super().__init__("avdp_eval", context=context)

    def _create_io(self) -> None:
        # the policy node's topic names, imported here: loading this module should not load the
        # policy node's inference stack
        from avdp_ros.nodes.policy_node import CHUNK_TIMING, DIAGNOSTICS, PLAN

        self.commands: list[tuple] = []
        self.poses: list[tuple] = []
        self.chunks: list[dict] = []
        self.plans: list[tuple[float, np.ndarray]] = []
        self.diags: list[tuple[float, int, str, dict]] = []  # (stamp, level, message, values)
        self.logs: list[tuple[float, str]] = []
        self.frames: list[tuple[float, np.ndarray]] | None = None  # set while an episode is filmed
        self._last_cam: dict[int, tuple[float, object]] = {}
        self.window: tuple[float, float] | None = None  # relay fault window (relative stamps)
        self.relayed = {"dropped": 0, "restamped": 0, "forwarded": 0}

        self.create_subscription(PoseStamped, topics.TARGET_FRAME, self._on_command, topics.COMMAND_QOS)
        self.create_subscription(PathMsg, PLAN, self._on_plan, topics.SENSOR_QOS)
        self.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diag, 10)
        self.create_subscription(DiagnosticArray, CHUNK_TIMING, self._on_chunk, topics.STATE_QOS)
        # reliable and deep: a warning burst during a fault is what the report must show
        self.create_subscription(Log, "/rosout", self._on_log,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self._relay_pubs = {}
        for i, topic in enumerate(self.camera_topics):
            self.create_subscription(Image, topic, lambda m, i=i: self._on_image(i, m), topics.SENSOR_QOS)
            if self.fault.kind in RELAYED:
                self._relay_pubs[i] = self.create_publisher(Image, RELAY_TOPIC.format(i), topics.SENSOR_QOS)

    # ----- callbacks (executor thread) ---------------------------------------------------------
    def _record_pose(self, t: float, msg) -> None:
        self.poses.append((t, *pose_from_msg(msg.pose)))

    def _on_command(self, msg) -> None:
        arrival = time.perf_counter()
        with self._cv:
            if self.origin_ns is not None:
                self.commands.append((arrival, self.rel(msg.header.stamp), *pose_from_msg(msg.pose)))
                self._cv.notify_all()

    def _on_plan(self, msg) -> None:
        with self._lock:
            if self.origin_ns is not None and msg.poses:
                self.plans.append((self.rel(msg.header.stamp), np.array(
                    [[self.rel(p.header.stamp), p.pose.position.x, p.pose.position.y, p.pose.position.z]
                     for p in msg.poses])))

    def _on_diag(self, msg) -> None:
        with self._cv:
            if self.origin_ns is None:
                return
            for s in msg.status:
                if s.name == "avdp_policy":
                    self.diags.append((self.rel(msg.header.stamp), _level(s), s.message,
                                       {kv.key: kv.value for kv in s.values}))
            self._cv.notify_all()

    def _on_chunk(self, msg) -> None:
        with self._cv:
            if self.origin_ns is None:
                return
            origin = self.origin_ns * 1e-9
            for s in msg.status:
                v = {kv.key: kv.value for kv in s.values}
                self.chunks.append({
                    "t_obs": float(v["t_obs"]) - origin, "arrival": float(v["arrival"]) - origin,
                    "obs_to_chunk_ms": float(v["obs_to_chunk_ms"]),
                    "total_ms": float(v.get("total_ms", "nan")),
                    "kept": int(v.get("kept", 0)), "dropped": int(v.get("dropped", 0)),
                    "plan_end": float(v["plan_end"]) - origin if v.get("plan_end") else math.nan,
                    "error": s.message if _level(s) != 0 else ""})
            self._cv.notify_all()

    def _on_log(self, msg) -> None:
        if msg.name == "avdp_policy" and msg.level >= Log.WARN:
            with self._lock:
                # log stamps are wall time even on sim time: use the bridge clock
                if self.origin_ns is not None:
                    self.logs.append((self.clock, msg.msg))

    def _on_image(self, i: int, msg) -> None:
        if self.origin_ns is None:
            return
        t = self.rel(msg.header.stamp)
        frames = self.frames  # once: the caller's thread ends a filmed episode by setting it to None
        if frames is not None:
            self._film(i, t, msg, frames)
        pub = self._relay_pubs.get(i)
        if pub is None:
            return
        action = relay_action(self.fault.kind, i, t, self.window)
        if action == "drop":
            self.relayed["dropped"] += 1
            return
        if action == "restamp":
            msg.header.stamp = stamp_from_sec((self.origin_ns * 1e-9 + t) - STALE_OFFSET_S)
            self.relayed["restamped"] += 1
        self.relayed["forwarded"] += 1
        pub.publish(msg)

    def _film(self, i: int, t: float, msg, frames: list) -> None:
        self._last_cam[i] = (t, msg)
        if len(self._last_cam) == 2 and self._last_cam[0][0] == self._last_cam[1][0] and i == 1:
            rgb = [to_rgb(self._last_cam[k][1]) for k in (0, 1)]
            if rgb[0].shape == rgb[1].shape:
                with self._lock:  # the episode may have ended during the conversion: keep its frames as handed over
                    if self.frames is frames:
                        frames.append((t, np.concatenate(rgb, axis=1)))

    # ----- episodes (caller's thread) ---------------------------------------------------------
    def wait_ready(self, timeout: float, alive=None) -> None:
        """Until the policy commands (configured, active, anchored) and has published diagnostics."""
        self.wait_for(lambda: self.commands and self.diags, timeout, "command on target_frame and "
                      "/diagnostics from the policy node (model still loading? see its log)", alive)

    def snapshot(self, after: float, timeout: float, alive=None) -> dict:
        """Values of the first /diagnostics stamped after `after` (relative s)."""
        self.wait_for(lambda: self.diags and self.diags[-1][0] > after, timeout, "/diagnostics", alive)
        with self._lock:
            return next(d for d in self.diags if d[0] > after)[3]

    def run_episode(self, seed: int, time_limit: float, settle: float, real_time_factor: float = 1.0,
                    film: bool = False, alive=None) -> Episode:
        """Episode `seed`, ended by `wait_success(settle, time_limit)`, and the first /diagnostics
        after it. `real_time_factor` is the sim's pace: the wall-clock bounds on both waits scale
        with it. `film`: keep both cameras' frames."""
        self.set_seed(seed)
        with self._lock:
            diag_before = self.diags[-1][3] if self.diags else {}
            self.frames = [] if film else None
            self._last_cam = {}
        self.reset(expect_seed=seed)
        t0 = self.t_reset
        ep = Episode(seed=seed, t_start=t0, diag_before=diag_before)
        if self.fault.kind != "none":
            ep.fault_window = (t0 + self.fault.start_s, t0 + self.fault.start_s + self.fault.duration_s)
        if self.fault.kind in RELAYED:
            self.window = ep.fault_window
        since = self.wait_success(settle, time_limit, 3.0 * time_limit / real_time_factor + 60.0, alive)
        with self._lock:
            ep.t_end = self.clock
            ep.success = since is not None
            ep.duration_s = (since - t0) if ep.success else time_limit
            ep.commands = np.array([c for c in self.commands if t0 <= c[1] <= ep.t_end]).reshape(-1, 9)
            ep.poses = np.array([p for p in self.poses if t0 <= p[0] <= ep.t_end]).reshape(-1, 8)
            ep.chunks = [c for c in self.chunks if t0 <= c["arrival"] <= ep.t_end]
            ep.plans = [p for t, p in self.plans if t0 <= t <= ep.t_end]
            ep.frames, self.frames = self.frames or [], None
            ep.messages = sorted([(t, f"diagnostics: {m}") for t, lvl, m, _ in self.diags
                                  if t0 <= t <= ep.t_end and lvl != 0]
                                 + [(t, f"log: {m}") for t, m in self.logs if t0 <= t <= ep.t_end]
                                 + [(c["arrival"], f"chunk refused: {c['error']}")
                                    for c in ep.chunks if c["error"]])
            self.window = None
            # keep memory flat over long runs: the episode took what it needs
            self.commands, self.poses = self.commands[-10:], self.poses[-10:]
            self.chunks, self.plans, self.logs = [], [], []
            self.diags = self.diags[-5:]
        ep.diag_after = self.snapshot(ep.t_end, 10.0 + 2.0 / real_time_factor, alive)
        return ep
