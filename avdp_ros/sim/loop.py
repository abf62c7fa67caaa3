"""Real-time (or faster) stepping of a PandaSim with rate-scheduled output streams.

Pure Python, no ROS: the sim bridge node registers its publishers as streams. The loop owns the
simulator; other threads talk to it only through the thread-safe `set_target`, `set_gripper`
and `request_reset`, which are applied between physics steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Stream:
    name: str
    period: float  # seconds of sim time between calls
    callback: Callable[[float], None]  # called with the stamp time (seconds)
    next_t: float = 0.0
    count: int = 0


@dataclass
class _Reset:
    seed: int
    done: threading.Event = field(default_factory=threading.Event)
    info: dict | None = None
    error: str | None = None


class SimLoop:
    """Steps the simulator and fires streams when their period of sim time has elapsed.

    Args:
        sim: a PandaSim (anything with step/reset/time/set_target/set_gripper).
        real_time_factor: 1.0 paces the sim to the wall clock, 2.0 twice as fast,
            0 runs as fast as the CPU allows.
        clock_start: stamp time (seconds) of sim time 0 of the first episode. Stamps are
            `clock_start + total sim time` and never go backwards across resets.
        wall_locked: stamps are wall-clock times (clock_start = time.time() at start): when the
            sim falls behind, the stamp clock skips forward instead of drifting from the wall.
        wall: monotonic wall clock (injectable for tests); sleep: its sleep.
    """

    def __init__(self, sim, real_time_factor: float = 1.0, clock_start: float = 0.0, wall_locked: bool = False,
                 wall: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if real_time_factor < 0 or not np.isfinite(real_time_factor):
            raise ValueError(f"real_time_factor {real_time_factor}: expected >= 0 (0 = as fast as possible)")
        self.sim = sim
        self.rtf = float(real_time_factor)
        self.clock_start = float(clock_start)
        self.wall_locked = bool(wall_locked) and self.rtf > 0
        self._wall = wall
        self._sleep = sleep
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        self._target: np.ndarray | None = None
        self._gripper: float | None = None
        self._reset: _Reset | None = None
        self._episode_offset = 0.0  # sim time accumulated by earlier episodes
        self.steps = 0
        self.overruns = 0  # pacing found the sim more than 50 ms behind the wall clock
        self._pace_origin: tuple[float, float] | None = None  # (wall, sim clock) at start
        # wall-locked: stamp = wall() + this offset (fixed at construction; clock_start is the stamp now)
        self._stamp_offset = self.clock_start - wall()

    # ----- thread-safe inputs -------------------------------------------------------------
    def set_target(self, pose7: np.ndarray) -> None:
        with self._lock:
            self._target = np.array(pose7, dtype=np.float64)

    def set_gripper(self, width: float) -> None:
        with self._lock:
            self._gripper = float(width)

    def request_reset(self, seed: int, timeout: float | None = 10.0) -> dict:
        """Ask the loop thread to reset the episode; blocks until done. Returns the episode info."""
        req = _Reset(int(seed))
        with self._lock:
            self._reset = req
        if not req.done.wait(timeout):
            raise TimeoutError(f"sim reset (seed {seed}) not done after {timeout} s: is the sim loop running?")
        if req.error:
            raise RuntimeError(req.error)
        return req.info

    # ----- streams ------------------------------------------------------------------------
    def add_stream(self, name: str, rate_hz: float, callback: Callable[[float], None]) -> None:
        if not rate_hz > 0:
            raise ValueError(f"stream '{name}': rate {rate_hz} Hz, expected > 0")
        self._streams.append(_Stream(name, 1.0 / rate_hz, callback, next_t=self.clock))

    def stream_counts(self) -> dict[str, int]:
        return {s.name: s.count for s in self._streams}

    @property
    def clock(self) -> float:
        """Stamp time (seconds) of the current sim state."""
        return self.clock_start + self._episode_offset + self.sim.time

    # ----- stepping -----------------------------------------------------------------------
    def step_once(self) -> None:
        """Apply pending inputs, fire the streams that are due, advance one physics step."""
        with self._lock:
            target, self._target = self._target, None
            gripper, self._gripper = self._gripper, None
            reset, self._reset = self._reset, None
        if reset is not None:
            self._do_reset(reset)
        if target is not None:
            self.sim.set_target(target)
        if gripper is not None:
            self.sim.set_gripper(gripper)
        # Publish the state first, then advance: the first message after a reset shows the
        # reset state, and stamps sit exactly on each stream's grid.
        now = self.clock
        for s in self._streams:
            if now + 1e-9 >= s.next_t:
                s.callback(now)
                s.count += 1
                # Keep the grid; skip missed slots rather than bursting to catch up.
                s.next_t += s.period * max(1, int((now - s.next_t) // s.period) + 1)
        self.sim.step(1)
        self.steps += 1

    def reset_now(self, seed: int) -> dict:
        """Reset from the calling thread; only while `run` is not running (e.g. before it starts)."""
        req = _Reset(int(seed))
        self._do_reset(req)
        if req.error:
            raise RuntimeError(req.error)
        return req.info

    def _do_reset(self, req: _Reset) -> None:
        try:
            self._episode_offset += self.sim.time
            req.info = self.sim.reset(req.seed)
            # A reset takes wall time that sim time does not count; without this the stamps of a
            # wall-locked loop fall behind the wall by every reset's duration, episode after
            # episode, and commands stamped by other nodes no longer line up with the states.
            self._sync_to_wall()
            # Keep the streams' grids continuous relative to the new clock.
            for s in self._streams:
                s.next_t = min(s.next_t, self.clock)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, loop keeps going
            req.error = f"sim reset with seed {req.seed} failed: {exc}"
        finally:
            self._pace_origin = None  # re-anchor pacing: a reset may take a while
            req.done.set()

    def run(self, stop: threading.Event, max_sim_seconds: float | None = None) -> None:
        """Step until `stop` is set (or `max_sim_seconds` of sim time pass), pacing to the wall clock."""
        t_end = None if max_sim_seconds is None else self.clock + max_sim_seconds
        while not stop.is_set() and (t_end is None or self.clock < t_end):
            self.step_once()
            if self.rtf > 0:
                self._pace()

    def _sync_to_wall(self) -> None:
        """Wall-locked only: move the stamp clock forward (never back) to the wall clock."""
        if self.wall_locked:
            lag = self._wall() + self._stamp_offset - self.clock
            if lag > 0:
                self.clock_start += lag

    def _pace(self) -> None:
        if self._pace_origin is None:
            self._sync_to_wall()  # time spent before the first step (start-up) is not sim time either
            self._pace_origin = (self._wall(), self.clock)
            return
        wall, sim_clock = self._wall(), self.clock
        w0, s0 = self._pace_origin
        ahead = (sim_clock - s0) / self.rtf - (wall - w0)
        if ahead > 0.002:  # sleep in >= 2 ms slices: finer sleeps cost more than they gain
            self._sleep(ahead)
        elif ahead < -0.05:
            # Can't keep up (CPU busy). Don't burst to catch up; in wall-clock mode move the stamp
            # clock forward by the lag, so stamps keep matching the wall time that other nodes
            # (a teleop, the policy) stamp their messages with. The sim itself just lost time,
            # like a camera dropping frames.
            self.overruns += 1
            self._sync_to_wall()
            self._pace_origin = (wall, self.clock)
