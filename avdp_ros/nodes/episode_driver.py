"""The episode driver node: runs episodes over the graph's services and topics only, exactly as a
user's script would. avdp-collect records episodes with it; avdp-eval-ros's evaluator node
(`eval_recorder.EvalRecorder`) is one.

Services: /avdp/sim/reset, /avdp/record/start, /avdp/record/stop (std_srvs/Trigger) and the
bridge's set_parameters (the next episode's seed). Topics: /avdp/episode_info (success and its
stamp) and current_pose, whose header stamps are the bridge's clock. Every time here is seconds
on that clock, relative to the first current_pose received: the sim's pace (a real-time factor
below 1, a loaded CPU) changes no episode's length, whatever clock this node itself runs on.

Success rule (`wait_success`): an episode ends once /avdp/episode_info has said success for
`settle` s without a break, or when the bridge clock passes reset + `limit` s. A success that began
before the limit still gets its `settle` s; the episode is successful only if success held that
long. (avdp-eval, without ROS, ends on the first success instead: see evaluation/sim_eval.py.)
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import contextmanager

import rclpy
from geometry_msgs.msg import PoseStamped
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String
from std_srvs.srv import Trigger

from avdp_ros.nodes import topics
from avdp_ros.nodes.spin import spin_in_thread
from avdp_ros.stack import NODES

SERVICE_TIMEOUT_S = 30.0  # a service that has not answered by then is not coming (node down)
INFO_TIMEOUT_S = 10.0  # the bridge publishes the new episode's info inside its reset call


@contextmanager
def ros_session(handle_signals: bool = True):
    """rclpy's default context for one command-line run: initialised here unless it is up already
    (then its owner shuts it down), shut down here on exit. `handle_signals=False`: Ctrl-C raises
    KeyboardInterrupt in the caller, so it can stop a recording cleanly, instead of rclpy's handler
    invalidating the context under its nodes."""
    own = not rclpy.ok()
    if own:
        rclpy.init(signal_handler_options=None if handle_signals else SignalHandlerOptions.NO)
    try:
        yield
    finally:
        if own:
            rclpy.try_shutdown()


class EpisodeDriver(Node):
    """Seeds, resets, records and ends episodes; its own executor thread, so it works the same
    whether the stack runs in this process or in others.

    Args:
        name: node name.
        context: rclpy context (tests pass their own); None = the default one.
        use_sim_time: this node's own clock (its log stamps); episode timing is on the bridge clock
            either way.
    """

    def __init__(self, name: str = "avdp_episode_driver", context=None, use_sim_time: bool = False):
        super().__init__(name, context=context,
                         parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)])
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)  # notified by every message this node receives
        self.origin_ns: int | None = None  # first current_pose stamp: times are relative to it
        self.clock = -math.inf  # newest current_pose stamp (relative): the bridge's clock
        self.info: dict = {}  # the latest /avdp/episode_info
        self.reset_info: dict = {}  # what /avdp/sim/reset said of the current episode
        self.t_reset = math.nan  # its reset stamp (relative)
        self.create_subscription(String, topics.EPISODE_INFO, self._on_info, topics.LATCHED_QOS)
        self.create_subscription(PoseStamped, topics.CURRENT_POSE, self._on_pose, topics.STATE_QOS)
        self._reset_client = self.create_client(Trigger, topics.SIM_RESET)
        self._start_client = self.create_client(Trigger, topics.RECORD_START)
        self._stop_client = self.create_client(Trigger, topics.RECORD_STOP)
        self._param_client = self.create_client(SetParameters, f"/{NODES['sim_bridge'].name}/set_parameters")
        self._create_io()
        # spinning starts last: no callback may run on a half-built node
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self)
        self._spinner = spin_in_thread(self._executor, name)

    def _create_io(self) -> None:
        """Subclasses create their state, subscriptions and publishers here."""

    # ----- callbacks (executor thread) ---------------------------------------------------------
    def rel(self, stamp) -> float:
        """A header stamp in seconds relative to the first current_pose."""
        return (stamp.sec * 1_000_000_000 + stamp.nanosec - self.origin_ns) * 1e-9

    def _on_pose(self, msg) -> None:
        with self._cv:
            if self.origin_ns is None:
                self.origin_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            t = self.rel(msg.header.stamp)
            self.clock = max(self.clock, t)
            self._record_pose(t, msg)
            self._cv.notify_all()

    def _record_pose(self, t: float, msg) -> None:
        """Called under the lock for every current_pose; the evaluator keeps the path."""

    def _on_info(self, msg) -> None:
        with self._cv:
            self.info = json.loads(msg.data)
            self._cv.notify_all()

    # ----- episodes (caller's thread) ---------------------------------------------------------
    def wait_for(self, predicate, timeout: float, what: str, alive=None) -> None:
        """Wait until `predicate()` (called under the lock) holds; it is re-checked on every message
        this node receives and at least every 0.5 s. Raises TimeoutError after `timeout` wall
        seconds, RuntimeError as soon as `alive()` (the stack's processes) turns false."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.get_name()}: no {what} after {timeout:.0f} s")
                if alive is not None and not alive():
                    raise RuntimeError(f"{self.get_name()}: a node process exited while waiting for {what}")
                self._cv.wait(min(left, 0.5))

    def call(self, client, request, timeout: float = SERVICE_TIMEOUT_S):
        """`client`'s response to `request`, waiting at most `timeout` s for the service and again
        for the reply (the executor thread delivers it)."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available after {timeout:.0f} s")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"{client.srv_name}: no reply after {timeout:.0f} s")
        return future.result()

    def trigger(self, client, timeout: float = SERVICE_TIMEOUT_S) -> str:
        """Call a Trigger service; its message, or RuntimeError when it reports failure."""
        res = self.call(client, Trigger.Request(), timeout)
        if not res.success:
            raise RuntimeError(f"{client.srv_name} failed: {res.message}")
        return res.message

    def set_seed(self, seed: int) -> None:
        """The bridge's `seed` parameter: the seed of its next reset."""
        res = self.call(self._param_client, SetParameters.Request(
            parameters=[Parameter("seed", value=int(seed)).to_parameter_msg()]))
        if not res.results or not res.results[0].successful:
            raise RuntimeError(f"setting avdp_sim_bridge.seed = {seed} failed: {res.results}")

    def reset(self, expect_seed: int | None = None) -> dict:
        """Start a new episode (/avdp/sim/reset) and wait for its /avdp/episode_info; returns that
        info. Sets `reset_info` and `t_reset` (the reset's stamp), which `wait_success` counts from."""
        self.wait_for(lambda: self.origin_ns is not None, SERVICE_TIMEOUT_S,
                      f"message on {topics.CURRENT_POSE} (is the bridge running?)")
        before = self.info.get("episode")
        info = json.loads(self.trigger(self._reset_client))
        if expect_seed is not None and info.get("seed") != expect_seed:
            raise RuntimeError(f"{topics.SIM_RESET} started seed {info.get('seed')}, expected {expect_seed}")
        self.wait_for(lambda: self.info.get("episode") == info["episode"] != before, INFO_TIMEOUT_S,
                      f"{topics.EPISODE_INFO} for the new episode")
        with self._lock:
            self.reset_info = info
            self.t_reset = (round(info["stamp"] * 1e9) - self.origin_ns) * 1e-9
        return info

    def start_recording(self) -> str:
        return self.trigger(self._start_client)

    def stop_recording(self, timeout: float = SERVICE_TIMEOUT_S) -> str:
        return self.trigger(self._stop_client, timeout)

    def wait_success(self, settle: float, limit: float, timeout: float, alive=None) -> float | None:
        """Wait for the end of the current episode under the success rule (module docstring), on
        the bridge clock from `t_reset`. Returns when success began (relative s), None if it did
        not hold. Raises TimeoutError after `timeout` wall seconds (the bridge clock stalled)."""
        t0, episode = self.t_reset, self.reset_info["episode"]
        since: list[float | None] = [None]

        def finished() -> bool:
            info = self.info
            if info.get("episode") == episode and info.get("success"):
                t = (round(info["stamp"] * 1e9) - self.origin_ns) * 1e-9
                since[0] = t if t <= t0 + limit else None
            elif info.get("episode") == episode:
                since[0] = None
            if since[0] is not None:
                return self.clock - since[0] >= settle
            return self.clock >= t0 + limit

        self.wait_for(finished, timeout, f"end of episode {episode}, seed {self.reset_info['seed']} "
                      "(is the bridge running?)", alive)
        return since[0]

    def run_episode(self, time_limit: float, settle: float, wall_limit: float | None = None) -> dict:
        """Reset, record until success has held for `settle` s or `time_limit` s have passed since
        the reset (bridge clock), stop; returns what the episode was and how it ended.

        `wall_limit` (default 3x the time limit + 60 s) ends the episode, unsuccessful, in wall
        seconds if the bridge's clock stalls: the recording is closed and the next reset may
        bring the bridge back."""
        info = self.reset()
        started = self.start_recording()
        try:
            since = self.wait_success(settle, time_limit,
                                      3.0 * time_limit + 60.0 if wall_limit is None else wall_limit)
        except TimeoutError:
            since = None
        duration = self.clock - self.t_reset
        stopped = self.stop_recording()
        return {"task": info["task"], "seed": info["seed"], "instruction": info["instruction"],
                "success": since is not None, "duration_s": round(duration, 2),
                "start": started, "stop": stopped}

    def close(self) -> None:
        self._spinner.stop()  # before the caller may shut the context down under it
        self._executor.shutdown(timeout_sec=2.0)
        self.destroy_node()
