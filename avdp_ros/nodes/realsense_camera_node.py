"""RealSense colour cameras on the topics realsense-ros uses (`realsense_camera`, node `avdp_realsense_camera`).

Opens one or two devices by serial number (`camera.realsense.RealSenseCamera`: time stamps,
dropped frames and unplug / replug are handled and documented there) and publishes, per camera,
`.../color/image_raw` (sensor_msgs/Image, rgb8) and its sibling `.../color/camera_info` (from the
device intrinsics), stamped with the frame's exposure time in ROS time, best effort depth 1: the
topics `config/policy.yaml` reads. A serial number it cannot find at start-up is refused with the
list of those it sees. Each camera has its own reading thread, which publishes as soon as a frame
is out of the queue; per-camera counters and latency go to /diagnostics once a second.

    realsense_camera --ros-args -p serial_numbers:="['123456789012', '234567890123']"
"""

from __future__ import annotations

import collections
import sys
import threading

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from avdp_ros.camera.realsense import CameraError, CameraSpec, RealSenseCamera
from avdp_ros.nodes import topics
from avdp_ros.nodes.msgs import camera_info_msg, image_to_msg, stamp_from_sec
from avdp_ros.nodes.spin import run_node

PARAMETERS = {
    "serial_numbers": ([""], "devices to open, in the order of image_topics; [''] = the only one connected"),
    "image_topics": ([topics.CAMERA_IMAGE, topics.WRIST_IMAGE], "image topic per device (camera_info beside it)"),
    "frame_ids": (["camera_color_optical_frame", "wrist_camera_color_optical_frame"], "optical frame per device"),
    "width": (640, "colour stream width (px)"),
    "height": (480, "colour stream height (px)"),
    "fps": (30, "colour stream rate (Hz)"),
    "global_time": (True, "stamp from the device clock mapped to the host clock (see camera/realsense.py)"),
    "timeout_s": (1.0, "no frame for this long: the device is closed and looked for again"),
    "reconnect_period_s": (0.5, "how often a missing device is looked for"),
    "diagnostics_rate_hz": (1.0, "/diagnostics per camera; 0 = off"),
}


def specs_from_values(values: dict) -> list[CameraSpec]:
    """The node's parameter values -> one CameraSpec per device, with errors naming the parameter."""
    serials = [str(s) for s in values["serial_numbers"]]
    if not serials or len(serials) > len(values["image_topics"]) or len(serials) > len(values["frame_ids"]):
        raise ValueError(f"serial_numbers {serials}: expected 1 to {len(values['image_topics'])} entries, "
                         "one per entry of image_topics and frame_ids")
    if len(set(serials)) != len(serials) or (len(serials) > 1 and "" in serials):
        raise ValueError(f"serial_numbers {serials}: expected distinct serial numbers ('' only for a single camera)")
    for name in ("width", "height", "fps"):
        if not isinstance(values[name], int) or values[name] <= 0:
            raise ValueError(f"parameter {name} {values[name]!r}: expected a positive integer")
    return [CameraSpec(serial=s, width=values["width"], height=values["height"], fps=values["fps"], frame_id=f)
            for s, f in zip(serials, values["frame_ids"])]


class RealSenseCameraNode(Node):
    """`query`: where devices come from (tests and benchmarks pass software devices); default librealsense."""

    def __init__(self, query=None, **kwargs):
        super().__init__("avdp_realsense_camera", **kwargs)
        for name, (default, doc) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=doc))
        values = {name: self.get_parameter(name).value for name in PARAMETERS}
        self._stop = threading.Event()
        self.cameras: list[RealSenseCamera] = []
        self._latency: dict[str, collections.deque] = {}
        log = self.get_logger()
        try:
            for spec in specs_from_values(values):
                cam = RealSenseCamera(spec, query=query, ros_clock=self._now, log=self._log,
                                      timeout_s=values["timeout_s"], reconnect_period_s=values["reconnect_period_s"],
                                      global_time=values["global_time"])
                cam.open()
                self.cameras.append(cam)
        except (CameraError, ValueError) as exc:  # a configuration error: say what, leave nothing open
            for cam in self.cameras:
                cam.close()
            self.destroy_node()
            raise ValueError(f"avdp_realsense_camera: {exc}") from exc
        self._threads = []
        for cam, topic in zip(self.cameras, values["image_topics"]):
            pubs = (self.create_publisher(Image, topic, topics.SENSOR_QOS),
                    self.create_publisher(CameraInfo, topics.info_topic(topic), topics.SENSOR_QOS))
            self._latency[cam.stats.serial] = collections.deque(maxlen=300)
            thread = threading.Thread(target=self._stream, args=(cam, *pubs), daemon=True,
                                      name=f"realsense-{cam.stats.serial}")
            self._threads.append(thread)
            log.info(f"{cam.spec.label}: {cam.spec.width}x{cam.spec.height} {cam.encoding} @ {cam.spec.fps} Hz "
                     f"on {topic} ({cam.spec.frame_id})")
        self._diagnostics = None
        if values["diagnostics_rate_hz"] > 0:
            self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(1.0 / values["diagnostics_rate_hz"], self._publish_diagnostics)
        for thread in self._threads:
            thread.start()

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _log(self, level: str, text: str) -> None:
        # separate call sites: rclpy fixes a log call's severity at its first use
        if level == "warn":
            self.get_logger().warning(text)
        else:
            self.get_logger().info(text)

    def _stream(self, cam: RealSenseCamera, pub_image, pub_info) -> None:
        """Reading thread: frame out of the queue -> image + camera_info, stamped alike."""
        latency = self._latency[cam.stats.serial]
        last_dropped = 0
        while not self._stop.is_set():
            frame = cam.read(0.1)
            if frame is None:
                continue
            frame_id, info = cam.spec.frame_id, cam.info
            pub_image.publish(image_to_msg(frame.data, frame_id, frame.stamp, frame.encoding))
            pub_info.publish(camera_info_msg(info["width"], info["height"], info["fx"], info["fy"], info["cx"],
                                             info["cy"], frame_id, frame.stamp, info["distortion_model"], info["d"]))
            latency.append(self._now() - frame.stamp)
            if cam.stats.dropped > last_dropped:
                self.get_logger().warning(f"{cam.spec.label}: {cam.stats.dropped} frames dropped so far "
                                          f"(frame-number gaps; last frame {frame.number})",
                                          throttle_duration_sec=5.0)
                last_dropped = cam.stats.dropped

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = stamp_from_sec(self._now())
        for cam in self.cameras:
            s, lat = cam.stats, np.array(self._latency[cam.stats.serial] or [np.nan]) * 1e3
            ok = cam.connected
            values = {"frames": s.frames, "dropped": s.dropped, "stale_refused": s.stale,
                      "reconnects": s.reconnects, "timestamp_domain": s.domain or "-",
                      "stamp_to_publish_ms_p50": f"{np.percentile(lat, 50):.2f}",
                      "stamp_to_publish_ms_p99": f"{np.percentile(lat, 99):.2f}"}
            msg.status.append(DiagnosticStatus(
                name=f"avdp_realsense_camera/{s.serial}", hardware_id=s.serial,
                level=DiagnosticStatus.OK if ok else DiagnosticStatus.ERROR,
                message="streaming" if ok else "disconnected: looking for it",
                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()]))
        self._diagnostics.publish(msg)

    def close(self) -> None:
        """Stop the reading threads, then the devices (run_node calls this before destroy_node)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        for cam in self.cameras:
            cam.close()


def main(args=None):
    run_node(RealSenseCameraNode, args)


if __name__ == "__main__":
    sys.exit(main())
