"""The RealSense camera node: pure core on `pyrealsense2.software_device` (frames injected with
chosen pixels, stamps, domains and numbers), then the node in an rclpy graph feeding the policy
node's ingest. No camera needed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import wait_until

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 (and apt libusb-1.0-0) not installed")

from avdp_ros.camera.realsense import CameraError, CameraSpec, RealSenseCamera, StampMapper  # noqa: E402
from avdp_ros.camera.software import SoftwareRealSense  # noqa: E402

W, H = 64, 48


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _camera(dev: SoftwareRealSense, logs: list | None = None, **kwargs) -> RealSenseCamera:
    spec = CameraSpec(serial=dev.serial, width=W, height=H, fps=30)
    log = (lambda level, text: logs.append((level, text))) if logs is not None else (lambda *_: None)
    cam = RealSenseCamera(spec, query=dev.query, log=log, **kwargs)
    cam.open()
    return cam


def _read(cam: RealSenseCamera, timeout: float = 2.0):
    return wait_until(lambda: cam.read(0.05), timeout, what="a frame out of the camera")


# ------------------------------------------------------------------ time stamps
def test_global_and_system_time_are_host_clock_plus_ros_offset():
    m = StampMapper()
    # ROS clock 100 s behind the system clock (sim time, say): stamps move with it
    assert m(5_000.0, "global_time", ros_now=4.9 - 100, wall_now=4.9) == pytest.approx(5.0 - 100)
    assert m(5_000.0, "system_time", ros_now=5.1, wall_now=5.1) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="timestamp domain 'gps'.*global_time"):
        m(1.0, "gps", 0.0, 0.0)


def test_hardware_clock_uses_the_fastest_transfer_and_never_stamps_after_arrival():
    m = StampMapper(window_s=10.0)
    rng = np.random.default_rng(0)
    origin = 1234.5  # the device clock's unknown origin, s
    for k in range(300):
        exposure = 50.0 + k / 30
        arrival = exposure + 0.004 + rng.exponential(0.01)  # >= 4 ms on the wire
        stamp = m((exposure - origin) * 1e3, "hardware_clock", arrival, arrival)
        assert stamp <= arrival + 1e-9
        if k > 30:  # after a second, within 2 ms of exposure + the smallest transfer time
            assert abs(stamp - (exposure + 0.004)) < 0.002
    # the counter wraps: a new origin, not stamps 71 minutes in the past
    arrival = exposure + 1 / 30 + 0.005
    stamp = m(3.0, "hardware_clock", arrival, arrival)
    assert stamp == pytest.approx(arrival)


# ------------------------------------------------------------------ the core on a software device
def test_frames_come_out_exact_with_intrinsics_numbers_and_global_time():
    dev = SoftwareRealSense(modes=((W, H, 30, "rgb8"), (2 * W, 2 * H, 30, "rgb8")), global_time_option=True)
    cam = _camera(dev)
    assert dev.sensor.get_option(rs.option.global_time_enabled) == 1  # asked for where it exists
    assert cam.encoding == "rgb8"
    assert cam.info["width"] == W and cam.info["height"] == H
    assert cam.info["fx"] == pytest.approx(0.9 * W) and cam.info["cx"] == pytest.approx(W / 2 - 0.5)
    assert cam.info["distortion_model"] == "plumb_bob" and cam.info["d"] == pytest.approx([0.01, -0.02, 0, 0, 0.003])
    t0 = time.time() * 1e3
    for number in (1, 2, 5):
        dev.inject(_pixels(number), t0 + 33.3 * number, number)
        frame = _read(cam)
        assert frame.number == number and frame.domain == "global_time"
        np.testing.assert_array_equal(frame.data, _pixels(number))
        assert frame.stamp == pytest.approx((t0 + 33.3 * number) * 1e-3, abs=1e-3)
    assert cam.stats.frames == 3 and cam.stats.dropped == 2  # numbers 3 and 4 never came
    cam.close()


def test_repeated_or_older_frames_are_refused():
    dev = SoftwareRealSense(modes=((W, H, 30, "rgb8"),))
    cam = _camera(dev)
    t0 = time.time() * 1e3
    dev.inject(_pixels(0), t0, 10)
    assert _read(cam).number == 10
    dev.inject(_pixels(1), t0 + 33, 10)  # same number
    assert cam.read(0.5) is None
    dev.inject(_pixels(2), t0 - 33, 11)  # newer number, older stamp
    assert cam.read(0.5) is None
    dev.inject(_pixels(3), t0 + 66, 12)
    assert _read(cam).number == 12
    assert cam.stats.stale == 2 and cam.stats.frames == 2 and cam.stats.dropped == 0
    cam.close()


def test_bgr_only_device_streams_bgr8():
    dev = SoftwareRealSense(modes=((W, H, 30, "bgr8"),))
    cam = _camera(dev)
    assert cam.encoding == "bgr8"
    dev.inject(_pixels(0), time.time() * 1e3, 1)
    assert _read(cam).encoding == "bgr8"
    cam.close()


def test_system_time_only_is_used_and_said_once():
    logs = []
    dev = SoftwareRealSense(modes=((W, H, 30, "rgb8"),))
    cam = _camera(dev, logs)
    t0 = time.time() * 1e3
    for number in (1, 2):
        dev.inject(_pixels(number), t0 + 33 * number, number, domain="system_time")
        assert _read(cam).domain == "system_time"
    warnings = [text for level, text in logs if "system-time" in text]
    assert len(warnings) == 1 and "USB latency" in warnings[0]
    cam.close()


def test_unknown_serial_and_unsupported_mode_are_refused_with_what_is_there():
    dev = SoftwareRealSense(serial="111", name="Intel RealSense D405", modes=((W, H, 30, "rgb8"),))
    with pytest.raises(CameraError, match=r"RealSense 999 not found; connected: 111 \(Intel RealSense D405\)"):
        RealSenseCamera(CameraSpec(serial="999"), query=dev.query).open()
    with pytest.raises(CameraError, match=r"no colour stream 640x480 @ 30 Hz .* offers 64x48@30 rgb8"):
        RealSenseCamera(CameraSpec(serial="111"), query=dev.query).open()
    other = SoftwareRealSense(serial="222", modes=((W, H, 30, "rgb8"),))
    with pytest.raises(CameraError, match="2 RealSense devices connected .*111.*222.*set the serial"):
        RealSenseCamera(CameraSpec(width=W, height=H), query=lambda: dev.query() + other.query()).open()
    with pytest.raises(CameraError, match="not found; connected: none"):
        RealSenseCamera(CameraSpec(serial="111"), query=lambda: []).open()
    with pytest.raises(ValueError, match="fps 0: expected a positive integer"):
        CameraSpec(serial="111", fps=0)


def test_unplug_and_replug_reconnects_and_never_repeats_old_frames():
    logs = []
    dev = SoftwareRealSense(modes=((W, H, 30, "rgb8"),))
    cam = _camera(dev, logs, timeout_s=0.2, reconnect_period_s=0.05)
    t0 = time.time() * 1e3
    dev.inject(_pixels(0), t0, 100)
    assert _read(cam).number == 100
    dev.plugged = False  # silence, and the device is no longer listed
    wait_until(lambda: (cam.read(0.05), not cam.connected)[1], 2.0, what="the camera to notice the unplug")
    assert any("no frame for 0.2 s" in text for _, text in logs)
    for _ in range(3):  # looked for, not found: nothing comes out, no error
        assert cam.read(0.05) is None
    dev.plugged = True
    wait_until(lambda: (cam.read(0.05), cam.connected)[1], 2.0, what="the camera to reconnect")
    assert cam.stats.reconnects == 1 and any("reconnected" in text for _, text in logs)
    dev.inject(_pixels(1), t0 - 10, 1)  # a frame stamped before the last one published: never new
    dev.inject(_pixels(2), t0 + 500, 2)  # the counter restarted with the device: not stale
    frame = _read(cam)
    assert frame.number == 2 and frame.stamp > (t0 * 1e-3)
    assert cam.stats.stale == 1 and cam.stats.frames == 2
    cam.close()


# ------------------------------------------------------------------ the node, against the policy's ingest
def test_node_publishes_what_the_policy_ingest_takes(rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo, Image

    from avdp_ros.control.ingest import IngestConfig, ObservationAssembler
    from avdp_ros.nodes import topics
    from avdp_ros.nodes.msgs import stamp_to_sec
    from avdp_ros.nodes.realsense_camera_node import RealSenseCameraNode

    scene, wrist = SoftwareRealSense(serial="111", modes=((W, H, 30, "rgb8"),)), \
        SoftwareRealSense(serial="222", modes=((W, H, 30, "rgb8"),), sensor_name="Stereo Module")
    params = [Parameter("serial_numbers", value=["111", "222"]), Parameter("width", value=W),
              Parameter("height", value=H), Parameter("diagnostics_rate_hz", value=0.0)]
    node = RealSenseCameraNode(query=lambda: scene.query() + wrist.query(), context=rclpy_context,
                               parameter_overrides=params)
    listener = rclpy.create_node("listener", context=rclpy_context)
    ingest = ObservationAssembler(IngestConfig(image_size=(H // 2, W // 2)))
    got, infos, rejected = {}, {}, []

    def on_image(name, msg):
        err = ingest.add_image_msg(name, stamp_to_sec(msg.header.stamp), msg, time.time())
        if err is not None:
            rejected.append(err)
        got.setdefault(name, []).append(msg)

    for name, topic in (("camera", topics.CAMERA_IMAGE), ("wrist", topics.WRIST_IMAGE)):
        listener.create_subscription(Image, topic, lambda m, n=name: on_image(n, m), topics.SENSOR_QOS)
        listener.create_subscription(CameraInfo, topics.info_topic(topic),
                                     lambda m, n=name: infos.__setitem__(n, m), topics.SENSOR_QOS)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(listener)
    try:
        wait_until(lambda: listener.count_publishers(topics.WRIST_IMAGE) == 1, 10.0,
                   step=lambda: executor.spin_once(timeout_sec=0.05), what="discovery")
        number = 0

        def inject_and_spin():
            nonlocal number
            number += 1
            t = time.time() * 1e3
            scene.inject(_pixels(number), t, number)
            wrist.inject(_pixels(number + 1000), t, number)
            executor.spin_once(timeout_sec=0.03)

        wait_until(lambda: len(got.get("camera", [])) >= 3 and len(got.get("wrist", [])) >= 3 and len(infos) == 2,
                   10.0, step=inject_and_spin, what="images and camera_info from both devices")
    finally:
        node.close()
        executor.shutdown()
        listener.destroy_node()
        node.destroy_node()
    assert not rejected, rejected
    msg = got["camera"][-1]
    assert (msg.encoding, msg.width, msg.height, msg.header.frame_id) == ("rgb8", W, H, "camera_color_optical_frame")
    assert got["wrist"][-1].header.frame_id == "wrist_camera_color_optical_frame"
    assert infos["wrist"].k[0] == pytest.approx(0.9 * W) and infos["wrist"].distortion_model == "plumb_bob"
    data = np.frombuffer(bytes(msg.data), np.uint8).reshape(H, W, 3)
    assert any(np.array_equal(data, _pixels(k)) for k in range(1, number + 1))  # pixels as injected


def test_node_refuses_a_serial_it_cannot_find(rclpy_context):
    from rclpy.parameter import Parameter

    from avdp_ros.nodes.realsense_camera_node import RealSenseCameraNode

    dev = SoftwareRealSense(serial="111", name="Intel RealSense D435", modes=((W, H, 30, "rgb8"),))
    with pytest.raises(ValueError, match=r"RealSense 42 not found; connected: 111 \(Intel RealSense D435\)"):
        RealSenseCameraNode(query=dev.query, context=rclpy_context,
                            parameter_overrides=[Parameter("serial_numbers", value=["42"])])
    with pytest.raises(ValueError, match=r"serial_numbers \['1', '1'\]: expected distinct"):
        RealSenseCameraNode(query=dev.query, context=rclpy_context,
                            parameter_overrides=[Parameter("serial_numbers", value=["1", "1"])])


def test_node_keeps_publishing_after_an_unplug_and_replug(rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from avdp_ros.nodes import topics
    from avdp_ros.nodes.realsense_camera_node import RealSenseCameraNode

    dev = SoftwareRealSense(serial="111", modes=((W, H, 30, "rgb8"),))
    params = [Parameter("serial_numbers", value=["111"]), Parameter("width", value=W), Parameter("height", value=H),
              Parameter("timeout_s", value=0.2), Parameter("reconnect_period_s", value=0.05)]
    node = RealSenseCameraNode(query=dev.query, context=rclpy_context, parameter_overrides=params)
    listener = rclpy.create_node("listener", context=rclpy_context)
    got = []
    listener.create_subscription(Image, topics.CAMERA_IMAGE, got.append, topics.SENSOR_QOS)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(listener)
    cam = node.cameras[0]
    try:
        def inject_and_spin(number):
            dev.inject(_pixels(number), time.time() * 1e3, number)
            executor.spin_once(timeout_sec=0.03)

        wait_until(lambda: got, 10.0, step=lambda: inject_and_spin(1000 + len(got)), what="a first image")
        dev.plugged = False
        wait_until(lambda: not cam.connected, 5.0, step=lambda: executor.spin_once(timeout_sec=0.03),
                   what="the node to notice the unplug")
        count = len(got)
        dev.plugged = True
        wait_until(lambda: cam.connected, 5.0, step=lambda: executor.spin_once(timeout_sec=0.03),
                   what="the node to reconnect")
        wait_until(lambda: len(got) > count + 2, 10.0, step=lambda: inject_and_spin(len(got)),
                   what="images after the replug")  # frame numbers restart low, as after a real replug
    finally:
        node.close()
        executor.shutdown()
        listener.destroy_node()
        node.destroy_node()
    assert cam.stats.reconnects == 1
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))  # nothing old published as new
