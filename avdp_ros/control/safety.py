"""The commander's safety filter: whatever the plan (or the model) asks, what is sent stays safe.

``SafetyFilter.step(desired, now)`` returns the pose + gripper command to publish. The rules
hold for any input (NaN/inf, giant jumps, zero or non-unit quaternions, time going backwards):

* the commanded position stays inside the workspace box;
* successive commands move at most ``max_linear_speed * dt`` and their velocity changes by at
  most ``max_linear_accel * dt`` per step; likewise for rotation (angle between successive
  quaternions, change of angular velocity);
* commands are finite, quaternions unit; the gripper width stays in its range;
* invalid input, a stale plan, a clock fault or a latched e-stop hold the last safe command.

Holding means re-sending the last command, i.e. stopping the *target* at once; the impedance
controller brings the arm to rest behind it. The filter's velocity state is zeroed on a hold, so
motion afterwards starts from rest and obeys the acceleration limit again. (The alternative,
braking along the old velocity, would keep moving towards wherever a bad plan was heading.)

Pure: no ROS imports and no clock reads; ``now`` is float seconds from the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avdp_ros.geometry import axis_angle_to_quat, quat_conj, quat_mul, quat_normalize, quat_to_axis_angle
from avdp_ros.validation import check_pose, check_width

INTERVENTIONS = ("invalid", "frame", "stale", "clock", "estop", "workspace", "speed", "accel",
                 "angular_speed", "angular_accel", "gripper")
_EPS = 1e-12  # float slack when deciding whether a limit actually bound (for the counters only)


def _finite_vec3(name: str, value: object) -> tuple[float, float, float]:
    v = tuple(float(x) for x in value)  # type: ignore[union-attr]
    if len(v) != 3 or not all(math.isfinite(x) for x in v):
        raise ValueError(f"SafetyLimits.{name} = {value!r}: expected 3 finite numbers (x, y, z) in metres")
    return v  # type: ignore[return-value]


@dataclass
class SafetyLimits:
    # Workspace box (m, base frame) the commanded TCP position never leaves. z >= 0.015 keeps
    # the fingertips off the table, as the sim's own box (sim/env.py SimConfig) does.
    workspace_min: tuple[float, float, float] = (0.25, -0.35, 0.015)
    workspace_max: tuple[float, float, float] = (0.75, 0.35, 0.50)
    max_linear_speed: float = 0.25  # m/s
    max_angular_speed: float = 1.0  # rad/s
    max_linear_accel: float = 2.0  # m/s^2
    max_angular_accel: float = 8.0  # rad/s^2
    gripper_min: float = 0.0  # m, total finger opening
    gripper_max: float = 0.08
    frame_id: str = "panda_link0"  # the only frame targets are accepted in (nodes/topics.BASE_FRAME)
    # A longer gap between two steps (stalled timer, clock jump) is a clock fault: hold and
    # restart from rest rather than allow one huge max_speed * dt jump. Keep it at several
    # command periods (the commander streams at 50..1000 Hz).
    max_dt: float = 0.2  # s

    def __post_init__(self) -> None:
        self.workspace_min = _finite_vec3("workspace_min", self.workspace_min)
        self.workspace_max = _finite_vec3("workspace_max", self.workspace_max)
        if not all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ValueError(f"SafetyLimits: workspace_min {self.workspace_min} must be < workspace_max "
                             f"{self.workspace_max} on every axis")
        for name in ("max_linear_speed", "max_angular_speed", "max_linear_accel", "max_angular_accel", "max_dt"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < math.inf:
                raise ValueError(f"SafetyLimits.{name} = {value!r}: expected a finite number > 0")
        if not (math.isfinite(self.gripper_min) and math.isfinite(self.gripper_max)
                and 0.0 <= self.gripper_min < self.gripper_max):
            raise ValueError(f"SafetyLimits: gripper range [{self.gripper_min}, {self.gripper_max}]: "
                             "expected 0 <= gripper_min < gripper_max (m)")
        if not isinstance(self.frame_id, str) or not self.frame_id:
            raise ValueError(f"SafetyLimits.frame_id = {self.frame_id!r}: expected a non-empty frame name")
        # One step's rotation must stay below pi, or successive quaternions no longer say which
        # way (and how far) the command turned.
        if self.max_angular_speed * self.max_dt >= math.pi:
            raise ValueError(f"SafetyLimits: max_angular_speed {self.max_angular_speed} * max_dt {self.max_dt} "
                             f">= pi: expected less than half a turn per step")


def _clip_norm(v: np.ndarray, limit: float) -> tuple[np.ndarray, bool]:
    n = float(np.linalg.norm(v))
    return (v * (limit / n), True) if n > limit * (1.0 + _EPS) else (v, False)


def _brake_speed(dist: np.ndarray | float, accel: float, dt: float) -> np.ndarray:
    """Largest speed towards a point `dist` away such that, after moving one step of `dt` at
    it, braking at `accel` still stops in time.

    With steps v_k = v_{k-1} - accel * dt_k and moves v_k * dt_k, the distance covered while
    braking from speed u is at most u^2 / (2 accel) whatever the step sizes, so the invariant
    u^2 <= 2 accel d is what we keep; solving u^2 + 2 accel dt u = 2 accel d for u gives this.
    Braking itself keeps the invariant: (u - a dt)^2 + 2 a dt (u - a dt) = u^2 - (a dt)^2.
    """
    d = np.maximum(np.asarray(dist, dtype=np.float64), 0.0)
    return -accel * dt + np.sqrt((accel * dt) ** 2 + 2.0 * accel * d)


class SafetyFilter:
    """Turns desired (pose7, width) targets into commands that respect ``SafetyLimits``.

    Call ``reset(measured_pose, measured_width)`` before the first ``step``; the first command
    is then the measured pose. Counters per intervention kind are in ``interventions`` (keys
    ``INTERVENTIONS``) and the last reason in ``last_reason``, for /diagnostics.
    """

    def __init__(self, limits: SafetyLimits | None = None):
        self.limits = limits if limits is not None else SafetyLimits()
        self._lo = np.array(self.limits.workspace_min)
        self._hi = np.array(self.limits.workspace_max)
        self.interventions: dict[str, int] = dict.fromkeys(INTERVENTIONS, 0)
        self.last_reason = ""
        self.holding = False  # whether the last step held the previous command
        self._estop: str | None = None
        self._p: np.ndarray | None = None  # commanded position (3,)
        self._q = np.array([0.0, 0.0, 0.0, 1.0])  # commanded orientation (x, y, z, w)
        self._width = 0.0
        self._v = np.zeros(3)  # commanded linear velocity (m/s) over the last step
        self._w = np.zeros(3)  # commanded angular velocity (rad/s, base frame) over the last step
        self._t: float | None = None  # time of the last step
        self._prev_target: tuple[np.ndarray, np.ndarray] | None = None  # last accepted (p, q) target

    # ---- state ----

    def reset(self, pose7: np.ndarray, width: float, now: float | None = None) -> None:
        """Start from the measured pose and gripper width (the first command holds them).

        Args:
            pose7: measured TCP pose (x, y, z, qx, qy, qz, qw) in ``limits.frame_id``.
            width: measured gripper width (m); clamped into the gripper range.
            now: time (s) of the measurement; if None the next ``step`` only anchors the clock.

        Raises:
            ValueError: the pose is malformed or outside the workspace box (we refuse to start
                with a jump into the box; move the arm inside first). A latched e-stop stays.
        """
        pose7 = np.asarray(pose7, dtype=np.float64)
        err = check_pose(pose7, self.limits.frame_id, self.limits.frame_id, "measured pose") or check_width(
            width, self.limits.gripper_min, self.limits.gripper_max, "measured gripper width")
        if err:
            raise ValueError(err)
        if np.any(pose7[:3] < self._lo - 1e-9) or np.any(pose7[:3] > self._hi + 1e-9):
            raise ValueError(f"measured position {np.round(pose7[:3], 3).tolist()} is outside the workspace box "
                             f"{list(self.limits.workspace_min)}..{list(self.limits.workspace_max)}: "
                             "move the arm into the box before commanding")
        self._p = np.clip(pose7[:3], self._lo, self._hi)
        self._q = quat_normalize(pose7[3:])
        self._width = float(np.clip(width, self.limits.gripper_min, self.limits.gripper_max))
        self._v, self._w = np.zeros(3), np.zeros(3)
        self._t = float(now) if now is not None and math.isfinite(now) else None
        self._prev_target = None
        self.holding = False

    def estop(self, reason: str) -> None:
        """Latch an e-stop: every later step holds the last command until ``reset_estop()``."""
        self._estop = reason or "e-stop"
        self.last_reason = f"e-stop: {self._estop}"

    def reset_estop(self) -> None:
        self._estop = None

    @property
    def estopped(self) -> bool:
        return self._estop is not None

    def command(self) -> tuple[np.ndarray, float]:
        """The last command (pose7, width) without stepping."""
        if self._p is None:
            raise RuntimeError("SafetyFilter has no command before reset(): initialise it from the measured pose")
        return np.concatenate([self._p, self._q]), self._width

    # ---- stepping ----

    def _hold(self, kind: str, reason: str, now: float | None) -> tuple[np.ndarray, float]:
        self.interventions[kind] += 1
        self.last_reason = reason
        self.holding = True
        self._v, self._w = np.zeros(3), np.zeros(3)  # a hold stops the target: start again from rest
        self._prev_target = None
        if now is not None:
            self._t = now  # re-anchor, so a clock that jumped backwards resumes from here
        return self.command()

    def _note(self, kind: str, reason: str) -> None:
        self.interventions[kind] += 1
        self.last_reason = reason

    def _parse(self, desired: object, frame_id: str | None) -> tuple[str, str] | tuple[np.ndarray, float]:
        """(pose7, width) from the desired command, or (kind, reason) when it must be refused."""
        try:
            pose, width = desired  # type: ignore[misc]
            pose = np.asarray(pose, dtype=np.float64)
            width = float(width)
        except (TypeError, ValueError, OverflowError):
            return "invalid", f"desired command {str(desired)[:80]}: expected (pose7, width)"
        if frame_id is not None and frame_id != self.limits.frame_id:
            return "frame", f"desired pose in frame '{frame_id}', expected '{self.limits.frame_id}'"
        with np.errstate(over="ignore"):  # a norm of 1e300s overflows to inf, which the check refuses
            err = check_pose(pose, self.limits.frame_id, self.limits.frame_id, "desired pose") or check_width(
                width, self.limits.gripper_min, self.limits.gripper_max, "desired gripper width")
        if err:
            return "invalid", err
        return pose, width

    def step(self, desired: tuple[np.ndarray, float] | None, now: float,
             frame_id: str | None = None) -> tuple[np.ndarray, float]:
        """The command (pose7, width) to send at time `now`, given the plan's desired target.

        Args:
            desired: (pose7, width) from the plan, or None when the plan is stale.
            now: current time (s), from the same clock on every call.
            frame_id: the frame `desired` is expressed in, when known (checked against limits).

        Returns:
            A finite pose with a unit quaternion inside the workspace box, and a width in range.

        Rules, in order: a latched e-stop holds; a clock fault (non-finite time, dt <= 0,
        dt > max_dt) holds; no target (stale plan) holds; a malformed / non-finite target or
        one in another frame holds; otherwise the target is clamped into the box (and the
        gripper into its range) and approached within the speed and acceleration limits,
        braking in time for the box walls. ``holding`` says whether this step held.

        Raises:
            RuntimeError: before ``reset()`` (there is no safe pose to hold).
        """
        if self._p is None:
            raise RuntimeError("SafetyFilter.step() before reset(): initialise it from the measured pose")
        self.holding = False
        try:
            now = float(now)
        except (TypeError, ValueError):
            now = math.nan
        if self._estop is not None:
            return self._hold("estop", f"e-stop latched: {self._estop}", now if math.isfinite(now) else None)
        if not math.isfinite(now):
            return self._hold("clock", f"non-finite time {now!r}: expected seconds", None)
        if self._t is None:
            self._t = now  # first step after reset(now=None): only anchor the clock
            return self.command()
        dt = now - self._t
        if dt <= 0.0:
            return self._hold("clock", f"time went backwards or repeated (dt {dt:.3g} s)", now)
        if dt > self.limits.max_dt:
            return self._hold("clock", f"{dt:.3g} s since the last step > max_dt {self.limits.max_dt} s", now)
        if desired is None:
            return self._hold("stale", "no target: the plan is stale", now)
        parsed = self._parse(desired, frame_id)
        if isinstance(parsed[0], str):
            return self._hold(parsed[0], parsed[1], now)  # type: ignore[arg-type]
        pose, width = parsed

        lim = self.limits
        target_p = np.clip(pose[:3], self._lo, self._hi)
        if np.any(target_p != pose[:3]):
            self._note("workspace", f"target {np.round(pose[:3], 3).tolist()} clamped into the workspace box")
        target_q = quat_normalize(pose[3:])
        new_width = float(np.clip(width, lim.gripper_min, lim.gripper_max))
        if new_width != width:
            self._note("gripper", f"gripper width {width:.4f} clamped into [{lim.gripper_min}, {lim.gripper_max}]")

        v = self._linear_velocity(target_p, dt)
        w = self._angular_velocity(target_q, dt)
        p_new = np.clip(self._p + v * dt, self._lo, self._hi)  # the clip only removes float dust
        self._v = (p_new - self._p) / dt
        self._p = p_new
        self._w = w
        self._q = quat_normalize(quat_mul(axis_angle_to_quat(w * dt), self._q))
        self._width = new_width
        self._prev_target = (target_p, target_q)
        self._t = now
        return self.command()

    def _linear_velocity(self, target: np.ndarray, dt: float) -> np.ndarray:
        """Velocity for this step: track the target, within speed, acceleration and the box."""
        lim, v = self.limits, self._v
        a, vmax = lim.max_linear_accel, lim.max_linear_speed
        # Feed-forward the target's own velocity, so a trajectory within the limits passes
        # through unchanged (a jump just asks for more speed than the limit gives).
        v_ff = np.zeros(3) if self._prev_target is None else (target - self._prev_target[0]) / dt
        # Close the remaining error no faster than we could brake to a stop at it (no overshoot).
        err = target - (self._p + v_ff * dt)
        dist = float(np.linalg.norm(err))
        v_des = v_ff.copy()
        if dist > 0.0:
            v_des += err / dist * min(dist / dt, float(_brake_speed(dist, a, dt)))
        v_des, clipped = _clip_norm(v_des, vmax)
        if clipped:
            self._note("speed", f"linear speed limited to {vmax} m/s")
        dv, clipped = _clip_norm(v_des - v, a * dt)
        if clipped:
            self._note("accel", f"linear acceleration limited to {a} m/s^2")
        cand = v + dv  # on the segment v -> v_des: within both the speed and the acceleration limit

        # Box: per axis, the speed towards each wall is capped so that braking at b = a / sqrt(3)
        # per axis (|(b, b, b)| = a) still stops before it. Braking on every axis at once from v
        # always satisfies those caps (see _brake_speed), so the largest step from `v_brake`
        # towards `cand` that does is within all limits: both ends are, and the limits are convex.
        b = a / math.sqrt(3.0)
        cap_hi = _brake_speed(self._hi - self._p, b, dt)  # (3,) max speed towards +wall
        cap_lo = _brake_speed(self._p - self._lo, b, dt)  # (3,) max speed towards -wall
        v_brake = v - np.sign(v) * np.minimum(np.abs(v), b * dt)
        d = cand - v_brake
        with np.errstate(divide="ignore", invalid="ignore"):
            lam_hi = np.where((d > 0) & (cand > cap_hi), (cap_hi - v_brake) / d, 1.0)
            lam_lo = np.where((d < 0) & (cand < -cap_lo), (-cap_lo - v_brake) / d, 1.0)
        lam = float(np.clip(min(lam_hi.min(), lam_lo.min()), 0.0, 1.0))
        return v_brake + lam * d

    def _angular_velocity(self, target: np.ndarray, dt: float) -> np.ndarray:
        """Angular velocity (base frame) for this step, within angular speed and acceleration."""
        lim, w = self.limits, self._w
        alpha, wmax = lim.max_angular_accel, lim.max_angular_speed
        w_ff = np.zeros(3)  # the same feed-forward as for position
        if self._prev_target is not None:
            w_ff = quat_to_axis_angle(quat_mul(target, quat_conj(self._prev_target[1]))) / dt
        predicted = quat_mul(axis_angle_to_quat(w_ff * dt), self._q)
        err = quat_to_axis_angle(quat_mul(target, quat_conj(predicted)))  # (3,), angle <= pi
        angle = float(np.linalg.norm(err))
        w_des = w_ff.copy()
        if angle > 0.0:
            w_des += err / angle * min(angle / dt, float(_brake_speed(angle, alpha, dt)))
        w_des, clipped = _clip_norm(w_des, wmax)
        if clipped:
            self._note("angular_speed", f"angular speed limited to {wmax} rad/s")
        dw, clipped = _clip_norm(w_des - w, alpha * dt)
        if clipped:
            self._note("angular_accel", f"angular acceleration limited to {alpha} rad/s^2")
        return w + dw
