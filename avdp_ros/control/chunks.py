"""Action-chunk timing: stamping, late drops, blending, interpolation and when to infer next.

A policy answers an observation stamped ``t_obs`` with a chunk of H actions (H, 8): a pose
(x, y, z, qx, qy, qz, qw) in the base frame plus a gripper width (m). Action i is due at

    t_obs + latency_offset + i * dt

(the same rule as training data). ``ChunkScheduler`` keeps the resulting plan, drops actions that are
already late when the chunk arrives, blends a new chunk into the plan it replaces, answers
``target_at(t)`` for the commander and ``should_infer(now, ...)`` for the policy node.
``LatencyEstimator`` supplies the measured latency that ``should_infer`` needs.

Pure: no ROS imports and no clock reads; every time is a float in seconds from the caller.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np

from avdp_ros.geometry import interpolate_poses, quat_normalize, slerp

BLEND_MODES = ("none", "linear")
INTERPOLATIONS = ("linear", "cubic")
ACTION_COLUMNS = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper")
# A policy's quaternions should be unit up to float noise; anything further off means a
# broken head or wrong post-processing, which we refuse rather than silently renormalise.
QUAT_NORM_TOL = 1e-3
# Waypoints kept from the old plan are at least this fraction of dt apart from the ones added,
# so two waypoints never nearly coincide (which would make the cubic tangents blow up).
MIN_WAYPOINT_GAP = 0.1


def _check_number(name: str, value: object, lo: float, lo_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"ChunkConfig.{name} = {value!r}: expected a finite number")
    if value < lo or (lo_open and value == lo):
        raise ValueError(f"ChunkConfig.{name} = {value!r}: expected {'>' if lo_open else '>='} {lo}")


@dataclass
class ChunkConfig:
    horizon: int = 16  # H, actions per chunk (from the exported manifest)
    execute_steps: int = 8  # n <= H: actions of each chunk executed before the next takes over
    dt: float = 0.1  # s between actions (1 / obs_hz)
    blend: str = "linear"  # how a new chunk takes over the overlap: "none" | "linear"
    interpolation: str = "linear"  # positions between waypoints: "linear" | "cubic" (C1 Hermite)
    latency_margin: float = 0.05  # s of slack on top of the latency estimate in should_infer
    hold_s: float = 0.2  # s past the plan end during which target_at still holds the last waypoint
    latency_offset: float = 0.0  # s added to every stamp (fixed actuation/transport delay)

    def __post_init__(self) -> None:
        for name in ("horizon", "execute_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ValueError(f"ChunkConfig.{name} = {value!r}: expected an integer >= 1")
        if self.execute_steps > self.horizon:
            raise ValueError(
                f"ChunkConfig: execute_steps {self.execute_steps} > horizon {self.horizon}: "
                f"a chunk has only {self.horizon} actions to execute"
            )
        _check_number("dt", self.dt, 0.0, lo_open=True)
        _check_number("latency_margin", self.latency_margin, 0.0)
        _check_number("hold_s", self.hold_s, 0.0)
        _check_number("latency_offset", self.latency_offset, 0.0)
        if self.blend not in BLEND_MODES:
            raise ValueError(f"ChunkConfig.blend = {self.blend!r}: expected one of {', '.join(BLEND_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"ChunkConfig.interpolation = {self.interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}"
            )


class LatencyEstimator:
    """Observation-to-chunk latency from recent measurements, as a high percentile.

    Feed it ``arrival_time - t_obs`` for each chunk: that covers camera transport, queueing and
    inference, which is exactly what delays a chunk relative to its stamps.

    Args:
        window: how many recent samples to keep.
        warmup: how many first samples to ignore (JIT / CUDA warm-up makes them unrepresentative).
        percentile: which percentile ``estimate()`` reports (high, so the plan rarely runs dry).
        initial: the estimate (s) until ``min_samples`` samples have been kept.
        min_samples: samples needed before the measured percentile replaces ``initial``.
    """

    def __init__(self, window: int = 20, warmup: int = 2, percentile: float = 90.0,
                 initial: float = 0.3, min_samples: int = 3):
        if window < 1 or warmup < 0 or not 1 <= min_samples <= window:
            raise ValueError(
                f"LatencyEstimator: window {window}, warmup {warmup}, min_samples {min_samples}: "
                "expected window >= 1, warmup >= 0 and 1 <= min_samples <= window"
            )
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"LatencyEstimator: percentile {percentile}: expected 0..100")
        if not (math.isfinite(initial) and initial >= 0.0):
            raise ValueError(f"LatencyEstimator: initial {initial}: expected a finite latency >= 0 s")
        self.warmup = warmup
        self.q = percentile
        self.initial = initial
        self.min_samples = min_samples
        self._samples: deque[float] = deque(maxlen=window)
        self._seen = 0  # every sample ever added, warm-up included

    def add(self, latency_s: float) -> None:
        """Record one measured latency (s); raises ValueError for a negative or non-finite one."""
        if not (math.isfinite(latency_s) and latency_s >= 0.0):
            raise ValueError(f"latency sample {latency_s!r}: expected a finite duration >= 0 s "
                             "(arrival time - observation stamp; check the clocks)")
        self._seen += 1
        if self._seen > self.warmup:
            self._samples.append(float(latency_s))

    def __len__(self) -> int:
        return len(self._samples)

    def percentile(self, q: float) -> float | None:
        """Percentile q (0..100) of the kept samples, or None before any."""
        return float(np.percentile(self._samples, q)) if self._samples else None

    def estimate(self) -> float:
        """Latency (s) to plan with: the configured percentile, or ``initial`` until enough samples."""
        if len(self._samples) < self.min_samples:
            return self.initial
        return float(np.percentile(self._samples, self.q))

    def summary(self) -> dict[str, float]:
        """n, p50, p90, p99 and the estimate, for /diagnostics (NaN where there are no samples)."""
        def pct(q: float) -> float:
            p = self.percentile(q)
            return math.nan if p is None else p

        return {"n": float(len(self)), "p50": pct(50), "p90": pct(90), "p99": pct(99), "estimate": self.estimate()}


class ChunkUpdate(NamedTuple):
    kept: int  # actions of the chunk now in the plan
    dropped: int  # actions already late at arrival


def _hermite(stamps: np.ndarray, points: np.ndarray, query: np.ndarray) -> np.ndarray:
    """C1 cubic Hermite through `points` (N, D) at `stamps` (N,), tangents by finite differences
    (Catmull-Rom for uneven spacing; one-sided at the ends). Queries are clamped to the stamps.

    Constant-velocity waypoints give exactly the linear interpolant, so "cubic" only differs
    where the motion bends.
    """
    n = stamps.shape[0]
    if n == 1:
        return np.repeat(points, query.shape[0], axis=0)
    tangents = np.empty_like(points)  # (N, D)
    tangents[0] = (points[1] - points[0]) / (stamps[1] - stamps[0])
    tangents[-1] = (points[-1] - points[-2]) / (stamps[-1] - stamps[-2])
    tangents[1:-1] = (points[2:] - points[:-2]) / (stamps[2:] - stamps[:-2])[:, None]
    q = np.clip(query, stamps[0], stamps[-1])
    hi = np.clip(np.searchsorted(stamps, q, side="right"), 1, n - 1)
    lo = hi - 1
    h = (stamps[hi] - stamps[lo])[:, None]  # (M, 1)
    s = (q[:, None] - stamps[lo][:, None]) / h
    s2, s3 = s * s, s * s * s
    return ((2 * s3 - 3 * s2 + 1) * points[lo] + (s3 - 2 * s2 + s) * h * tangents[lo]
            + (-2 * s3 + 3 * s2) * points[hi] + (s3 - s2) * h * tangents[hi])


class ChunkScheduler:
    """The current plan (time-stamped waypoints) built from action chunks.

    The plan keeps every action of the newest chunk, not only the first ``execute_steps``: the
    extra ones carry the robot on if the next chunk is late, and they are what a new chunk
    blends with. Times are float seconds on the caller's clock (the observation stamps' clock).
    """

    def __init__(self, config: ChunkConfig | None = None):
        self.cfg = config if config is not None else ChunkConfig()
        self.reset()

    def reset(self) -> None:
        """Forget the plan and any in-flight inference (e.g. at an episode start)."""
        self._stamps = np.empty(0)  # (N,) strictly increasing
        self._poses = np.empty((0, 7))  # (N, 7) unit quaternions with w >= 0
        self._widths = np.empty(0)  # (N,)
        self._chunk_t0: float | None = None  # due time of action 0 of the newest accepted chunk
        self._in_flight = False
        self.chunks_added = 0
        self.actions_dropped = 0

    # ---- chunks in ----

    def _validate(self, actions: object) -> np.ndarray:
        h = self.cfg.horizon
        try:
            a = np.array(actions, dtype=np.float64)  # a copy: we normalise it in place below
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"action chunk: not a numeric array ({e}); expected ({h}, 8) floats") from None
        if a.shape != (h, 8):
            raise ValueError(f"action chunk shape {a.shape}: expected ({h}, 8) = horizon x "
                             f"({', '.join(ACTION_COLUMNS)})")
        bad = np.argwhere(~np.isfinite(a))
        if bad.size:
            i, j = bad[0]
            raise ValueError(f"action chunk: non-finite {ACTION_COLUMNS[j]} = {a[i, j]} at action {i}: "
                             "expected finite numbers")
        norms = np.linalg.norm(a[:, 3:7], axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(norms[worst] - 1.0) > QUAT_NORM_TOL:
            raise ValueError(f"action chunk: quaternion norm {norms[worst]:.4f} at action {worst}: "
                             f"expected a unit quaternion (x, y, z, w), tolerance {QUAT_NORM_TOL}")
        a[:, 3:7] = quat_normalize(a[:, 3:7])
        return a

    def add_chunk(self, actions: np.ndarray, t_obs: float, now: float) -> ChunkUpdate:
        """Stamp a new chunk, drop its late actions and merge it into the plan.

        Args:
            actions: (horizon, 8) pose7 + gripper width; action i is due at
                t_obs + latency_offset + i * dt.
            t_obs: stamp (s) of the observation the chunk answers (header.stamp, not arrival).
            now: current time (s); actions due before it are late and dropped.

        Returns:
            How many actions were kept and dropped. If all are late the plan is unchanged.

        Raises:
            ValueError: malformed chunk (shape, non-finite, non-unit quaternion), non-finite
                times, or a chunk older than the current one; the plan is left unchanged.
        """
        a = self._validate(actions)
        if not (math.isfinite(t_obs) and math.isfinite(now)):
            raise ValueError(f"add_chunk: t_obs {t_obs!r}, now {now!r}: expected finite times (s)")
        cfg = self.cfg
        t0 = t_obs + cfg.latency_offset
        if self._chunk_t0 is not None and t0 < self._chunk_t0:
            raise ValueError(f"action chunk for t_obs {t_obs:.3f} is older than the current plan's "
                             f"({self._chunk_t0 - cfg.latency_offset:.3f}): expected chunks in order")
        stamps = t0 + cfg.dt * np.arange(cfg.horizon)  # (H,)
        first = int(np.searchsorted(stamps, now, side="left"))  # first action due at or after now
        dropped = first
        self.actions_dropped += dropped
        if first == cfg.horizon:
            return ChunkUpdate(0, dropped)
        new_s, new_p, new_w = stamps[first:], a[first:, :7], a[first:, 7]

        gap = MIN_WAYPOINT_GAP * cfg.dt
        if self._stamps.size and self._stamps[-1] + cfg.hold_s >= now:  # the plan is not stale
            if cfg.blend == "linear":
                new_p, new_w = self._blend(new_s, new_p, new_w)
            # Anchor the plan at what it asks for right now, so target_at(now) does not jump
            # when the chunk arrives (for "none" the switch to the new chunk then takes the
            # fraction of a step until its first action instead of zero time).
            anchor_p, anchor_w = self._sample(np.array([now], dtype=np.float64))
            # The last past waypoint stays as the anchor's neighbour (it sets the cubic tangent there).
            old = np.flatnonzero(self._stamps < now - gap)[-1:]
            anchor = [now] if new_s[0] - now > gap else []
            new_s = np.concatenate([self._stamps[old], anchor, new_s])
            new_p = np.concatenate([self._poses[old], anchor_p[: len(anchor)], new_p])
            new_w = np.concatenate([self._widths[old], anchor_w[: len(anchor)], new_w])
        # else: no plan, or a stale one (target_at(now) is None), which is simply replaced.
        self._stamps, self._poses, self._widths = new_s, new_p, new_w
        self._chunk_t0 = t0
        self.chunks_added += 1
        return ChunkUpdate(cfg.horizon - first, dropped)

    def _blend(self, new_s: np.ndarray, new_p: np.ndarray, new_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mix the new actions with the old plan over their overlap ("linear" blend).

        The new chunk's weight ramps linearly from 0 at its first kept action to 1 one step
        after the old plan ends, so the plan is unchanged at the take-over point (no jump) and
        purely the new chunk once the old one has nothing left to say.
        """
        a0, old_end = new_s[0], self._stamps[-1]
        if old_end < a0:
            return new_p, new_w  # no overlap
        w = np.clip((new_s - a0) / (old_end + self.cfg.dt - a0), 0.0, 1.0)  # (M,)
        old_p, old_w = self._sample(new_s)
        pos = (1.0 - w)[:, None] * old_p[:, :3] + w[:, None] * new_p[:, :3]
        rot = slerp(old_p[:, 3:], new_p[:, 3:], w)
        return np.concatenate([pos, rot], axis=1), (1.0 - w) * old_w + w * new_w

    # ---- plan out ----

    def _sample(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plan poses (M, 7) and widths (M,) at `query` (M,), held at the plan's ends."""
        poses = interpolate_poses(self._stamps, self._poses, query)  # linear positions, slerp rotations
        if self.cfg.interpolation == "cubic":
            poses[:, :3] = _hermite(self._stamps, self._poses[:, :3], query)
        # The gripper stays linear: a cubic could overshoot past fully open / closed.
        widths = np.interp(query, self._stamps, self._widths)
        return poses, widths

    def target_at(self, t: float) -> tuple[np.ndarray, float] | None:
        """(pose7, width) the plan wants at time t, or None when there is no plan or t is more than
        ``hold_s`` past its end (the plan is stale: the commander must hold)."""
        if not self._stamps.size or not math.isfinite(t) or t > self._stamps[-1] + self.cfg.hold_s:
            return None
        poses, widths = self._sample(np.array([t], dtype=np.float64))
        return poses[0], float(widths[0])

    def committed(self, t_obs: float, lands_at: float) -> np.ndarray | None:
        """The plan's actions at the due times of a chunk for an observation at `t_obs` that are
        due before `lands_at` (when that chunk is expected to arrive): what the robot executes
        anyway while the chunk is computed. A policy that supports it starts the new chunk with
        them (real-time chunking), so the chunk continues the motion instead of jumping.

        Returns:
            (P, 8) pose7 + width with 0 < P < horizon, or None (no live plan, or nothing due
            before `lands_at` within the plan).
        """
        if not self._stamps.size or not (math.isfinite(t_obs) and math.isfinite(lands_at)):
            return None
        cfg = self.cfg
        due = t_obs + cfg.latency_offset + cfg.dt * np.arange(cfg.horizon - 1)  # at most H - 1 rows
        due = due[(due < lands_at) & (due <= self._stamps[-1])]
        if due.size == 0 or self.target_at(float(due[0])) is None:
            return None
        poses, widths = self._sample(due)
        return np.concatenate([poses, widths[:, None]], axis=1)

    def plan_end(self) -> float | None:
        """Due time (s) of the plan's last waypoint, None without a plan."""
        return float(self._stamps[-1]) if self._stamps.size else None

    def remaining(self, t: float) -> float:
        """Seconds of plan left after time t (0 without a plan)."""
        return max(0.0, float(self._stamps[-1]) - t) if self._stamps.size else 0.0

    def waypoints(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the plan: stamps (N,), poses (N, 7), widths (N,) (e.g. for nav_msgs/Path)."""
        return self._stamps.copy(), self._poses.copy(), self._widths.copy()

    # ---- when to infer ----

    @property
    def inference_in_flight(self) -> bool:
        return self._in_flight

    def mark_inference_started(self) -> None:
        self._in_flight = True

    def mark_inference_finished(self) -> None:
        """Call when an inference ends, whether its chunk was accepted, rejected or it failed."""
        self._in_flight = False

    def should_infer(self, now: float, latency_estimate: float, margin: float | None = None,
                     execute_steps: int | None = None) -> bool:
        """Whether a new inference must start now (never while one is in flight).

        Timing rule: the newest chunk's first n = ``execute_steps`` actions are meant to run,
        so the next chunk should take over at ``switch = t0 + n * dt`` (t0 = due time of its
        action 0). An inference started now uses an observation stamped at most ``now`` and its
        chunk arrives about ``latency_estimate`` later (the estimator measures arrival - t_obs),
        so it lands in time iff ``now + latency_estimate + margin <= switch``. Start at the last
        moment that still holds, i.e. as soon as ``now + latency_estimate + margin >= switch``:
        later would run past the executed part, earlier would waste fresher observations. With
        no plan, infer at once. The actions after the first n are the buffer if it is late.
        """
        if not (math.isfinite(now) and math.isfinite(latency_estimate)):
            raise ValueError(f"should_infer: now {now!r}, latency {latency_estimate!r}: expected finite seconds")
        if self._in_flight:
            return False
        if self._chunk_t0 is None:
            return True
        n = self.cfg.execute_steps if execute_steps is None else execute_steps
        margin = self.cfg.latency_margin if margin is None else margin
        switch = self._chunk_t0 + n * self.cfg.dt
        return now + latency_estimate + margin >= switch
