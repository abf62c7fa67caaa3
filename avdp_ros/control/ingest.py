"""Live sensor streams -> one time-aligned policy observation (pure; no rclpy).

The policy node converts stamps (``nodes.msgs.stamp_to_sec``) and hands over images (raw or
compressed messages via ``add_image_msg``) and numbers; this core never reads a clock itself:
every call takes ``now`` (seconds, the node's clock) so tests drive it with a fake clock.
Alignment is on header stamps, never on arrival time, the same rule the bag converter uses for
training data:

- cameras: each keeps its last few frames, because two cameras publish at different phases and
  the newest frame of one usually has its partner one frame back in the other. The newest set
  whose stamps agree within ``stamp_tolerance_s`` wins; ``t_obs`` is the midpoint of its stamps.
- ee pose (200 Hz): interpolated at ``t_obs`` (linear + slerp, ``geometry.interpolate_poses``).
- gripper width: linear at ``t_obs``.

Every input is checked on arrival (``add_*`` return None or a message naming the stream, its
topic and what was expected); rejections are counted per (stream, kind) for /diagnostics. A raw
image is only checked on arrival and converted (colour, resize) when an observation first uses
it: cameras send 30 frames a second, observations use obs_hz (10) of them, and at 640x480 the
conversion is most of the node's per-frame CPU and GIL time (docs/benchmarks.md, "Command stream").
``assemble`` returns ``(obs, None)`` or ``(None, reason)``; the reason names the stream at fault.
A stream is silent when nothing valid arrived for its timeout (arrival time); a sample is usable
for ``t_obs`` only within that same timeout of it (stamp time).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from avdp_ros.geometry import interpolate_poses, quat_normalize
from avdp_ros.images import ImageError, decode_compressed, pixels_to_rgb, raw_pixels
from avdp_ros.validation import check_pose

POSE = "ee_pose"  # stream names are the observation keys
GRIPPER = "gripper"
_RESERVED = {POSE, GRIPPER, "instruction", "t_obs"}

# what `ObservationAssembler.rejected` counts per stream: unset / future / non-increasing stamps,
# wrong frame_id, wrong shape or dtype, NaN/inf values, non-unit quaternion, unconvertible image
REJECTION_KINDS = ("no_stamp", "future", "backwards", "duplicate", "frame", "shape", "non_finite",
                   "quaternion", "image")


@dataclass
class IngestConfig:
    """What the policy node listens to and how strict it is (topic defaults as in nodes/topics.py)."""

    cameras: dict[str, str] = field(default_factory=lambda: {  # observation key -> image topic
        "camera": "/camera/camera/color/image_raw",
        "wrist": "/wrist_camera/color/image_raw",
    })
    pose_topic: str = "/cartesian_impedance_controller/current_pose"  # names it in messages
    gripper_topic: str = "/gripper/joint_states"
    frame_id: str = "panda_link0"  # the only frame poses are accepted in (no tf here)
    image_size: tuple[int, int] = (128, 128)  # (height, width) the model takes
    expect_size: tuple[int, int] | None = None  # strict: reject camera images of any other (h, w)
    stamp_tolerance_s: float = 0.05  # max spread of the camera stamps in one observation
    max_age_s: float = 0.25  # an observation whose t_obs is older than this (vs now) is stale
    camera_timeout_s: float = 0.5  # per-stream silence limit, and max |sample stamp - t_obs|
    pose_timeout_s: float = 0.1
    gripper_timeout_s: float = 0.5
    max_future_skew_s: float = 0.05  # stamps ahead of now by more are rejected (clock mismatch)
    camera_buffer: int = 5  # frames kept per camera for alignment
    history_s: float = 1.0  # pose / gripper history kept (must cover max_age + timeout)

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("cameras is empty: expected at least one {name: topic}")
        for name, topic in self.cameras.items():
            if name in _RESERVED or not name:
                raise ValueError(f"camera name {name!r} clashes with observation keys {sorted(_RESERVED)}")
            if not isinstance(topic, str) or not topic:
                raise ValueError(f"camera {name!r}: topic {topic!r}, expected a non-empty topic name")
        if not self.frame_id:
            raise ValueError("frame_id is empty: expected the robot base frame (e.g. 'panda_link0')")
        self.image_size = _hw("image_size", self.image_size)
        if self.expect_size is not None:
            self.expect_size = _hw("expect_size", self.expect_size)
        for name in ("stamp_tolerance_s", "max_age_s", "camera_timeout_s", "pose_timeout_s",
                     "gripper_timeout_s", "history_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name}={v!r}: expected a finite number of seconds > 0")
        if not (math.isfinite(self.max_future_skew_s) and self.max_future_skew_s >= 0):
            raise ValueError(f"max_future_skew_s={self.max_future_skew_s!r}: expected seconds >= 0")
        if int(self.camera_buffer) < 1:
            raise ValueError(f"camera_buffer={self.camera_buffer}: expected >= 1 frame")
        need = self.max_age_s + max(self.pose_timeout_s, self.gripper_timeout_s)
        if self.history_s < need:
            raise ValueError(f"history_s={self.history_s}: expected >= max_age_s + the larger of "
                             f"pose/gripper timeout = {need:g}, or samples for t_obs are dropped too early")

    def topic(self, stream: str) -> str:
        if stream == POSE:
            return self.pose_topic
        if stream == GRIPPER:
            return self.gripper_topic
        return self.cameras[stream]

    def timeout(self, stream: str) -> float:
        if stream == POSE:
            return self.pose_timeout_s
        if stream == GRIPPER:
            return self.gripper_timeout_s
        return self.camera_timeout_s


def _hw(name: str, v) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={v!r}: expected (height, width)") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}={v!r}: expected positive (height, width)")
    return h, w


class _Frame:
    """A checked raw frame (``raw_pixels``' view of its message), converted on first use and kept."""

    __slots__ = ("pixels", "encoding", "size", "_rgb")

    def __init__(self, pixels: np.ndarray, encoding: str, size: tuple[int, int]) -> None:
        self.pixels, self.encoding, self.size, self._rgb = pixels, encoding, size, None

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = pixels_to_rgb(self.pixels, self.encoding, self.size)
            self.pixels = None  # the message's buffer can go
        return self._rgb


class _Stream:
    """Accepted samples of one stream, oldest first, plus what the checks need."""

    def __init__(self, maxlen: int | None = None) -> None:
        self.samples: deque[tuple[float, object]] = deque(maxlen=maxlen)  # (stamp, value)
        self.last_arrival: float | None = None  # `now` when the newest valid sample arrived
        self.last_rejection: float | None = None  # `now` when the newest invalid one arrived

    @property
    def last_stamp(self) -> float | None:
        return self.samples[-1][0] if self.samples else None


class ObservationAssembler:
    """Collects camera frames, ee poses and gripper widths; builds aligned observations.

    Thread-safe (one lock), so inputs may be added from other threads than the one that
    assembles; the policy node does both on its single executor thread.

    Attributes:
        rejected: Counter of rejected inputs per (stream, kind), kinds in ``REJECTION_KINDS``.
        not_ready: Counter of ``assemble`` failures per (stream, kind): kinds ``missing``,
            ``silent``, ``no_sample`` (no sample within the timeout of t_obs), ``out_of_sync``
            (stream ``cameras``), ``stale`` (stream ``observation``).
        last_rejection: the latest rejection message per stream.
        clock_resets: how often ``now`` jumped back (sim reset, bag loop) and buffers were cleared.
    """

    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.not_ready: Counter[tuple[str, str]] = Counter()
        self.last_rejection: dict[str, str] = {}
        self.clock_resets = 0
        self._lock = threading.Lock()
        self._latest_now = -math.inf
        self._streams: dict[str, _Stream] = {}
        self.reset()

    def reset(self) -> None:
        """Drop all buffered samples (new episode, clock jump); counters are kept."""
        with self._lock:
            self._streams = {name: _Stream(int(self.cfg.camera_buffer)) for name in self.cfg.cameras}
            self._streams[POSE] = _Stream()
            self._streams[GRIPPER] = _Stream()

    # ------------------------------------------------------------------------------------------
    # inputs

    def add_image(self, camera: str, stamp: float, rgb: np.ndarray, now: float) -> str | None:
        """A converted camera frame: (image_size[0], image_size[1], 3) uint8 RGB."""
        if camera not in self.cfg.cameras:
            raise ValueError(f"camera {camera!r}: expected one of {sorted(self.cfg.cameras)}")
        want = (*self.cfg.image_size, 3)
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.shape != want:
            got = f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}"
            return self._reject(camera, "shape", f"image {got}, expected uint8 {want} RGB (to_rgb with image_size)",
                                now)
        return self._add(camera, stamp, rgb, now)

    def add_image_msg(self, camera: str, stamp: float, msg, now: float) -> str | None:
        """A sensor_msgs/Image (checked now, converted when first used) or a CompressedImage (has
        ``format``; decoded now: decoding is its check)."""
        if camera not in self.cfg.cameras:
            raise ValueError(f"camera {camera!r}: expected one of {sorted(self.cfg.cameras)}")
        try:
            if hasattr(msg, "format"):
                return self.add_image(camera, stamp, decode_compressed(
                    msg, self.cfg.image_size, expect_size=self.cfg.expect_size), now)
            frame = _Frame(raw_pixels(msg, expect_size=self.cfg.expect_size), msg.encoding, self.cfg.image_size)
        except ImageError as err:
            return self._reject(camera, "image", str(err), now)
        return self._add(camera, stamp, frame, now)

    def add_pose(self, stamp: float, pose7, frame_id: str, now: float) -> str | None:
        """The measured ee pose (x y z qx qy qz qw) in ``frame_id``."""
        pose = np.asarray(pose7, dtype=np.float64)
        err = check_pose(pose, frame_id, self.cfg.frame_id, self._label(POSE))
        if err is not None:
            return self._reject(POSE, _pose_kind(pose, frame_id, self.cfg.frame_id), err, now)
        # unit, w >= 0 as in the converted dataset (a lone sample is returned as stored)
        return self._add(POSE, stamp, np.concatenate([pose[:3], quat_normalize(pose[3:])]), now)

    def add_gripper(self, stamp: float, width: float, now: float) -> str | None:
        """The measured gripper width in metres (sum of the finger positions)."""
        try:
            width = float(width)
        except (TypeError, ValueError):
            return self._reject(GRIPPER, "shape", f"width {width!r}, expected a number (m)", now)
        if not math.isfinite(width):
            return self._reject(GRIPPER, "non_finite", f"width {width}, expected a finite width in metres", now)
        return self._add(GRIPPER, stamp, width, now)

    def _add(self, name: str, stamp: float, value, now: float) -> str | None:
        with self._lock:
            self._tick(now)
            s = self._streams[name]
            stamp = float(stamp)
            kind, what = None, ""
            if not math.isfinite(stamp) or stamp <= 0:
                # a zero stamp is a driver that never fills header.stamp; it cannot be aligned
                kind, what = "no_stamp", f"header stamp {stamp}, expected the capture time (> 0)"
            elif stamp > now + self.cfg.max_future_skew_s:
                kind, what = "future", (f"stamp {stamp:.3f} is {stamp - now:.3f} s ahead of now, expected "
                                        f"<= {self.cfg.max_future_skew_s} s (clocks not synchronised?)")
            elif s.last_stamp is not None and stamp < s.last_stamp:
                kind, what = "backwards", (f"stamp {stamp:.3f} is {s.last_stamp - stamp:.3f} s before the last "
                                           f"accepted {s.last_stamp:.3f}, expected increasing stamps")
            elif s.last_stamp is not None and stamp == s.last_stamp:
                kind, what = "duplicate", f"stamp {stamp:.3f} repeated, expected increasing stamps"
            if kind is not None:
                return self._reject_locked(name, kind, what, now)
            s.samples.append((stamp, value))
            s.last_arrival = now
            if name in (POSE, GRIPPER):
                while s.samples[0][0] < stamp - self.cfg.history_s:
                    s.samples.popleft()
            return None

    def _tick(self, now: float) -> None:
        """Notice a clock that jumped back: everything buffered belongs to the old timeline."""
        # slack: callbacks on other threads may read the clock slightly out of order
        if now < self._latest_now - max(self.cfg.max_future_skew_s, 1e-3):
            self.clock_resets += 1
            for name, s in self._streams.items():
                self._streams[name] = _Stream(s.samples.maxlen)
            self._latest_now = now
        self._latest_now = max(self._latest_now, now)

    def _reject(self, name: str, kind: str, message: str, now: float) -> str:
        with self._lock:
            self._tick(now)
            return self._reject_locked(name, kind, message, now)

    def _reject_locked(self, name: str, kind: str, message: str, now: float) -> str:
        if not message.startswith(self._label(name)):
            message = f"{self._label(name)}: {message}"
        self.rejected[(name, kind)] += 1
        self.last_rejection[name] = message
        self._streams[name].last_rejection = now
        return message

    def _label(self, name: str) -> str:
        return f"{name} ({self.cfg.topic(name)})"

    # ------------------------------------------------------------------------------------------
    # output

    def assemble(self, now: float, instruction: str = "") -> tuple[dict | None, str | None]:
        """The newest aligned observation, or why there is none.

        Returns:
            ``(obs, None)`` with obs = {camera name: (H, W, 3) uint8, ..., "ee_pose": (7,) float64,
            "gripper": float, "instruction": str, "t_obs": float seconds}, or ``(None, reason)``.
        """
        with self._lock:
            self._tick(now)
            obs, problems = self._assemble(now)
            if obs is None:
                for stream, kind, _ in problems:
                    self.not_ready[(stream, kind)] += 1
                return None, "; ".join(reason for _, _, reason in problems)
            obs["instruction"] = instruction
            return obs, None

    def _assemble(self, now: float) -> tuple[dict | None, list[tuple[str, str, str]]]:
        """-> (obs, []) or (None, [(stream, kind, reason), ...])."""
        cfg = self.cfg
        problems = []  # every missing / silent stream at once, so start-up shows all of them
        for name, s in self._streams.items():
            if s.last_arrival is None:
                problems.append((name, "missing", self._with_rejection(name, f"{self._label(name)}: no message yet")))
            elif now - s.last_arrival > cfg.timeout(name):
                problems.append((name, "silent", self._with_rejection(
                    name, f"{self._label(name)}: silent for {now - s.last_arrival:.3f} s "
                          f"(timeout {cfg.timeout(name)} s)")))
        if problems:
            return None, problems

        frames = self._align_cameras()
        if frames is None:
            newest = {n: self._streams[n].last_stamp for n in cfg.cameras}
            late = min(newest, key=newest.get)  # usually the one at fault (delayed or stalled)
            listed = ", ".join(f"{n} {t:.3f}" for n, t in newest.items())
            return None, [("cameras", "out_of_sync",
                          f"cameras out of sync: no frames within {cfg.stamp_tolerance_s} s of each other "
                          f"in the last {cfg.camera_buffer} per camera; {self._label(late)} is "
                          f"{max(newest.values()) - newest[late]:.3f} s behind (newest stamps: {listed})")]
        stamps = [t for t, _ in frames.values()]
        t_obs = 0.5 * (min(stamps) + max(stamps))  # every frame within tolerance / 2 of t_obs
        age = now - t_obs
        if age > cfg.max_age_s:
            ages = ", ".join(f"{n} {now - t:.3f} s" for n, (t, _) in frames.items())
            return None, [("observation", "stale",
                          f"stale observation: t_obs is {age:.3f} s old, expected <= {cfg.max_age_s} s "
                          f"(frame ages: {ages})")]

        obs: dict = {name: img.rgb() if isinstance(img, _Frame) else img for name, (_, img) in frames.items()}
        for name in (POSE, GRIPPER):
            st = np.array([t for t, _ in self._streams[name].samples])
            gap = float(np.min(np.abs(st - t_obs)))
            if gap > cfg.timeout(name):
                return None, [(name, "no_sample",
                              f"{self._label(name)}: nearest sample is {gap:.3f} s from t_obs {t_obs:.3f}, "
                              f"expected within {cfg.timeout(name)} s (stamps {st[0]:.3f}..{st[-1]:.3f})")]
            values = [v for _, v in self._streams[name].samples]
            if name == POSE:
                obs[POSE] = interpolate_poses(st, np.stack(values), np.array([t_obs]))[0]
            else:
                obs[GRIPPER] = float(np.interp(t_obs, st, np.asarray(values, dtype=np.float64)))
        obs["t_obs"] = t_obs
        return obs, []

    def _align_cameras(self) -> dict[str, tuple[float, np.ndarray]] | None:
        """Newest set of one frame per camera whose stamps agree within the tolerance."""
        best, best_key = None, None
        for anchor in self.cfg.cameras:
            for t_anchor, _ in self._streams[anchor].samples:
                pick = {n: min(self._streams[n].samples, key=lambda f: abs(f[0] - t_anchor))
                        for n in self.cfg.cameras}
                ts = [t for t, _ in pick.values()]
                spread = max(ts) - min(ts)
                if spread > self.cfg.stamp_tolerance_s:
                    continue
                key = (0.5 * (max(ts) + min(ts)), -spread)  # newest first, then the tightest
                if best_key is None or key > best_key:
                    best, best_key = pick, key
        return best

    def _with_rejection(self, name: str, reason: str) -> str:
        # silence is often a stream whose every message is rejected: say so (if it is news)
        s = self._streams[name]
        if s.last_rejection is None or (s.last_arrival is not None and s.last_rejection < s.last_arrival):
            return reason
        return f"{reason} (last rejected: {self.last_rejection[name]})"


def _pose_kind(pose: np.ndarray, frame_id: str, expected_frame: str) -> str:
    """The rejection kind of a pose ``check_pose`` refused (same order as its checks)."""
    if frame_id != expected_frame:
        return "frame"
    if pose.shape != (7,):
        return "shape"
    if not np.all(np.isfinite(pose)):
        return "non_finite"
    return "quaternion"
