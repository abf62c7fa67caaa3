"""RealSense colour streams, read the way realsense-ros reads them (pure: pyrealsense2, no rclpy).

`RealSenseCamera` opens one device by serial number, streams its colour sensor at a chosen size
and rate into a small `frame_queue`, and hands out `Frame`s stamped in ROS time. The node shell
(`nodes/realsense_camera_node.py`) only turns them into messages.

Time stamps (`StampMapper`): each RealSense frame carries a timestamp (ms) in one of three domains.
- `global_time` (what we ask for: the sensor option `global_time_enabled`): the device's hardware
  clock, mapped by librealsense onto the host's system clock with a running linear fit. It is the
  moment of exposure on the host clock, free of USB transfer jitter: the stamp is that time plus
  the offset between the ROS clock and the system clock (zero unless `use_sim_time`).
- `hardware_clock` (firmware or sensors without global time): the device's own microsecond
  counter, whose origin is unknown to the host. We map it with the smallest observed
  (arrival - hardware time) over the last `window_s` seconds: the frame that crossed USB fastest
  fixes the offset, so a stamp is never later than the frame's arrival and follows clock drift
  within the window. A counter that runs backwards (it wraps after 2^32 us, about 71.6 min, and
  restarts on replug) starts a new fit.
- `system_time` (no frame metadata, e.g. a kernel without the RealSense UVC patches): the host's
  arrival time of the frame, so the stamp includes the USB transfer and driver latency (a few ms to
  tens of ms, varying). We use it as it is and say so once in the log: the observation aligner then
  sees frames a little later than they were taken.

Frame numbers: a gap is dropped frames (`dropped`, counted, reported by the node); a number that
does not grow, or a stamp not newer than the last one handed out, is a stale or repeated frame and
is never handed out (`stale`). After `timeout_s` without a frame the device is closed and looked for
again every `reconnect_period_s` (unplug / replug, a USB reset); the new session gets a fresh queue,
so no frame of the old one can come out of it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FORMATS = ("rgb8", "bgr8")  # colour formats we stream, preferred first (realsense-ros: rgb8)
DOMAINS = ("global_time", "hardware_clock", "system_time")


class CameraError(RuntimeError):
    """A camera that cannot be opened as configured; the message says what was found instead."""


def _rs():
    try:
        import pyrealsense2 as rs
    except ImportError as exc:  # the library or its libusb is missing
        raise CameraError(f"pyrealsense2 is not importable ({exc}): `pip install pyrealsense2` "
                          "and `apt install libusb-1.0-0` (scripts/bootstrap.sh does both)") from exc
    return rs


@dataclass(frozen=True)
class CameraSpec:
    """One colour stream to open. `serial` "" = the only RealSense connected."""

    serial: str = ""
    width: int = 640
    height: int = 480
    fps: int = 30
    frame_id: str = "camera_color_optical_frame"

    def __post_init__(self) -> None:
        for name in ("width", "height", "fps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"camera {self.serial or '(any)'}: {name} {value!r}: expected a positive integer")
        if not self.frame_id:
            raise ValueError(f"camera {self.serial or '(any)'}: frame_id is empty: expected the optical frame name")

    @property
    def label(self) -> str:
        return f"RealSense {self.serial}" if self.serial else "RealSense (the only one connected)"


@dataclass
class Frame:
    """One colour frame. `data` is (H, W, 3) uint8 in `encoding` (rgb8 or bgr8)."""

    data: np.ndarray
    encoding: str
    stamp: float    # ROS time of exposure (s), see StampMapper
    number: int     # the device's frame counter
    domain: str     # timestamp domain it was mapped from
    arrival: float  # ROS time it was read from the queue (s)


@dataclass
class CameraStats:
    frames: int = 0       # handed out
    dropped: int = 0      # frame-number gaps (lost on USB, or not read in time)
    stale: int = 0        # repeated / older frames refused
    reconnects: int = 0   # sessions opened after the first
    domain: str = ""      # timestamp domain of the last frame
    serial: str = ""      # of the device in use


def camera_info_fields(intrinsics) -> dict:
    """pyrealsense2 intrinsics -> CameraInfo fields, as realsense-ros fills them: plumb_bob for the
    Brown-Conrady family (the colour camera's model), equidistant for Kannala-Brandt (fisheye)."""
    rs = _rs()
    model = "equidistant" if intrinsics.model == rs.distortion.kannala_brandt4 else "plumb_bob"
    coeffs = [float(c) for c in intrinsics.coeffs]
    return {"width": int(intrinsics.width), "height": int(intrinsics.height),
            "fx": float(intrinsics.fx), "fy": float(intrinsics.fy),
            "cx": float(intrinsics.ppx), "cy": float(intrinsics.ppy),
            "distortion_model": model, "d": coeffs[:4] if model == "equidistant" else coeffs[:5]}


class StampMapper:
    """Device frame timestamps (ms, per domain) -> ROS time (s); the module docstring says how."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.reset()

    def reset(self) -> None:
        self._offsets: collections.deque[tuple[float, float]] = collections.deque()  # (arrival, offset)
        self._last_hw: float | None = None

    def __call__(self, ts_ms: float, domain: str, ros_now: float, wall_now: float) -> float:
        t = ts_ms * 1e-3
        if domain in ("global_time", "system_time"):  # both on the host's system clock
            return t + (ros_now - wall_now)
        if domain != "hardware_clock":
            raise ValueError(f"timestamp domain {domain!r}: expected one of {', '.join(DOMAINS)}")
        if self._last_hw is not None and t < self._last_hw:
            self.reset()  # counter wrapped or the device restarted: a new origin
        self._last_hw = t
        offset = ros_now - t
        q = self._offsets
        while q and q[-1][1] >= offset:  # monotonic deque: the window's minimum stays at q[0]
            q.pop()
        q.append((ros_now, offset))
        while q[0][0] < ros_now - self.window_s:
            q.popleft()
        return t + q[0][1]


def list_devices(query: Callable[[], list] | None = None) -> list[tuple[str, str]]:
    """(serial, name) of every RealSense connected (query: devices source, default librealsense's)."""
    rs = _rs()
    devices = query() if query is not None else list(rs.context().query_devices())
    out = []
    for dev in devices:
        name = dev.get_info(rs.camera_info.name) if dev.supports(rs.camera_info.name) else "RealSense"
        out.append((dev.get_info(rs.camera_info.serial_number), name))
    return out


class RealSenseCamera:
    """One device's colour stream; `read()` returns the next new frame, or None, and reconnects.

    Args:
        spec: what to open.
        query: returns the connected `pyrealsense2.device`s (default: a librealsense context);
            tests pass `software_device`s, which a context does not list.
        ros_clock: ROS time now (s), e.g. the node's clock; default: the system clock.
        log: `log(level, text)` for events (level "info" / "warn"); default: silent.
        timeout_s: no frame for this long = the device is gone (closed, then looked for again).
        reconnect_period_s: how often a missing device is looked for.
        global_time: enable the sensor's global time domain where it has the option.
        queue_size: frames librealsense keeps for us; older ones are dropped (counted as gaps).
    """

    def __init__(self, spec: CameraSpec, query: Callable[[], list] | None = None,
                 ros_clock: Callable[[], float] = time.time, log: Callable[[str, str], None] = lambda *_: None,
                 timeout_s: float = 1.0, reconnect_period_s: float = 0.5, global_time: bool = True,
                 queue_size: int = 2) -> None:
        self.rs = _rs()
        self.spec, self._query, self.clock, self.log = spec, query, ros_clock, log
        self.timeout_s, self.reconnect_period_s = timeout_s, reconnect_period_s
        self.global_time, self.queue_size = global_time, queue_size
        self.stats = CameraStats(serial=spec.serial)
        self.mapper = StampMapper()
        self.info: dict | None = None  # camera_info_fields of the open stream
        self.encoding = ""
        self._sensor = self._queue = None
        self._last_number: int | None = None
        self._last_stamp = -float("inf")  # across sessions: nothing older ever goes out again
        self._last_frame_at = 0.0
        self._next_attempt = 0.0
        self._warned_system_time = False
        self._sessions = 0

    @property
    def connected(self) -> bool:
        return self._sensor is not None

    # ------------------------------------------------------------------ opening
    def _devices(self) -> list:
        return self._query() if self._query is not None else list(self.rs.context().query_devices())

    def _find(self):
        rs, devices = self.rs, self._devices()
        if not self.spec.serial:
            if not devices:
                raise CameraError(f"{self.spec.label}: no RealSense connected (plugged in? `lsusb` lists it "
                                  "as Intel Corp. RealSense; in a container, pass /dev/bus/usb through)")
            if len(devices) != 1:
                raise CameraError(f"{self.spec.label}: {len(devices)} RealSense devices connected "
                                  f"({self._describe(devices)}): set the serial number of the one to use")
            return devices[0]
        for dev in devices:
            if dev.get_info(rs.camera_info.serial_number) == self.spec.serial:
                return dev
        return None

    def _describe(self, devices=None) -> str:
        found = list_devices(lambda: devices if devices is not None else self._devices())
        return ", ".join(f"{serial} ({name})" for serial, name in found) or "none"

    def _profile(self, dev):
        """The (sensor, profile) streaming colour at spec's size and rate, rgb8 preferred. The D405
        has no RGB sensor: its colour stream comes from the stereo module, so every sensor is asked."""
        rs, s = self.rs, self.spec
        offered = []
        for fmt_name in FORMATS:
            fmt = getattr(rs.format, fmt_name)
            for sensor in dev.query_sensors():
                for p in sensor.get_stream_profiles():
                    if p.stream_type() != rs.stream.color or not p.is_video_stream_profile():
                        continue
                    v = p.as_video_stream_profile()
                    if (v.width(), v.height(), v.fps(), v.format()) == (s.width, s.height, s.fps, fmt):
                        return sensor, v, fmt_name
                    if fmt_name == FORMATS[0]:
                        offered.append(f"{v.width()}x{v.height()}@{v.fps()} {str(v.format()).split('.')[-1]}")
        raise CameraError(f"{self.spec.label}: no colour stream {s.width}x{s.height} @ {s.fps} Hz in "
                          f"{' or '.join(FORMATS)}; it offers {', '.join(sorted(set(offered))) or 'no colour stream'}")

    def open(self) -> None:
        """Open the device now; CameraError if it is not connected (listing those that are) or
        cannot stream as configured. Use at start-up: a camera missing then is a configuration error."""
        dev = self._find()
        if dev is None:
            raise CameraError(f"{self.spec.label} not found; connected: {self._describe()}")
        self._start(dev)

    def _start(self, dev) -> None:
        rs = self.rs
        sensor, profile, encoding = self._profile(dev)
        if self.global_time and sensor.supports(rs.option.global_time_enabled):
            sensor.set_option(rs.option.global_time_enabled, 1)
        queue = rs.frame_queue(self.queue_size)
        sensor.open(profile)
        sensor.start(queue)
        self._sensor, self._queue, self.encoding = sensor, queue, encoding
        self.info = camera_info_fields(profile.get_intrinsics())
        self.stats.serial = dev.get_info(rs.camera_info.serial_number)
        self._last_number = None
        self.mapper.reset()
        self._last_frame_at = time.monotonic()
        if self._sessions:
            self.stats.reconnects += 1
            self.log("info", f"{self.spec.label}: reconnected, streaming again")
        self._sessions += 1

    def close(self) -> None:
        sensor, self._sensor, self._queue = self._sensor, None, None
        if sensor is None:
            return
        for step in (sensor.stop, sensor.close):
            try:
                step()
            except RuntimeError:
                pass  # already stopped, or the device is gone: nothing left to release

    # ------------------------------------------------------------------ reading
    def read(self, timeout_s: float = 0.1) -> Frame | None:
        """The next new frame within timeout_s, else None. While disconnected it looks for the
        device every reconnect_period_s (sleeping out the rest of timeout_s) and returns None."""
        if self._sensor is None:
            return self._reconnect(timeout_s)
        try:
            frame = self._queue.wait_for_frame(int(timeout_s * 1000))
        except RuntimeError:  # nothing within the timeout
            if time.monotonic() - self._last_frame_at > self.timeout_s:
                self.log("warn", f"{self.spec.label}: no frame for {self.timeout_s:g} s: "
                         "closing it and looking for it again (unplugged?)")
                self.close()
                self._next_attempt = 0.0
            return None
        self._last_frame_at = time.monotonic()
        return self._convert(frame)

    def _reconnect(self, timeout_s: float) -> None:
        now = time.monotonic()
        if now >= self._next_attempt:
            self._next_attempt = now + self.reconnect_period_s
            try:
                dev = self._find()
                if dev is not None:
                    self._start(dev)
                    return None
            except (RuntimeError, CameraError) as exc:  # gone again while opening, or busy
                self.log("warn", f"{self.spec.label}: reopening failed ({exc}); trying again")
                self.close()
        time.sleep(max(0.0, min(timeout_s, self._next_attempt - time.monotonic())))
        return None

    def _convert(self, frame) -> Frame | None:
        arrival, wall = self.clock(), time.time()
        number = int(frame.get_frame_number())
        domain = str(frame.get_frame_timestamp_domain()).split(".")[-1]
        stamp = self.mapper(frame.get_timestamp(), domain, arrival, wall)
        if self._last_number is not None and number <= self._last_number:
            self.stats.stale += 1  # repeated, or out of order
            return None
        if self._last_number is not None:
            self.stats.dropped += number - self._last_number - 1
        self._last_number = number
        if stamp <= self._last_stamp:  # e.g. a frame of before a replug: it came, but is not new
            self.stats.stale += 1
            return None
        self._last_stamp = stamp
        if domain == "system_time" and not self._warned_system_time:
            self._warned_system_time = True
            self.log("warn", f"{self.spec.label}: frames carry only system-time stamps (arrival on the host, "
                     "USB latency included); global time needs frame metadata (librealsense's kernel patches "
                     "or its RSUSB backend)")
        vf = frame.as_video_frame()
        h, w, stride = vf.get_height(), vf.get_width(), vf.get_stride_in_bytes()
        # copy: the frame's buffer goes back to librealsense's pool when `frame` is released
        rows = np.frombuffer(vf.get_data(), np.uint8, count=h * stride).reshape(h, stride)
        data = rows[:, : w * 3].copy().reshape(h, w, 3)
        self.stats.frames += 1
        self.stats.domain = domain
        return Frame(data=data, encoding=self.encoding, stamp=stamp, number=number, domain=domain, arrival=arrival)
