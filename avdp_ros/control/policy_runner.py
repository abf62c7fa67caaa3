"""The policy node's control loop without ROS: observations in, inference, a plan, safe commands out.

Three activities share one `PolicyRunner`, each driven by its caller:

- ``on_obs_tick(now)``, every 1 / obs_hz: assembles a time-aligned observation (stamps, not
  arrival) and queues it for the inference thread, marked "infer" when the scheduler says a new
  chunk must start now (measured latency) and "observe" otherwise, so the model's frame history
  is spaced at obs_hz exactly as in training;
- ``work_once()``, looped on the runner's inference thread (plain Python: torch releases the GIL
  in its kernels): one model call in queue order. A new chunk is stamped from its observation and
  merged into the plan (late actions dropped, overlap blended). With prefix conditioning the call
  gets the plan's actions that run anyway before the chunk can land (``ChunkScheduler.committed``),
  so the model starts its chunk with them (real-time chunking), when the policy supports it;
- ``on_command_tick(now)``, at the commander rate: samples the plan through the safety filter
  (workspace, speed / acceleration limits, NaN rejection, hold when stale, latched e-stop). On a
  robot it runs on the runner's own commander thread (``start(command_hz=...)``), on absolute
  deadlines: the node's executor thread, which takes every image message, is then not in its way.

The runner never touches messages: commands go to ``send_command``, each inference's result to
``on_chunk`` (a `ChunkReport`), and ``diagnostics()`` / ``status()`` return plain data. Time is
the caller's clock: ``now`` arguments, and ``clock()`` after a model call, which takes time.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avdp_ros.control.chunks import ChunkScheduler, LatencyEstimator
from avdp_ros.control.ingest import ObservationAssembler
from avdp_ros.control.params import Cores, PolicyParams
from avdp_ros.control.safety import SafetyFilter

STATS = ("tokenizer_ms", "video_ms", "idm_ms", "infer_total_ms", "ingest_ms", "obs_to_chunk_ms",
         "chunk_age_ms", "command_period_ms", "command_callback_ms")
COUNTERS = ("inferences", "observes", "chunks_rejected", "inference_errors", "inference_overruns",
            "no_observation", "prefixed_chunks", "command_errors", "command_overruns")


class Stats:
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


@dataclass
class ChunkReport:
    """One inference's outcome, for the node to publish; times (s) on the caller's clock."""

    t_obs: float
    arrival: float
    timings: dict  # the policy's stage times (ms)
    kept: int = 0
    dropped: int = 0
    plan_end: float | None = None
    error: str = ""  # why the chunk was refused; the plan is unchanged
    waypoints: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # new plan (stamps, poses7, widths)
    predicted: tuple[np.ndarray, float] | None = None  # first predicted frame (S, cams * S, 3) and its stamp

    def values(self) -> dict[str, str]:
        """Its numbers as text (stamps s, times ms), for a diagnostics message per chunk."""
        plan_end = "" if self.plan_end is None else f"{self.plan_end:.6f}"
        out = {"t_obs": f"{self.t_obs:.6f}", "arrival": f"{self.arrival:.6f}",
               "obs_to_chunk_ms": f"{(self.arrival - self.t_obs) * 1e3:.3f}", "kept": str(self.kept),
               "dropped": str(self.dropped), "plan_end": plan_end}
        out.update({k: f"{float(v):.3f}" for k, v in self.timings.items()})
        return out


def _quiet(text: str) -> None:
    pass


class PolicyRunner:
    """Queue, inference thread step, plan and safety filter of the real-time policy.

    Args:
        policy: the one inference interface (`infer`, `observe`, `reset`, `obs_hz`, optional
            `supports_prefix`); replaceable until ``start()`` (tools wrap it).
        assembler, scheduler, safety, latency: the pure cores, already configured.
        clock: the caller's clock (s), read when an inference ends and to plan its prefix.
        instruction: fixed task text; '' = follow ``on_episode_info``.
        prefix_conditioning: pass committed actions to policies that support them.
        plan_waypoints: put the new plan into each `ChunkReport` (for a plan topic).
        predicted_frames: ask the policy for predicted frames and report the first one.
        send_command: called with (pose7, width, now) on every commander step.
        on_chunk: called with a `ChunkReport` after every inference (on the inference thread).
        warn, error: log sinks (the node throttles them).
    """

    def __init__(self, policy, assembler: ObservationAssembler, scheduler: ChunkScheduler,
                 safety: SafetyFilter, latency: LatencyEstimator, *, clock: Callable[[], float],
                 instruction: str = "", prefix_conditioning: bool = True, plan_waypoints: bool = False,
                 predicted_frames: bool = False,
                 send_command: Callable[[np.ndarray, float, float], None] | None = None,
                 on_chunk: Callable[[ChunkReport], None] | None = None,
                 warn: Callable[[str], None] = _quiet, error: Callable[[str], None] = _quiet):
        self.policy = policy
        self.assembler, self.scheduler, self.filter, self.latency = assembler, scheduler, safety, latency
        self.clock = clock
        self.frame_id = safety.limits.frame_id
        self.instruction = instruction
        self._fixed_instruction = bool(instruction)
        self.prefix_conditioning = prefix_conditioning
        self.plan_waypoints, self.predicted_frames = plan_waypoints, predicted_frames
        self._send, self._on_chunk, self._warn, self._error = send_command, on_chunk, warn, error
        self.stats = {name: Stats() for name in STATS}
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.episode = None  # id of the current /avdp/episode_info episode
        self._lock = threading.Lock()  # the scheduler is shared by the commander and the inference thread
        # the filter and its anchor: the commander (maybe its own thread) and the e-stop / episode callbacks
        self._command_lock = threading.RLock()
        self.worker: threading.Thread | None = None
        self.commander: threading.Thread | None = None
        self.command_scheduling = "caller"  # how the commander is scheduled ("caller": the caller's ticks)
        self._stopping = threading.Event()
        self._fresh()

    @classmethod
    def build(cls, policy, cores: Cores, params: PolicyParams, **callbacks) -> PolicyRunner:
        """A runner over new cores made from `cores`, with the options of `params`; `callbacks`:
        `clock` and the keyword arguments ``send_command``, ``on_chunk``, ``warn``, ``error``."""
        return cls(policy, ObservationAssembler(cores.ingest), ChunkScheduler(cores.chunks),
                   SafetyFilter(cores.limits), cores.latency, instruction=params.instruction,
                   prefix_conditioning=params.prefix_conditioning, plan_waypoints=params.publish_plan,
                   predicted_frames=params.publish_predicted, **callbacks)

    def _fresh(self) -> None:
        with self._lock:
            self.scheduler.reset()
            self._chunk_t_obs: float | None = None
        self._measured: tuple[float, np.ndarray, str] | None = None  # (stamp, pose7, frame_id)
        self._measured_width: float | None = None
        self._anchor_after = -math.inf  # re-anchor the filter from a pose stamped at or after this
        self._episode_gen = 0  # +1 per episode reset; queued observations carry the one they were made in
        self._filter_ready = False
        self._last_command_wall: float | None = None
        self.last_not_ready = "no observation yet"
        self._queue: queue.Queue = queue.Queue(maxsize=2)

    def start(self, thread: bool = True, command_hz: float | None = None, command_priority: int = 0) -> None:
        """A fresh run (call before the timers start): no plan, empty frame history, the filter
        re-anchored at the next measured pose; a latched e-stop stays. With `thread`, the inference
        thread starts looping on ``work_once`` until ``stop()``; tests call ``work_once`` instead.
        With `command_hz`, a commander thread calls ``on_command_tick(clock())`` at that rate until
        ``stop()``, under SCHED_FIFO at `command_priority` when that is > 0 and allowed (else a
        warning and normal scheduling: ``command_scheduling`` says which); without `command_hz`,
        the caller ticks the commander (a timer on a sim clock, tests)."""
        self._fresh()
        self.assembler.reset()
        self.policy.reset()
        self._stopping.clear()
        if thread:
            self.worker = threading.Thread(target=self._work, name="avdp_policy_inference", daemon=True)
            self.worker.start()
        if command_hz is not None:
            self.commander = threading.Thread(target=self._command, args=(1.0 / command_hz, command_priority),
                                              name="avdp_policy_commander", daemon=True)
            self.commander.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the commander and inference threads, waiting up to `timeout` s for the model call in
        progress."""
        self._stopping.set()
        for name in ("commander", "worker"):
            thread = getattr(self, name)
            if thread is not None:
                thread.join(timeout=timeout)
                setattr(self, name, None)

    def _work(self) -> None:
        while not self._stopping.is_set():
            self.work_once(timeout=0.1)

    def _command(self, period: float, priority: int) -> None:
        """The commander thread: ticks on absolute deadlines (steady clock), so a late tick does not
        shift the ones after it; when it falls a whole period behind it skips ahead (counted in
        ``command_overruns``) instead of sending a burst of catch-up commands."""
        self.command_scheduling = "normal"
        if priority > 0:
            # As ros2_control's controller manager does for its loop: real-time scheduling for this
            # thread only, so a busy CPU (inference, image callbacks, other programs) cannot delay
            # its wake-ups. It sleeps most of each period, so it cannot starve the others.
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
                self.command_scheduling = f"SCHED_FIFO {priority}"
            except (OSError, AttributeError) as exc:
                self.command_scheduling = f"normal (SCHED_FIFO {priority} refused: {exc})"
                self._warn(f"commander: real-time priority {priority} refused ({exc}); commanding with normal "
                           "scheduling, which a busy CPU can delay. Allow it with 'rtprio' in "
                           "/etc/security/limits.conf (README, \"Run on a robot\"), or set commander_priority: 0")
        deadline = time.monotonic()
        while not self._stopping.is_set():
            deadline += period
            delay = deadline - time.monotonic()
            if delay > 0:
                if self._stopping.wait(delay):
                    return
            elif delay < -period:
                self.counters["command_overruns"] += 1
                deadline = time.monotonic()
            try:
                self.on_command_tick(self.clock())
            except Exception as exc:  # noqa: BLE001 - keep commanding; the filter holds on a bad plan
                self.counters["command_errors"] += 1
                self._error(f"command step failed: {exc!r}")

    # ---- inputs (each returns None, or the reason the sample was rejected, also warned) ----

    def add_image(self, camera: str, stamp: float, msg, now: float) -> str | None:
        """`msg`: a raw or compressed image message, decoded by `ObservationAssembler.add_image_msg`."""
        if now <= 0.0:
            return None  # sim time has not started (/clock not received yet): nothing can be aligned
        return self._rejected("image", self.assembler.add_image_msg(camera, stamp, msg, now))

    def add_pose(self, stamp: float, pose7: np.ndarray, frame_id: str, now: float) -> str | None:
        if now <= 0.0:
            return None
        err = self._rejected("ee pose", self.assembler.add_pose(stamp, pose7, frame_id, now))
        if err is None:
            self._measured = (stamp, pose7, frame_id)
        return err

    def add_gripper(self, stamp: float, width: float | None, now: float) -> str | None:
        if now <= 0.0:
            return None
        err = self._rejected("gripper state", self.assembler.add_gripper(stamp, width, now))
        if err is None:
            self._measured_width = width
        return err

    def _rejected(self, what: str, err: str | None) -> str | None:
        if err is not None:
            self._warn(f"rejected {what}: {err}")
        return err

    def on_episode_info(self, info: dict) -> bool:
        """Follow the sim's episode info: its instruction (unless one is fixed) and its episode id.
        Returns whether the episode changed (the first one included)."""
        if not self._fixed_instruction and isinstance(info.get("instruction"), str):
            self.instruction = info["instruction"]
        episode = info.get("episode")
        if episode is None or episode == self.episode:
            return False
        first = self.episode is None
        self.episode = episode
        if not first:  # a new episode (sim reset): the arm jumped, the history is another scene
            self.new_episode(float(info.get("stamp", 0.0)))
        return True

    def new_episode(self, stamp: float) -> None:
        """Drop the plan, the buffered inputs and the frame history; re-anchor at a pose stamped
        at or after `stamp`. Inferences still running for the old episode are discarded."""
        with self._lock:
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
        with self._command_lock:
            self._anchor_after = stamp
            self._filter_ready = False

    # ---- observation -> inference ----

    def _enqueue(self, item) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            return False

    def on_obs_tick(self, now: float) -> str | None:
        """Assemble an observation and queue it; returns what was queued ("infer", "observe") or None."""
        t0 = time.perf_counter()
        obs, reason = self.assembler.assemble(now, self.instruction)
        self.stats["ingest_ms"].add((time.perf_counter() - t0) * 1e3)
        if obs is None:
            self.counters["no_observation"] += 1
            self.last_not_ready = reason
            self._warn(f"no observation, not inferring: {reason}")
            return None
        self.last_not_ready = ""
        if self._queue.full():  # the worker is behind (inference slower than 1 / obs_hz)
            self.counters["inference_overruns"] += 1
            self._warn("inference thread behind: an observation was skipped (model slower than obs_hz?)")
            return None
        with self._lock:
            infer = self.scheduler.should_infer(now, self.latency.estimate())
            if infer:
                self.scheduler.mark_inference_started()
        kind = "infer" if infer else "observe"
        if not self._enqueue((kind, obs, self._episode_gen)):
            self.counters["inference_overruns"] += 1  # an episode reset took the slot just now
            if infer:
                with self._lock:
                    self.scheduler.mark_inference_finished()
            return None
        return kind

    def work_once(self, timeout: float = 0.1) -> str | None:
        """Run the next queued model call, in queue order (the frame history's order).

        Returns:
            Its kind ("reset", "observe", "infer"), or None when nothing came within `timeout` s.
        """
        try:
            kind, obs, gen = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        try:
            if kind == "reset":
                self.policy.reset()
            elif kind == "observe":
                self.policy.observe(obs)
                self.counters["observes"] += 1
            else:
                self._infer(obs, gen)
        except Exception as exc:  # noqa: BLE001 - a bad step must not kill the thread; the commander holds
            self.counters["inference_errors"] += 1
            self._error(f"inference failed: {exc!r}")
        finally:
            if kind == "infer":
                with self._lock:
                    self.scheduler.mark_inference_finished()
        return kind

    def _infer(self, obs: dict, episode_gen: int) -> None:
        t_obs = float(obs["t_obs"])
        kwargs = {}
        if self.prefix_conditioning and getattr(self.policy, "supports_prefix", False):
            with self._lock:  # what runs anyway until this chunk lands (latency estimate from now)
                prefix = self.scheduler.committed(t_obs, self.clock() + self.latency.estimate())
            if prefix is not None:
                kwargs["prefix"] = prefix
                self.counters["prefixed_chunks"] += 1
        out = self.policy.infer(obs, return_frames=self.predicted_frames, **kwargs)
        arrival = self.clock()
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
        report = ChunkReport(t_obs, arrival, timings)
        with self._lock:
            try:
                if episode_gen != self._episode_gen:  # inferred while the sim reset: the arm is elsewhere now
                    raise ValueError(f"observation at {t_obs:.3f} is from before the latest episode reset")
                update = self.scheduler.add_chunk(out["actions"], t_obs, arrival)
            except ValueError as exc:
                update, report.error = None, str(exc)
            if update is not None:
                if update.kept:
                    self._chunk_t_obs = t_obs
                report.kept, report.dropped = update.kept, update.dropped
                report.plan_end = self.scheduler.plan_end()
                if update.kept and self.plan_waypoints:
                    report.waypoints = self.scheduler.waypoints()
        if update is None:
            self.counters["chunks_rejected"] += 1
            self._warn(f"chunk rejected, keeping the current plan: {report.error}")
        else:
            if update.kept == 0:
                self._warn(f"chunk for t_obs {t_obs:.3f} arrived {arrival - t_obs:.3f} s late: every action "
                           "was already due; the plan is unchanged")
            frames = out.get("predicted_frames")
            if frames is not None and self.predicted_frames:  # (K, cams, S, S, 3): frame 0, cams side by side
                report.predicted = np.concatenate(list(frames[0]), axis=1), t_obs + 1.0 / self.policy.obs_hz
        if self._on_chunk is not None:
            self._on_chunk(report)

    # ---- commander ----

    def on_command_tick(self, now: float) -> tuple[np.ndarray, float] | None:
        """One commander step: the filtered (pose7, width), also sent to ``send_command``; None
        while the filter waits for the measured pose and gripper width to start from."""
        wall = time.perf_counter()
        with self._command_lock:
            if not self._filter_ready and not self._anchor_filter(now):
                return None
            with self._lock:
                desired = self.scheduler.target_at(now)
                chunk_t_obs = self._chunk_t_obs
            pose, width = self.filter.step(desired, now, frame_id=self.frame_id)
        if self._send is not None:
            self._send(pose, width, now)
        if desired is not None and chunk_t_obs is not None and not self.filter.holding:
            self.stats["chunk_age_ms"].add((now - chunk_t_obs) * 1e3)
        if self._last_command_wall is not None:
            self.stats["command_period_ms"].add((wall - self._last_command_wall) * 1e3)
        self._last_command_wall = wall
        self.stats["command_callback_ms"].add((time.perf_counter() - wall) * 1e3)
        return pose, width

    def _anchor_filter(self, now: float) -> bool:
        """Start the filter from the measured pose (first command = where the arm is)."""
        measured, width = self._measured, self._measured_width
        if measured is None or width is None or measured[0] < self._anchor_after:
            self._warn("waiting for the ee pose and gripper state before commanding")
            return False
        _, pose, frame = measured
        if frame != self.frame_id:
            self._warn(f"measured pose in frame '{frame}', expected '{self.frame_id}': not commanding")
            return False
        try:
            self.filter.reset(pose, width, now)
        except ValueError as exc:
            self._error(f"not commanding: {exc}")
            return False
        self._filter_ready = True
        return True

    # ---- e-stop ----

    @property
    def estopped(self) -> bool:
        return self.filter.estopped

    def estop(self, reason: str) -> bool:
        """Latch the e-stop: every command holds the last one. Returns whether it was not latched yet."""
        with self._command_lock:
            first = not self.filter.estopped
            self.filter.estop(reason)
        return first

    def clear_estop(self) -> bool:
        """Clear a latched e-stop; returns False when none was latched. Motion resumes only from a
        fresh plan: the old one was made for a world before the stop."""
        with self._command_lock:
            if not self.filter.estopped:
                return False
            with self._lock:
                self.scheduler.reset()
                self._chunk_t_obs = None
            self.filter.reset_estop()
        return True

    # ---- diagnostics ----

    def diagnostics(self) -> list[tuple[str, str]]:
        """(key, value) pairs for /diagnostics: ingest counters, latency percentiles (ms), safety
        interventions, the runner's counters, plan totals, e-stop and observation state."""
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
        values += [("commander.scheduling", self.command_scheduling),
                   ("chunks_added", str(self.scheduler.chunks_added)),
                   ("actions_dropped", str(self.scheduler.actions_dropped)),
                   ("estop", "latched" if self.filter.estopped else "clear"),
                   ("observation", self.last_not_ready or "ok")]
        return values

    def status(self) -> tuple[str, str]:
        """(level, message), level one of "OK", "WARN", "ERROR" (diagnostic_msgs' names)."""
        if self.filter.estopped:
            return "ERROR", f"E-STOP latched: {self.filter.last_reason}"
        if self.last_not_ready:
            return "WARN", f"no observation: {self.last_not_ready}"
        if not self._filter_ready:
            return "WARN", "waiting for the ee pose / gripper state"
        return "OK", "running"
