"""A RealSense in software (`pyrealsense2.software_device`): frames injected with chosen pixels,
timestamps, domains and frame numbers come out of the camera code's `frame_queue` exactly like a
real sensor's. For tests and benchmarks on machines with no camera; no rclpy."""

from __future__ import annotations

import numpy as np

from avdp_ros.camera.realsense import _rs


class SoftwareRealSense:
    """One device with one colour stream per (width, height, fps, format) in `modes`.

    `plugged` says whether `query()` lists it: clearing it is an unplug, setting it a replug.
    """

    def __init__(self, serial: str = "000000000001", name: str = "Intel RealSense D435 (software)",
                 modes=((640, 480, 30, "rgb8"),), sensor_name: str = "RGB Camera",
                 global_time_option: bool = False) -> None:
        rs = self.rs = _rs()
        self.serial, self.plugged = serial, True
        self.device = rs.software_device()
        self.sensor = self.device.add_sensor(sensor_name)
        if global_time_option:  # a real colour sensor has it; a software one only if added
            self.sensor.add_option(rs.option.global_time_enabled, rs.option_range(0, 1, 1, 0), True)
        self.profiles = {}
        for uid, (w, h, fps, fmt) in enumerate(modes):
            intr = rs.intrinsics()
            intr.width, intr.height, intr.ppx, intr.ppy = w, h, w / 2 - 0.5, h / 2 - 0.5
            intr.fx = intr.fy = 0.9 * w
            intr.model, intr.coeffs = rs.distortion.brown_conrady, [0.01, -0.02, 0.0, 0.0, 0.003]
            vs = rs.video_stream()
            vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps = rs.stream.color, 0, uid, w, h, fps
            vs.bpp, vs.fmt, vs.intrinsics = 3, getattr(rs.format, fmt), intr
            self.profiles[(w, h, fps, fmt)] = self.sensor.add_video_stream(vs).as_video_stream_profile()
        self.device.register_info(rs.camera_info.serial_number, serial)
        self.device.register_info(rs.camera_info.name, name)

    def query(self) -> list:
        """What a context would list: this device while plugged."""
        return [self.device] if self.plugged else []

    def inject(self, pixels: np.ndarray, timestamp_ms: float, number: int, domain: str = "global_time") -> None:
        """Push one frame into the sensor (it reaches the camera code only while it streams)."""
        rs = self.rs
        h, w = pixels.shape[:2]
        active = [p for p in self.sensor.get_active_streams()] or list(self.profiles.values())
        profile = next(p.as_video_stream_profile() for p in active
                       if (p.as_video_stream_profile().width(), p.as_video_stream_profile().height()) == (w, h))
        f = rs.software_video_frame()
        f.pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        f.stride, f.bpp = w * 3, 3
        f.timestamp, f.domain, f.frame_number = float(timestamp_ms), getattr(rs.timestamp_domain, domain), int(number)
        f.profile = profile
        self.sensor.on_video_frame(f)
