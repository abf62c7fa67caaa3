"""avdp-eval-ros: closed-loop evaluation of a policy checkpoint *through ROS*: the MuJoCo bridge and
the policy node run as they do on the robot, and an evaluator node drives N seeded episodes over
topics and services only. Reports success (comparable with `avdp-eval`: same seeds, same time
limit), obs-to-chunk latency, command period jitter, chunk age, safety interventions; with
`--fault`, what the commander did when the fault was injected.

    avdp-eval-ros --policy models/avdp_default --task push --episodes 50 --seed 100000 --out runs/eval_ros/push
    avdp-eval-ros --episodes 1 --fault camera_dropout --out runs/eval_ros/camera_dropout
    avdp-eval --report runs/eval_ros        # table of these summaries next to avdp-eval's

The stack is `avdp-run policy --robot sim --processes`: bridge and policy node from
config/policy.yaml, one process each like `ros2 launch`, so the commander's timing is the policy
node's own and not the evaluator's or the renderer's GIL (`--in-process`: one process, faster to
start; the tests use it). The evaluator node:

- seeds episode i with seed + i: sets the bridge's `seed` parameter (SetParameters), calls
  /avdp/sim/reset; the policy node sees the new episode on /avdp/episode_info and drops its plan,
  frame history and filter anchor;
- ends it when /avdp/episode_info says success for `--settle` s, or after `--time-limit` s, both
  on the bridge's clock (header stamps), so a slow CPU does not change the episode's length;
- records every target_frame command (stamps and arrival times), current_pose (achieved path),
  both cameras (video), /avdp/plan, /avdp/chunk_timing (one message per inference: obs-to-chunk
  latency), /diagnostics (safety and ingest counters) and the policy node's warnings on /rosout.

Faults (`--fault`), injected on the real path during [--fault-start, + --fault-duration) s of
every episode (bridge clock):

- camera_dropout: the policy's camera topics are remapped (its `camera_topics` parameter) to a
  relay in the evaluator, which stops forwarding the first (third-person) camera;
- stale_stamps: the relay forwards both cameras re-stamped STALE_OFFSET_S in the past;
- nan_actions: the loaded policy is wrapped (`NanActions`, defined here and used only here): the
  chunks of observations in the window come back all-NaN.

On a CPU too slow (or too busy) for the model at real time, `--use-sim-time --real-time-factor
0.25` slows the sim and every node's clock with it: the loop then behaves as on a fast machine,
and latencies are reported in sim time (model infer stays wall time).

Outputs in --out: summary.json, report.md, latency_hist.png, ee_path.png, rollout.mp4.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("MUJOCO_GL", "egl")

FAULTS = ("none", "camera_dropout", "nan_actions", "stale_stamps")
RELAYED = ("camera_dropout", "stale_stamps")  # faults injected by the camera relay
RELAY_TOPIC = "/avdp_eval/relay/camera{}/image_raw"  # the policy's i-th camera while relayed
STALE_OFFSET_S = 1.0  # stale_stamps: how far in the past frames are re-stamped
HOLD_EPS = 1e-4  # m/s (and rad/s): a command "moves" faster than this; held commands are bit-identical
LIMIT_SLACK = 1e-3  # relative: speeds are recomputed from ns stamps, the filter used float seconds
NAN_CHILD = "--nan-policy-child"  # argv[1] of the policy process this module starts for nan_actions


# ===================================================================== configuration
@dataclass
class FaultSpec:
    kind: str = "none"  # one of FAULTS
    start_s: float = 3.0  # after the episode reset, bridge clock
    duration_s: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f"fault '{self.kind}': expected one of {', '.join(FAULTS)}")
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise ValueError(f"fault start {self.start_s}: expected seconds >= 0 after the reset")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"fault duration {self.duration_s}: expected seconds > 0")


@dataclass
class EvalRosConfig:
    policy: str = "models/avdp_default"
    task: str = "push"
    episodes: int = 10
    seed: int = 100_000  # episode i uses seed + i, as avdp-eval
    time_limit: float = 15.0  # s of bridge clock per episode, as avdp-eval's sim seconds
    settle: float = 0.5  # s success must hold (avdp-collect's default)
    videos: int = 1  # episodes recorded into rollout.mp4
    threads: int | None = None  # avdp_policy.torch_threads (None: the config's)
    use_sim_time: bool = False  # every node on the bridge's /clock (a loaded CPU then slows the sim, not the loop)
    real_time_factor: float = 1.0  # != 1 needs use_sim_time
    in_process: bool = False
    config: Path | None = None  # parameter YAML (default config/policy.yaml)
    overrides: dict = field(default_factory=dict)  # {node: {param: value}} from --set
    fault: FaultSpec = field(default_factory=FaultSpec)
    out: Path | None = None
    startup_timeout: float = 300.0  # s until the policy commands (model load in a fresh process)
    plot_episodes: int = 3

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes {self.episodes}: expected >= 1")
        if not (self.time_limit > 0 and self.settle >= 0):
            raise ValueError(f"time limit {self.time_limit} / settle {self.settle}: expected > 0 / >= 0 s")
        if not self.real_time_factor > 0:
            raise ValueError(f"real time factor {self.real_time_factor}: expected > 0 (sim paced against the wall)")
        if self.real_time_factor != 1.0 and not self.use_sim_time:
            raise ValueError(f"real time factor {self.real_time_factor} needs use_sim_time (stamps from /clock)")
        if self.fault.kind != "none" and self.fault.start_s + self.fault.duration_s >= self.time_limit:
            raise ValueError(f"fault window {self.fault.start_s} + {self.fault.duration_s} s does not end before the "
                             f"time limit {self.time_limit} s: recovery could not be seen")


# ===================================================================== fault: NaN actions
class NanActions:
    """A policy whose chunks are all-NaN for observations in [start_s, start_s + duration_s) after
    the episode's first observation; otherwise the wrapped policy's answer unchanged. The model
    still runs (same timing); only its output is replaced, as a numerically broken head would."""

    def __init__(self, policy, start_s: float, duration_s: float):
        self._policy = policy
        self.start_s, self.duration_s = float(start_s), float(duration_s)
        self.injected = 0
        self._t0: float | None = None

    def __getattr__(self, name):  # obs_hz, cfg, kind, ... of the wrapped policy
        return getattr(self._policy, name)

    def reset(self) -> None:
        self._t0 = None
        self._policy.reset()

    def _in_window(self, obs: dict) -> bool:
        t = float(obs["t_obs"])
        if self._t0 is None:
            self._t0 = t
        return self.start_s <= t - self._t0 < self.start_s + self.duration_s

    def observe(self, obs: dict):
        self._in_window(obs)
        return self._policy.observe(obs)

    def infer(self, obs: dict, **kwargs) -> dict:
        inject = self._in_window(obs)
        out = self._policy.infer(obs, **kwargs)
        if inject:
            self.injected += 1
            out = {**out, "actions": np.full_like(np.asarray(out["actions"], dtype=np.float64), np.nan)}
        return out


def make_nan_policy_node(fault: FaultSpec, **node_kwargs):
    """The policy node with its loaded policy wrapped in NanActions (`autostart` must be false:
    configure, wrap, activate)."""
    from rclpy.lifecycle import TransitionCallbackReturn

    from avdp_ros.nodes.policy_node import PolicyNode

    node = PolicyNode(**node_kwargs)
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        error = node.configure_error or "configure failed"
        node.destroy_node()
        raise ValueError(f"avdp_policy: {error}")
    node.policy = NanActions(node.policy, fault.start_s, fault.duration_s)
    node.trigger_activate()
    return node


def _nan_policy_child(argv: list[str]) -> int:
    """`python -m avdp_ros.tools.eval_ros --nan-policy-child START DURATION --ros-args ...`."""
    from avdp_ros.nodes.spin import run_node

    fault = FaultSpec("nan_actions", float(argv[1]), float(argv[2]))
    run_node(lambda: make_nan_policy_node(fault), [sys.argv[0], *argv[3:]])
    return 0


# ===================================================================== pure analysis
def percentiles(values, qs=(50, 99)) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, q)) if v.size else math.nan for q in qs]


def speeds(stamps: np.ndarray, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear (m/s) and angular (rad/s) speed of each step between successive commands (N-1,)."""
    from avdp_ros.geometry import quat_angle

    dt = np.diff(stamps)
    if dt.size == 0:
        return np.zeros(0), np.zeros(0)
    dt = np.where(dt > 0, dt, np.nan)  # a repeated stamp is no motion we can rate
    lin = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1) / dt
    ang = quat_angle(poses[:-1, 3:], poses[1:, 3:]) / dt
    return np.nan_to_num(lin), np.nan_to_num(ang)


def chunk_ages_ms(cmd_stamps: np.ndarray, chunks: list[dict]) -> np.ndarray:
    """Age (ms) of the executing chunk's observation at each command: command stamp minus t_obs of
    the newest accepted chunk that had arrived, for commands inside that chunk's plan."""
    ok = sorted((c for c in chunks if not c["error"] and c["kept"] > 0), key=lambda c: c["arrival"])
    if not ok:
        return np.zeros(0)
    arrivals = np.array([c["arrival"] for c in ok])
    idx = np.searchsorted(arrivals, cmd_stamps, side="right") - 1
    ages = []
    for t, i in zip(cmd_stamps, idx):
        if i >= 0 and t <= ok[i]["plan_end"]:
            ages.append((t - ok[i]["t_obs"]) * 1e3)
    return np.asarray(ages)


def in_intervals(t: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(t.shape, dtype=bool)
    for a, b in intervals:
        mask |= (t >= a) & (t <= b)
    return mask


def fault_outcome(window: tuple[float, float], stamps: np.ndarray, poses: np.ndarray, chunks: list[dict],
                  hold_s: float, period_s: float) -> dict:
    """What the commander did around a fault window [a, b) (times relative to the episode start).

    The commander may finish the plan it had when the fault began: it must hold from
    `hold_from` = (end of the last plan accepted before b) + hold_s on. Returns the predicted and
    the measured hold, the fastest command inside the hold (must be ~0), the fastest inside the
    whole window (within the limits anyway), and when motion resumed after b.
    """
    a, b = window
    lin, ang = speeds(stamps, poses)
    moving = (lin > HOLD_EPS) | (ang > HOLD_EPS)  # step k is stamps[k] -> stamps[k+1]
    before_b = [c for c in chunks if not c["error"] and c["kept"] > 0 and c["arrival"] < b]
    plan_end = max((c["plan_end"] for c in before_b), default=-math.inf)
    hold_from = max(a, plan_end + hold_s + period_s)  # one period: the tick that finds the plan stale
    steps_in_hold = (stamps[:-1] >= hold_from) & (stamps[1:] <= b)
    win = (stamps[:-1] >= a) & (stamps[1:] <= b)
    before = (stamps[:-1] >= a - 1.0) & (stamps[1:] <= a)  # was it moving at all? (else nothing to stop)
    moved_in_win = np.flatnonzero(win & moving)
    onset = float(stamps[moved_in_win[-1] + 1]) if moved_in_win.size else a  # last move ended here
    after = np.flatnonzero((stamps[:-1] >= b) & moving)
    accepted_after = [c for c in chunks if not c["error"] and c["kept"] > 0 and c["arrival"] >= b]
    return {
        "window_s": [round(a, 3), round(b, 3)],
        "last_plan_end_s": round(plan_end, 3) if math.isfinite(plan_end) else None,
        "hold_expected_from_s": round(hold_from, 3),
        "hold_expected_s": round(max(0.0, b - hold_from), 3),
        "commands_in_hold": int(steps_in_hold.sum()),
        "max_speed_in_hold": float(lin[steps_in_hold].max()) if steps_in_hold.any() else None,
        "max_angular_speed_in_hold": float(ang[steps_in_hold].max()) if steps_in_hold.any() else None,
        "held": bool(steps_in_hold.sum() >= 2 and not moving[steps_in_hold].any()),
        "measured_hold_from_s": round(onset, 3),
        "measured_hold_s": round(b - onset, 3),
        "reaction_s": round(onset - a, 3),
        "max_speed_in_window": float(lin[win].max()) if win.any() else None,
        "max_speed_1s_before": float(lin[before].max()) if before.any() else None,
        "chunks_rejected_in_window": sum(1 for c in chunks if c["error"] and a <= c["arrival"] < b + 0.5),
        "first_chunk_after_s": round(accepted_after[0]["arrival"] - b, 3) if accepted_after else None,
        "resumed_after_s": round(float(stamps[after[0] + 1]) - b, 3) if after.size else None,
        "recovered": bool(after.size),
    }


# ===================================================================== recording
@dataclass
class Episode:
    """What the evaluator recorded for one episode; times in s relative to the run's origin
    (bridge clock)."""

    seed: int
    t_start: float
    t_end: float = math.nan
    success: bool = False
    duration_s: float = math.nan
    commands: np.ndarray = field(default_factory=lambda: np.zeros((0, 9)))  # (N, 9) arrival, stamp, pose7
    poses: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))  # (M, 8) stamp, pose7
    chunks: list[dict] = field(default_factory=list)
    plans: list[np.ndarray] = field(default_factory=list)  # (K, 4) stamp, xyz per /avdp/plan
    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (stamp, both cameras side by side)
    fault_window: tuple[float, float] | None = None
    diag_before: dict = field(default_factory=dict)
    diag_after: dict = field(default_factory=dict)
    messages: list[tuple[float, str]] = field(default_factory=list)  # non-OK /diagnostics, policy warnings


def _numbers(values: dict) -> dict[str, float]:
    """The numeric entries of a /diagnostics key-value dict; text entries (estop "clear", reasons)
    are not counters and are left out."""
    out = {}
    for k, v in values.items():
        try:
            out[k] = float(v)
        except ValueError:
            continue  # a text value: nothing to count
    return out


def counter_delta(before: dict, after: dict, prefixes=("safety.", "ingest.", "chunks_rejected", "inference_errors",
                                                        "inference_overruns", "no_observation")) -> dict[str, int]:
    """Counters of the policy's /diagnostics that rose between two snapshots."""
    b, a = _numbers(before), _numbers(after)
    return {k: int(a[k] - b.get(k, 0)) for k in sorted(a) if k.startswith(prefixes) and a[k] - b.get(k, 0) > 0}


class EvalDriver:
    """The evaluator node: runs episodes over topics and services only and records them."""

    def __init__(self, camera_topics: list[str], fault: FaultSpec, context=None):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Path as PathMsg
        from rcl_interfaces.msg import Log
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from avdp_ros.nodes import topics
        from avdp_ros.nodes.policy_node import CHUNK_TIMING, DIAGNOSTICS, PLAN
        from avdp_ros.nodes.spin import spin_in_thread
        from avdp_ros.stack import NODES

        self._Trigger, self._SetParameters, self._Log = Trigger, SetParameters, Log
        self.fault = fault
        self.node = node = Node("avdp_eval", context=context)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self.origin_ns: int | None = None  # first current_pose stamp: times are relative to it
        self.clock = -math.inf  # newest current_pose stamp (relative): the bridge's clock
        self.info: dict = {}
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

        node.create_subscription(PoseStamped, topics.TARGET_FRAME, self._on_command, topics.COMMAND_QOS)
        node.create_subscription(PoseStamped, topics.CURRENT_POSE, self._on_pose, topics.STATE_QOS)
        node.create_subscription(String, topics.EPISODE_INFO, self._on_info, topics.LATCHED_QOS)
        node.create_subscription(PathMsg, PLAN, self._on_plan, topics.SENSOR_QOS)
        node.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diag, 10)
        node.create_subscription(DiagnosticArray, CHUNK_TIMING, self._on_chunk, topics.STATE_QOS)
        node.create_subscription(Log, "/rosout", self._on_log, QoSProfile(depth=100,
                                                                         reliability=ReliabilityPolicy.RELIABLE))
        self._relay_pubs = {}
        for i, topic in enumerate(camera_topics):
            node.create_subscription(Image, topic, lambda m, i=i: self._on_image(i, m), topics.SENSOR_QOS)
            if fault.kind in RELAYED:
                self._relay_pubs[i] = node.create_publisher(Image, RELAY_TOPIC.format(i), topics.SENSOR_QOS)
        self.reset_client = node.create_client(Trigger, topics.SIM_RESET)
        self.param_client = node.create_client(SetParameters, f"/{NODES['sim_bridge'].name}/set_parameters")
        # Own executor thread: the same whether the stack runs in this process or not.
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(node)
        self._thread = spin_in_thread(self._executor, "avdp_eval")

    # ----- callbacks (executor thread) ---------------------------------------------------------
    def _rel(self, stamp) -> float:
        return (stamp.sec * 1_000_000_000 + stamp.nanosec - self.origin_ns) * 1e-9

    def _on_pose(self, msg) -> None:
        from avdp_ros.nodes.msgs import pose_from_msg

        with self._cv:
            if self.origin_ns is None:
                self.origin_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            t = self._rel(msg.header.stamp)
            self.poses.append((t, *pose_from_msg(msg.pose)))
            self.clock = max(self.clock, t)
            self._cv.notify_all()

    def _on_command(self, msg) -> None:
        from avdp_ros.nodes.msgs import pose_from_msg

        arrival = time.perf_counter()
        with self._cv:
            if self.origin_ns is not None:
                self.commands.append((arrival, self._rel(msg.header.stamp), *pose_from_msg(msg.pose)))
                self._cv.notify_all()

    def _on_info(self, msg) -> None:
        with self._cv:
            self.info = json.loads(msg.data)
            self._cv.notify_all()

    def _on_plan(self, msg) -> None:
        with self._lock:
            if self.origin_ns is not None and msg.poses:
                self.plans.append((self._rel(msg.header.stamp), np.array(
                    [[self._rel(p.header.stamp), p.pose.position.x, p.pose.position.y, p.pose.position.z]
                     for p in msg.poses])))

    def _on_diag(self, msg) -> None:
        with self._cv:
            if self.origin_ns is None:
                return
            for s in msg.status:
                if s.name == "avdp_policy":
                    level = s.level[0] if isinstance(s.level, bytes) else int(s.level)
                    self.diags.append((self._rel(msg.header.stamp), level, s.message,
                                       {kv.key: kv.value for kv in s.values}))
            self._cv.notify_all()

    def _on_chunk(self, msg) -> None:
        with self._cv:
            if self.origin_ns is None:
                return
            origin = self.origin_ns * 1e-9
            for s in msg.status:
                v = {kv.key: kv.value for kv in s.values}
                level = s.level[0] if isinstance(s.level, bytes) else int(s.level)
                self.chunks.append({
                    "t_obs": float(v["t_obs"]) - origin, "arrival": float(v["arrival"]) - origin,
                    "obs_to_chunk_ms": float(v["obs_to_chunk_ms"]), "total_ms": float(v.get("total_ms", "nan")),
                    "kept": int(v.get("kept", 0)), "dropped": int(v.get("dropped", 0)),
                    "plan_end": float(v["plan_end"]) - origin if v.get("plan_end") else math.nan,
                    "error": s.message if level != 0 else ""})
            self._cv.notify_all()

    def _on_log(self, msg) -> None:
        if msg.name == "avdp_policy" and msg.level >= self._Log.WARN:
            with self._lock:
                if self.origin_ns is not None:  # log stamps are wall time even on sim time: use the bridge clock
                    self.logs.append((self.clock, msg.msg))

    def _on_image(self, i: int, msg) -> None:
        from avdp_ros.nodes.msgs import stamp_from_sec

        if self.origin_ns is None:
            return
        t = self._rel(msg.header.stamp)
        if self.frames is not None:
            self._film(i, t, msg)
        pub = self._relay_pubs.get(i)
        if pub is None:
            return
        w = self.window
        if w is not None and w[0] <= t < w[1]:
            if self.fault.kind == "camera_dropout" and i == 0:
                self.relayed["dropped"] += 1
                return
            if self.fault.kind == "stale_stamps":
                msg.header.stamp = stamp_from_sec((self.origin_ns * 1e-9 + t) - STALE_OFFSET_S)
                self.relayed["restamped"] += 1
        self.relayed["forwarded"] += 1
        pub.publish(msg)

    def _film(self, i: int, t: float, msg) -> None:
        from avdp_ros.images import to_rgb

        self._last_cam[i] = (t, msg)
        if len(self._last_cam) == 2 and self._last_cam[0][0] == self._last_cam[1][0] and i == 1:
            rgb = [to_rgb(self._last_cam[k][1]) for k in (0, 1)]
            if rgb[0].shape == rgb[1].shape:
                self.frames.append((t, np.concatenate(rgb, axis=1)))

    # ----- episodes (caller's thread) ---------------------------------------------------------
    def _call(self, client, request, timeout: float = 30.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available after {timeout:.0f} s")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"{client.srv_name}: no reply after {timeout:.0f} s")
        return future.result()

    def _wait(self, predicate, timeout: float, what: str, alive=None):
        """Wait on the recorder's condition (notified by every pose / command / diagnostics)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"avdp-eval-ros: no {what} after {timeout:.0f} s")
                if alive is not None and not alive():
                    raise RuntimeError(f"avdp-eval-ros: a node process exited while waiting for {what}")
                self._cv.wait(min(left, 0.5))

    def wait_ready(self, timeout: float, alive=None) -> None:
        """Until the policy commands (configured, active, anchored) and has published diagnostics."""
        self._wait(lambda: self.commands and self.diags, timeout, "command on target_frame and /diagnostics "
                   "from the policy node (model still loading? see its log)", alive)

    def snapshot(self, after: float, timeout: float, alive=None) -> dict:
        """Values of the first /diagnostics stamped after `after` (relative s)."""
        self._wait(lambda: self.diags and self.diags[-1][0] > after, timeout, "/diagnostics", alive)
        with self._lock:
            return next(d for d in self.diags if d[0] > after)[3]

    def run_episode(self, seed: int, cfg: EvalRosConfig, film: bool, alive=None) -> Episode:
        from rclpy.parameter import Parameter

        res = self._call(self.param_client, self._SetParameters.Request(
            parameters=[Parameter("seed", value=int(seed)).to_parameter_msg()]))
        if not res.results or not res.results[0].successful:
            raise RuntimeError(f"setting avdp_sim_bridge.seed = {seed} failed: {res.results}")
        with self._lock:
            diag_before = self.diags[-1][3] if self.diags else {}
            self.frames = [] if film else None
            self._last_cam = {}
        res = self._call(self.reset_client, self._Trigger.Request())
        if not res.success:
            raise RuntimeError(f"/avdp/sim/reset failed: {res.message}")
        info = json.loads(res.message)
        if info.get("seed") != seed:
            raise RuntimeError(f"/avdp/sim/reset started seed {info.get('seed')}, expected {seed}")
        t0 = (round(info["stamp"] * 1e9) - self.origin_ns) * 1e-9
        ep = Episode(seed=seed, t_start=t0, diag_before=diag_before)
        if self.fault.kind != "none":
            ep.fault_window = (t0 + self.fault.start_s, t0 + self.fault.start_s + self.fault.duration_s)
        if self.fault.kind in RELAYED:
            self.window = ep.fault_window
        state, info_episode = {"since": None}, info["episode"]

        def finished() -> bool:
            info = self.info
            if info.get("episode") == info_episode and info.get("success"):
                since = (round(info["stamp"] * 1e9) - self.origin_ns) * 1e-9
                state["since"] = since if since <= t0 + cfg.time_limit else None
            elif info.get("episode") == info_episode:
                state["since"] = None
            if state["since"] is not None:
                return self.clock - state["since"] >= cfg.settle
            return self.clock >= t0 + cfg.time_limit

        self._wait(finished, 3.0 * cfg.time_limit / cfg.real_time_factor + 60.0,
                   f"end of episode (seed {seed}): is the bridge running?", alive)
        with self._lock:
            ep.t_end = self.clock
            ep.success = state["since"] is not None
            ep.duration_s = (state["since"] - t0) if ep.success else cfg.time_limit
            ep.commands = np.array([c for c in self.commands if t0 <= c[1] <= ep.t_end]).reshape(-1, 9)
            ep.poses = np.array([p for p in self.poses if t0 <= p[0] <= ep.t_end]).reshape(-1, 8)
            ep.chunks = [c for c in self.chunks if t0 <= c["arrival"] <= ep.t_end]
            ep.plans = [p for t, p in self.plans if t0 <= t <= ep.t_end]
            ep.frames, self.frames = self.frames or [], None
            ep.messages = sorted([(t, f"diagnostics: {m}") for t, lvl, m, _ in self.diags
                                  if t0 <= t <= ep.t_end and lvl != 0]
                                 + [(t, f"log: {m}") for t, m in self.logs if t0 <= t <= ep.t_end]
                                 + [(c["arrival"], f"chunk refused: {c['error']}") for c in ep.chunks if c["error"]])
            self.window = None
            # keep memory flat over long runs: the episode took what it needs
            self.commands, self.poses = self.commands[-10:], self.poses[-10:]
            self.chunks, self.plans, self.logs = [], [], []
            self.diags = self.diags[-5:]
        ep.diag_after = self.snapshot(ep.t_end, 10.0 + 2.0 / cfg.real_time_factor, alive)
        return ep

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=2.0)
        self.node.destroy_node()


# ===================================================================== the run
def _merged_params(config: Path, overrides: dict, node: str) -> dict:
    data = yaml.safe_load(config.read_text()) or {}
    return {**(data.get(node, {}) or {}).get("ros__parameters", {}), **overrides.get(node, {})}


class _Nodes:
    """The bridge + policy node, in this process (runner.Stack) or one process each (ProcessStack)."""

    def __init__(self, cfg: EvalRosConfig, config: Path, overrides: dict, context=None):
        from avdp_ros.runner import ProcessStack, Stack, ros_args

        self.stack = None
        use_sim_time = cfg.use_sim_time
        nan = cfg.fault.kind == "nan_actions"
        roles = ["sim_bridge"] if nan else ["sim_bridge", "policy"]
        policy_args = ros_args(config, {**overrides["avdp_policy"], "autostart": False}, use_sim_time)
        if cfg.in_process:
            self.stack = Stack(roles, config, {k: v for k, v in overrides.items() if k != "avdp_policy" or not nan},
                               use_sim_time=use_sim_time, context=context)
            if nan:
                try:
                    node = make_nan_policy_node(cfg.fault, cli_args=policy_args, context=self.stack.context)
                except Exception:
                    self.stack.shutdown()
                    raise
                self.stack.nodes["policy"] = node
                self.stack.executor.add_node(node)
            self.alive = lambda: True
        else:
            self.stack = ProcessStack(roles, config, overrides, use_sim_time)
            if nan:
                self.stack.procs["policy"] = subprocess.Popen(
                    [sys.executable, "-m", "avdp_ros.tools.eval_ros", NAN_CHILD, str(cfg.fault.start_s),
                     str(cfg.fault.duration_s), *policy_args])
            self.alive = self.stack.alive

    def shutdown(self) -> None:
        if self.stack is not None:
            self.stack.shutdown()
            self.stack = None


def run_evaluation(cfg: EvalRosConfig, context=None, progress: bool = True) -> dict:
    """Start the stack, run the episodes, write the outputs; returns the summary dict."""
    import rclpy
    from tqdm import tqdm

    from avdp_ros.runner import default_config, use_dds_profile

    config = cfg.config or default_config("policy")
    if not config.exists():
        raise FileNotFoundError(f"config file {config} does not exist")
    overrides = {k: dict(v) for k, v in cfg.overrides.items()}
    unknown = set(overrides) - {"avdp_sim_bridge", "avdp_policy"}
    if unknown:
        raise ValueError(f"--set for node(s) {sorted(unknown)}: expected avdp_sim_bridge or avdp_policy")
    bridge = overrides.setdefault("avdp_sim_bridge", {})
    bridge.update(task=cfg.task, seed=cfg.seed)
    if cfg.real_time_factor != 1.0:
        bridge["real_time_factor"] = cfg.real_time_factor
    pol = overrides.setdefault("avdp_policy", {})
    pol["model"] = str(Path(cfg.policy).expanduser().resolve())
    if cfg.threads is not None:
        pol["torch_threads"] = cfg.threads
    params = _merged_params(config, overrides, "avdp_policy")
    if not params.get("diagnostics_rate_hz", 1.0) > 0:
        raise ValueError("avdp_policy.diagnostics_rate_hz must be > 0: the evaluator reads /diagnostics and "
                         "/avdp/chunk_timing")
    cameras = list(params["camera_topics"])
    if cfg.fault.kind in RELAYED:
        pol["camera_topics"] = [RELAY_TOPIC.format(i) for i in range(len(cameras))]

    use_dds_profile()
    own_init = context is None and not cfg.in_process and not rclpy.ok()
    if own_init:
        rclpy.init()
    nodes = driver = None
    episodes: list[Episode] = []
    t_wall = time.monotonic()
    try:
        nodes = _Nodes(cfg, config, overrides, context)
        driver = EvalDriver(cameras, cfg.fault, context)
        driver.wait_ready(cfg.startup_timeout, nodes.alive)
        baseline = driver.snapshot(driver.clock, 30.0, nodes.alive)
        for i in tqdm(range(cfg.episodes), desc=f"eval-ros {cfg.task}", disable=not progress):
            ep = driver.run_episode(cfg.seed + i, cfg, film=i < cfg.videos, alive=nodes.alive)
            episodes.append(ep)
        final = episodes[-1].diag_after
    finally:
        if driver is not None:
            driver.close()
        if nodes is not None:
            nodes.shutdown()
        if own_init:
            rclpy.try_shutdown()
    summary = summarise(episodes, cfg, params, baseline, final, driver.relayed)
    summary["wall_s"] = round(time.monotonic() - t_wall, 1)
    if cfg.out is not None:
        write_outputs(cfg.out, summary, episodes, cfg)
    return summary


# ===================================================================== summary + outputs
def _max(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    return round(float(v.max()), 2) if v.size else math.nan


def _stats(prefix: str, values, qs=(50, 99), digits: int = 2) -> dict:
    return {f"{prefix}_p{q}": round(v, digits) for q, v in zip(qs, percentiles(values, qs))}


def running_from(ep: Episode) -> float:
    """Arrival of the episode's first accepted chunk (bridge clock): from then on the filter is
    anchored at the new episode's pose and the policy is running. Before it the commander only
    holds, after one jump from the previous episode's last command to the re-anchored pose."""
    return next((c["arrival"] for c in ep.chunks if not c["error"] and c["kept"] > 0), math.inf)


def episode_metrics(ep: Episode, params: dict) -> dict:
    """Per-episode numbers: latency, command timing, safety limits, the fault outcome. Times are
    seconds since the episode's reset from here on."""
    cmd = ep.commands
    stamps, poses = cmd[:, 1] - ep.t_start, cmd[:, 2:]
    chunks = [{**c, **{k: c[k] - ep.t_start for k in ("t_obs", "arrival", "plan_end")}} for c in ep.chunks]
    accepted = [c for c in chunks if not c["error"] and c["kept"] > 0]
    run = stamps >= running_from(ep) - ep.t_start
    lin, ang = speeds(stamps[run], poses[run])
    lo, hi = np.array(params["workspace_min"]), np.array(params["workspace_max"])
    period_s = 1.0 / float(params["command_rate_hz"])
    infer_windows = [(c["arrival"] - c["total_ms"] * 1e-3, c["arrival"]) for c in chunks
                     if math.isfinite(c["total_ms"])]
    st = stamps[run]
    during = in_intervals(st[1:], infer_windows) & in_intervals(st[:-1], infer_windows) if st.size > 1 else st[:0]
    m = {
        "seed": ep.seed, "success": bool(ep.success), "duration_s": round(float(ep.duration_s), 2),
        "commands": int(len(cmd)), "chunks": len(ep.chunks), "chunks_accepted": len(accepted),
        "chunks_rejected": sum(1 for c in ep.chunks if c["error"]),
        "plans": len(ep.plans),
        "first_chunk_s": round(accepted[0]["arrival"], 3) if accepted else None,
        "max_linear_speed": float(lin.max()) if lin.size else 0.0,
        "max_angular_speed": float(ang.max()) if ang.size else 0.0,
        "inside_workspace": bool(np.all(poses[:, :3] >= lo - 1e-9) and np.all(poses[:, :3] <= hi + 1e-9)),
        "counters": counter_delta(ep.diag_before, ep.diag_after),
        "_periods_arrival_ms": np.diff(cmd[run, 0]) * 1e3,
        "_periods_stamp_ms": np.diff(st) * 1e3,
        "_periods_infer_ms": np.diff(st)[during] * 1e3 if st.size > 1 else np.zeros(0),
        "_ages_ms": chunk_ages_ms(st, chunks),
    }
    m["within_limits"] = bool(m["inside_workspace"]
                              and m["max_linear_speed"] <= float(params["max_linear_speed"]) * (1 + LIMIT_SLACK)
                              and m["max_angular_speed"] <= float(params["max_angular_speed"]) * (1 + LIMIT_SLACK))
    if ep.fault_window is not None:
        a, b = ep.fault_window[0] - ep.t_start, ep.fault_window[1] - ep.t_start
        nan_chunks = [c for c in chunks if "non-finite" in c["error"]]
        if nan_chunks:  # the wrapper's window is on observation stamps: measure it from the chunks
            after = [c for c in accepted if c["t_obs"] > nan_chunks[-1]["t_obs"]]
            a, b = nan_chunks[0]["t_obs"], after[0]["t_obs"] if after else ep.t_end - ep.t_start
        out = fault_outcome((a, b), stamps, poses, chunks, float(params["hold_s"]), period_s)
        # what named it: the policy's non-OK /diagnostics and warnings from the fault to 1 s after it
        out["messages"] = list(dict.fromkeys(text[:240] for t, text in ep.messages if a <= t - ep.t_start <= b + 1.0))
        m["fault"] = out
    return m


def summarise(episodes: list[Episode], cfg: EvalRosConfig, params: dict, baseline: dict, final: dict,
              relayed: dict) -> dict:
    per = [episode_metrics(ep, params) for ep in episodes]
    cat = lambda key: np.concatenate([m[key] for m in per] or [np.zeros(0)])  # noqa: E731
    chunks = [c for ep in episodes for c in ep.chunks]
    # first inference of each episode excluded (warm-up after the reset), as avdp-eval does
    infer = [c["total_ms"] for ep in episodes for c in ep.chunks[1:]]
    o2c = [c["obs_to_chunk_ms"] for c in chunks if not c["error"]]
    ok = [m["success"] for m in per]
    s = {
        "task": cfg.task, "episodes": len(per), "success_rate": float(np.mean(ok)) if ok else 0.0,
        "failed_seeds": [m["seed"] for m in per if not m["success"]],
        "mean_duration_s": round(float(np.mean([m["duration_s"] for m in per])), 3) if per else 0.0,
        **_stats("infer_ms", infer, digits=1), "infer_calls": len(infer),
        "via": "ros", "mode": "in-process" if cfg.in_process else "processes", "policy": str(cfg.policy),
        "seed": cfg.seed, "time_limit_s": cfg.time_limit, "settle_s": cfg.settle,
        "use_sim_time": cfg.use_sim_time, "real_time_factor": cfg.real_time_factor, "torch_threads": params.get("torch_threads"),
        "command_rate_hz": params.get("command_rate_hz"), "fault": asdict(cfg.fault),
        **_stats("obs_to_chunk_ms", o2c, (50, 95, 99), 1), "obs_to_chunk_samples": len(o2c),
        "chunks": len(chunks), "chunks_rejected": sum(1 for c in chunks if c["error"]),
        **_stats("command_period_ms", cat("_periods_arrival_ms")),
        "command_period_ms_max": _max(cat("_periods_arrival_ms")),
        **_stats("command_stamp_period_ms", cat("_periods_stamp_ms")),
        "command_stamp_period_ms_max": _max(cat("_periods_stamp_ms")),
        **_stats("command_period_during_inference_ms", cat("_periods_infer_ms")),
        "command_period_during_inference_ms_max": _max(cat("_periods_infer_ms")),
        "command_periods_during_inference": int(cat("_periods_infer_ms").size),
        **_stats("chunk_age_ms", cat("_ages_ms"), digits=1),
        "max_linear_speed": max((m["max_linear_speed"] for m in per), default=0.0),
        "max_angular_speed": max((m["max_angular_speed"] for m in per), default=0.0),
        "within_limits": all(m["within_limits"] for m in per),
        "limits": {k: params[k] for k in ("max_linear_speed", "max_angular_speed", "workspace_min", "workspace_max")},
    }
    run = counter_delta(baseline, final)
    s["interventions"] = {k.removeprefix("safety."): n for k, n in run.items() if k.startswith("safety.")}
    s["counters"] = {k: n for k, n in run.items() if not k.startswith("safety.")}
    s["node_latency_ms"] = {k.removeprefix("latency."): float(v) for k, v in final.items()
                            if k.startswith("latency.") and k.endswith((".p50", ".p99"))}
    if cfg.fault.kind in RELAYED:
        s["relay"] = dict(relayed)
    s["results"] = [{k: v for k, v in m.items() if not k.startswith("_")} for m in per]
    return s


def _fmt(v, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3g}{unit}" if isinstance(v, float) else f"{v}{unit}"


def report_markdown(s: dict) -> str:
    fault = s["fault"]["kind"]
    lines = [f"# avdp-eval-ros: {s['policy']} on {s['task']}" + (f", fault {fault}" if fault != "none" else ""), "",
             f"{s['episodes']} episodes, seeds {s['seed']}..{s['seed'] + s['episodes'] - 1}, time limit "
             f"{s['time_limit_s']} s, success held {s['settle_s']} s; nodes as {s['mode']}, "
             f"{'sim time' if s['use_sim_time'] else 'wall time'}, real-time factor "
             f"{s['real_time_factor']}, torch threads {s['torch_threads']}, commands at {s['command_rate_hz']} Hz.", "",
             "| success | mean length (s) | failed seeds |", "| --- | --- | --- |",
             f"| {s['success_rate'] * 100:.0f}% | {s['mean_duration_s']:.1f} | "
             f"{', '.join(map(str, s['failed_seeds'][:20])) or '-'} |", "",
             "| latency (ms) | p50 | p95 | p99 | max | n |", "| --- | --- | --- | --- | --- | --- |",
             f"| obs -> chunk (t_obs to chunk in the plan) | {_fmt(s['obs_to_chunk_ms_p50'])} | "
             f"{_fmt(s['obs_to_chunk_ms_p95'])} | {_fmt(s['obs_to_chunk_ms_p99'])} | | {s['obs_to_chunk_samples']} |",
             f"| model infer (first per episode excluded) | {_fmt(s['infer_ms_p50'])} | | {_fmt(s['infer_ms_p99'])} "
             f"| | {s['infer_calls']} |",
             f"| command period, arrival at a subscriber | {_fmt(s['command_period_ms_p50'])} | | "
             f"{_fmt(s['command_period_ms_p99'])} | {_fmt(s['command_period_ms_max'])} | |",
             f"| command period, header stamps (commander timer) | {_fmt(s['command_stamp_period_ms_p50'])} | | "
             f"{_fmt(s['command_stamp_period_ms_p99'])} | {_fmt(s['command_stamp_period_ms_max'])} | |",
             f"| ... while an inference runs | {_fmt(s['command_period_during_inference_ms_p50'])} | | "
             f"{_fmt(s['command_period_during_inference_ms_p99'])} | "
             f"{_fmt(s['command_period_during_inference_ms_max'])} | {s['command_periods_during_inference']} |",
             f"| chunk age at execution (command stamp - t_obs) | {_fmt(s['chunk_age_ms_p50'])} | | "
             f"{_fmt(s['chunk_age_ms_p99'])} | | |", "",
             "Times are on the nodes' clock (" + ("sim time, /clock" if s["use_sim_time"] else "wall time")
             + "), except model infer (wall time) and the arrival periods (wall time at the evaluator). "
             "Periods count from each episode's first chunk; obs -> chunk counts chunks that entered the plan.", "",
             f"Safety: max commanded speed {s['max_linear_speed']:.3f} m/s, {s['max_angular_speed']:.3f} rad/s "
             f"(limits {s['limits']['max_linear_speed']}, {s['limits']['max_angular_speed']}); inside the workspace "
             f"box and the limits: **{'yes' if s['within_limits'] else 'NO'}**.", "",
             "Safety-filter interventions (commander ticks, whole run): "
             + (", ".join(f"{k} {n}" for k, n in s["interventions"].items()) or "none")
             + ". `stale` = ticks with no plan (each episode start until the first chunk, and faults).", "",
             "Other counters: " + (", ".join(f"{k} {n}" for k, n in s["counters"].items()) or "none") + ".", "",
             "| seed | success | length (s) | chunks (rejected) | first chunk (s) | max speed (m/s) | within limits |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in s["results"]:
        lines.append(f"| {r['seed']} | {'yes' if r['success'] else 'no'} | {r['duration_s']:.1f} | {r['chunks']} "
                     f"({r['chunks_rejected']}) | {_fmt(r['first_chunk_s'])} | {r['max_linear_speed']:.3f} | "
                     f"{'yes' if r['within_limits'] else 'NO'} |")
    faults = [r for r in s["results"] if "fault" in r]
    if faults:
        lines += ["", f"## Fault: {fault}", "",
                  "| seed | window (s) | max speed 1 s before | hold expected from (s) | held (s) | max speed in hold | "
                  "reaction (s) | max speed in window | resumed after (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in faults:
            f = r["fault"]
            lines.append(f"| {r['seed']} | {f['window_s'][0]:.2f}-{f['window_s'][1]:.2f} | "
                         f"{_fmt(f['max_speed_1s_before'])} | {_fmt(f['hold_expected_from_s'])} | {f['hold_expected_s']:.2f} "
                         f"({'held' if f['held'] else 'NOT held'}) | {_fmt(f['max_speed_in_hold'])} | "
                         f"{f['reaction_s']:.2f} | {_fmt(f['max_speed_in_window'])} | "
                         f"{_fmt(f['resumed_after_s']) if f['recovered'] else 'never'} |")
        for r in faults:
            lines += ["", f"Seed {r['seed']}: counters that rose: "
                      + (", ".join(f"{k} +{n}" for k, n in r["counters"].items()) or "none") + ".",
                      "Diagnostics / warnings during the fault:", ""]
            lines += [f"- `{m}`" for m in r["fault"]["messages"][:12]] or ["- none"]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, summary: dict, episodes: list[Episode], cfg: EvalRosConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(report_markdown(summary))

    chunks = [c for ep in episodes for c in ep.chunks]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    o2c = [c["obs_to_chunk_ms"] for c in chunks if not c["error"]]
    if o2c:
        ax[0].hist(o2c, bins=40, alpha=0.7, label="obs -> chunk")
        ax[0].hist([c["total_ms"] for c in chunks], bins=40, alpha=0.6, label="model infer")
        for q in (50, 95, 99):
            ax[0].axvline(np.percentile(o2c, q), ls="--", c="k", lw=0.8)
    ax[0].set(xlabel="ms", ylabel="chunks", title="latency per chunk (dashed: obs->chunk p50/p95/p99)")
    ax[0].legend()
    running = [ep.commands[ep.commands[:, 1] >= running_from(ep)] for ep in episodes]
    periods = [np.diff(c[:, 1]) * 1e3 for c in running if len(c) > 1]
    arrivals = [np.diff(c[:, 0]) * 1e3 for c in running if len(c) > 1]
    if periods:
        ax[1].hist(np.concatenate(arrivals), bins=60, alpha=0.6, label="arrival")
        ax[1].hist(np.concatenate(periods), bins=60, alpha=0.6, label="header stamp")
    ax[1].set(xlabel="ms", ylabel="commands", yscale="log", title="command period (from each episode's first chunk)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "latency_hist.png", dpi=110)
    plt.close(fig)

    shown = episodes[: max(1, cfg.plot_episodes)]
    fig, ax = plt.subplots(3, len(shown), figsize=(max(8.0, 4.2 * len(shown)), 7), squeeze=False, sharex="col")
    for j, ep in enumerate(shown):
        for k, axis in enumerate("xyz"):
            a = ax[k, j]
            if len(ep.commands):
                a.plot(ep.commands[:, 1] - ep.t_start, ep.commands[:, 2 + k], lw=1.2, label="commanded")
            if len(ep.poses):
                a.plot(ep.poses[:, 0] - ep.t_start, ep.poses[:, 1 + k], lw=1.0, label="achieved")
            for p in ep.plans:
                a.plot(p[:, 0] - ep.t_start, p[:, 1 + k], ".", ms=2, c="gray", alpha=0.4)
            if ep.fault_window is not None:
                a.axvspan(ep.fault_window[0] - ep.t_start, ep.fault_window[1] - ep.t_start, color="r", alpha=0.1)
            a.set_ylabel(f"{axis} (m)")
        ax[0, j].set_title(f"seed {ep.seed} ({'success' if ep.success else 'fail'})")
        ax[2, j].set_xlabel("s since reset")
    ax[0, 0].legend(fontsize=7)
    fig.suptitle("end effector: commanded (target_frame) vs achieved (current_pose); dots: planned waypoints"
                 + ("; red: fault window" if cfg.fault.kind != "none" else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "ee_path.png", dpi=110)
    plt.close(fig)

    frames = []
    for ep in episodes:
        for t, f in ep.frames:
            if ep.fault_window is not None and ep.fault_window[0] <= t < ep.fault_window[1]:
                f = f.copy()
                f[:4] = (255, 0, 0)  # red bar: the fault is on
            frames.append(f)
    if frames:
        import imageio.v2 as imageio

        imageio.mimwrite(out / "rollout.mp4", frames, fps=30, macro_block_size=1)


# ===================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == NAN_CHILD:
        return _nan_policy_child(argv)
    from avdp_ros.runner import parse_sets

    ap = argparse.ArgumentParser(prog="avdp-eval-ros", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default="models/avdp_default", help="checkpoint directory")
    ap.add_argument("--task", default="push", help="push | pick_place")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100_000, help="first seed (episode i: seed + i, as avdp-eval)")
    ap.add_argument("--time-limit", type=float, default=15.0, help="s per episode (bridge clock)")
    ap.add_argument("--settle", type=float, default=0.5, help="s success must hold before the episode ends")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default runs/eval_ros/<task>[_<fault>])")
    ap.add_argument("--config", type=Path, default=None, help="parameter YAML (default config/policy.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="override a parameter, e.g. avdp_policy.execute_steps=4")
    ap.add_argument("--videos", type=int, default=1, help="episodes recorded into rollout.mp4")
    ap.add_argument("--fault", default="none", choices=FAULTS)
    ap.add_argument("--fault-start", type=float, default=3.0, help="s after each reset")
    ap.add_argument("--fault-duration", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the policy node")
    ap.add_argument("--use-sim-time", action="store_true", help="every node on the bridge's /clock")
    ap.add_argument("--real-time-factor", type=float, default=1.0, help="sim speed (!= 1 needs --use-sim-time)")
    ap.add_argument("--in-process", action="store_true", help="all nodes in this process (default: one each)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        cfg = EvalRosConfig(
            policy=a.policy, task=a.task, episodes=a.episodes, seed=a.seed, time_limit=a.time_limit,
            settle=a.settle, videos=a.videos, threads=a.threads, use_sim_time=a.use_sim_time,
            real_time_factor=a.real_time_factor,
            in_process=a.in_process, config=a.config, overrides=parse_sets(a.set),
            fault=FaultSpec(a.fault, a.fault_start, a.fault_duration),
            out=a.out or Path("runs/eval_ros") / (a.task if a.fault == "none" else f"{a.task}_{a.fault}"))
    except ValueError as exc:
        ap.error(str(exc))
    try:
        s = run_evaluation(cfg, progress=not a.no_progress)
    except (ValueError, FileNotFoundError, TimeoutError, RuntimeError) as exc:
        print(f"avdp-eval-ros: {exc}", file=sys.stderr, flush=True)
        return 2
    print(report_markdown(s))
    print(f"outputs: {cfg.out}/ (summary.json, report.md, latency_hist.png, ee_path.png, rollout.mp4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
