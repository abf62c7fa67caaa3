"""Conversions between ROS messages and the numpy arrays the pure cores use.

Message types only (no rclpy node code), so nodes stay short and the conversions are testable.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseStamped
from sensor_msgs.msg import CameraInfo, Image


def stamp_from_sec(t: float) -> Time:
    ns = int(round(t * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def pose_to_msg(pose7: np.ndarray, frame_id: str, t: float) -> PoseStamped:
    msg = PoseStamped()
    msg.header.frame_id = frame_id
    msg.header.stamp = stamp_from_sec(t)
    fill_pose(msg.pose, pose7)
    return msg


def fill_pose(pose: Pose, pose7: np.ndarray) -> Pose:
    p = [float(v) for v in pose7]
    pose.position.x, pose.position.y, pose.position.z = p[0], p[1], p[2]
    o = pose.orientation
    o.x, o.y, o.z, o.w = p[3], p[4], p[5], p[6]
    return pose


def pose_from_msg(pose: Pose) -> np.ndarray:
    p, o = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, o.x, o.y, o.z, o.w], dtype=np.float64)


def image_to_msg(rgb: np.ndarray, frame_id: str, t: float, encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 array -> sensor_msgs/Image in `encoding` (rgb8, or bgr8 for BGR pixels)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image array {rgb.dtype} {rgb.shape}: expected uint8 (H, W, 3) rgb")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"image encoding {encoding!r}: expected rgb8 or bgr8")
    msg = Image()
    msg.header.frame_id = frame_id
    msg.header.stamp = stamp_from_sec(t)
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def camera_info_msg(width: int, height: int, fx: float, fy: float, cx: float, cy: float,
                    frame_id: str, t: float, distortion_model: str = "plumb_bob",
                    d: list[float] | None = None) -> CameraInfo:
    """Pinhole CameraInfo, realsense-ros style; `d` None = undistorted (the simulated cameras)."""
    msg = CameraInfo()
    msg.header.frame_id = frame_id
    msg.header.stamp = stamp_from_sec(t)
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = distortion_model
    msg.d = [float(v) for v in d] if d is not None else [0.0] * 5
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg
